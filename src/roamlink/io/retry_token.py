"""Stateless address-validation tokens for RETRY (the listener's answer to a SYN flood).

Under load a listener answers a SYN with a small RETRY carrying a token instead of opening a
half-open connection; a client that really is at its source address repeats its SYN with the
token, and the listener checks it before it creates anything. A flood of forged source
addresses then costs the listener one AEAD seal per SYN and no memory (TCP's SYN cookies,
QUIC's Retry, WireGuard's cookie reply under load).

A token is sealed with ChaCha20-Poly1305 under a listener secret:

=========  ====  ==========================================================================
field      size  meaning
=========  ====  ==========================================================================
key id     1     which secret sealed it (the secret is rotated; the previous one still opens)
nonce      12    random, never reused (a reused nonce would let an attacker forge tags)
sealed     8+16  the minting time in milliseconds, then the Poly1305 tag
=========  ====  ==========================================================================

The associated data binds the token to the client's IP address and port and to the
connection IDs of the SYN it answers, so a token is good for that client, that address and
that handshake only, for ``lifetime`` seconds. Opening is constant-time in the tag (the AEAD
checks it); a token that fails for any reason is simply not valid, and nothing says why.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..core.events import Address

TOKEN_LENGTH = 1 + 12 + 8 + 16
_TIME = struct.Struct("!Q")
_PORT = struct.Struct("!H")


def _address_bytes(addr: Address) -> bytes:
    """The IP address (16 bytes, IPv4 mapped into IPv6) and the port of ``addr``."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed + _PORT.pack(addr[1])


def _aad(addr: Address, scid: bytes, dcid: bytes) -> bytes:
    return b"".join((b"roamlink retry", _address_bytes(addr), bytes((len(scid),)), scid,
                     bytes((len(dcid),)), dcid))


class RetryTokens:
    """Mints and checks the tokens of one listener; the secret is rotated every
    ``rotate_every`` seconds and the previous one kept, so a token minted just before a
    rotation still opens for its (short) lifetime."""

    __slots__ = ("lifetime", "rotate_every", "_random", "_keys", "_key_id", "_rotated_at")

    def __init__(self, *, lifetime: float = 5.0, rotate_every: float = 60.0,
                 random_bytes: Callable[[int], bytes] = os.urandom, now: float = 0.0) -> None:
        if lifetime <= 0 or rotate_every < lifetime:
            raise ValueError("need 0 < lifetime <= rotate_every")
        self.lifetime = lifetime
        self.rotate_every = rotate_every
        self._random = random_bytes
        self._key_id = 0
        # one AEAD object per secret (making one per token costs as much as sealing)
        self._keys: dict[int, ChaCha20Poly1305] = {0: ChaCha20Poly1305(random_bytes(32))}
        self._rotated_at = now

    def _maybe_rotate(self, now: float) -> None:
        if now - self._rotated_at < self.rotate_every:
            return
        self._rotated_at = now
        previous = self._key_id
        self._key_id = (previous + 1) & 0xFF
        self._keys = {previous: self._keys[previous],
                      self._key_id: ChaCha20Poly1305(self._random(32))}

    def mint(self, addr: Address, scid: bytes, dcid: bytes, now: float) -> bytes:
        """A token for the client at ``addr`` whose SYN carried these connection IDs."""
        self._maybe_rotate(now)
        nonce = self._random(12)
        sealed = self._keys[self._key_id].encrypt(
            nonce, _TIME.pack(max(int(now * 1000), 0)), _aad(addr, scid, dcid))
        return bytes((self._key_id,)) + nonce + sealed

    def check(self, token: bytes, addr: Address, scid: bytes, dcid: bytes, now: float) -> bool:
        """Whether ``token`` was minted by us, for this address and these CIDs, within its
        lifetime."""
        self._maybe_rotate(now)
        if len(token) != TOKEN_LENGTH:
            return False
        aead = self._keys.get(token[0])
        if aead is None:
            return False
        try:
            plain = aead.decrypt(token[1:13], token[13:], _aad(addr, scid, dcid))
        except InvalidTag:
            return False
        (minted_ms,) = _TIME.unpack(plain)
        age = now - minted_ms / 1000
        return bool(-1.0 <= age <= self.lifetime)
