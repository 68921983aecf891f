"""Stateless address-validation tokens for RETRY (the listener's answer to a SYN flood).

Under load a listener answers a SYN with a small RETRY carrying a token instead of opening a
half-open connection; a client that really is at its source address repeats its SYN with the
token, and the listener checks it before it creates anything. A flood of forged source
addresses then costs the listener one AEAD seal per SYN and no memory (TCP's SYN cookies,
QUIC's Retry, WireGuard's cookie reply under load).

The token travels where the client's repeated SYN would otherwise carry an empty destination
CID (as QUIC's Retry hands the client a new destination CID), so it needs no new field in the
SYN: the client copies the RETRY's source CID, 20 bytes, into its SYN's destination CID. With
encryption the Noise prologue binds that header, so the token cannot be swapped in flight.

=========  ====  ==========================================================================
field      size  meaning
=========  ====  ==========================================================================
key id     1     which secret sealed it (the secret is rotated; the previous one still opens)
time       5     when it was minted, in milliseconds of the listener's clock
salt       4     random: with the time, a nonce that never repeats under one secret
tag        10    ChaCha20-Poly1305 tag over the associated data, truncated to 80 bits
=========  ====  ==========================================================================

The associated data binds the token to the client's IP address and port and to its SYN's
source CID, so a token is good for that client, that address and that handshake only, for
``lifetime`` seconds. The tag is recomputed and compared in constant time
(``hmac.compare_digest``); a token that fails for any reason is simply not valid.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..core.events import Address

TOKEN_LENGTH = 20  # fits a CID field (at most 20 bytes)
_TAG_LENGTH = 10
_TIME = struct.Struct("!Q")
_PORT = struct.Struct("!H")


def _address_bytes(addr: Address) -> bytes:
    """The IP address (16 bytes, IPv4 mapped into IPv6) and the port of ``addr``."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed + _PORT.pack(addr[1])


def _aad(addr: Address, scid: bytes) -> bytes:
    return b"".join((b"roamlink retry", _address_bytes(addr), bytes((len(scid),)), scid))


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

    @staticmethod
    def _tag(aead: ChaCha20Poly1305, stamp: bytes, aad: bytes) -> bytes:
        # nothing to encrypt: the AEAD authenticates the associated data, and its tag (the
        # whole output for an empty plaintext) is what the token keeps, truncated
        return aead.encrypt(b"\0\0\0" + stamp, b"", aad)[:_TAG_LENGTH]

    def mint(self, addr: Address, scid: bytes, now: float) -> bytes:
        """A token for the client at ``addr`` whose SYN carried source CID ``scid``."""
        self._maybe_rotate(now)
        stamp = _TIME.pack(max(int(now * 1000), 0))[3:] + self._random(4)
        key_id = bytes((self._key_id,))
        return key_id + stamp + self._tag(self._keys[self._key_id], stamp,
                                          key_id + _aad(addr, scid))

    def check(self, token: bytes, addr: Address, scid: bytes, now: float) -> bool:
        """Whether ``token`` was minted by us, for this address and this SYN, within its
        lifetime."""
        self._maybe_rotate(now)
        if len(token) != TOKEN_LENGTH:
            return False
        aead = self._keys.get(token[0])
        if aead is None:
            return False
        stamp = token[1:10]
        expected = self._tag(aead, stamp, token[:1] + _aad(addr, scid))
        if not hmac.compare_digest(expected, token[10:]):
            return False
        (minted_ms,) = _TIME.unpack(b"\0\0\0" + stamp[:5])
        age = now - minted_ms / 1000
        return bool(-1.0 <= age <= self.lifetime)
