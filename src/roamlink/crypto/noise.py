"""The Noise handshake roamlink uses: ``Noise_IK_25519_ChaChaPoly_BLAKE2s`` and its pre-shared-key
variant ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s``.

This module follows the Noise Protocol Framework, revision 34 (https://noiseprotocol.org/noise.html),
name for name, so a reviewer can hold the two side by side: section 5.1 :class:`CipherState`,
section 5.2 :class:`SymmetricState`, section 5.3 :class:`HandshakeState`; the functions of
section 4 are :func:`dh`, :func:`encrypt`, :func:`decrypt`, :func:`hash_`, :func:`hkdf` and
:func:`rekey`. Only the two patterns roamlink needs are implemented::

    IK:                         IKpsk2:
      <- s                        <- s
      ...                         ...
      -> e, es, s, ss             -> e, es, s, ss
      <- e, ee, se                <- e, ee, se, psk

It is checked against the cacophony test vectors (``tests/vectors/``). No maintained Noise
library exists for Python, and the handshake is short enough to own. Secrets never appear in
``repr`` or exception text.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

DHLEN: Final = 32
HASHLEN: Final = 32
BLOCKLEN: Final = 64
TAGLEN: Final = 16
PSKLEN: Final = 32
MAX_NONCE: Final = (1 << 64) - 1
MAX_MESSAGE: Final = 65535

PROTOCOL_IK: Final = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROTOCOL_IKPSK2: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"

_ZEROS32: Final = bytes(32)
_NONCE_PREFIX: Final = bytes(4)


class NoiseError(Exception):
    """A handshake message failed: bad length, a wrong key, or a failed authentication tag.

    The text never contains key material; the handshake layer maps it to ``HandshakeFailed``.
    """


# --- section 4: the crypto functions -----------------------------------------------------------
def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    """GENERATE_KEYPAIR(): a fresh X25519 key pair (the private object, the raw public key)."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def private_key(raw: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key."""
    if len(raw) != DHLEN:
        raise NoiseError("an X25519 private key has 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)


def public_key_of(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """DH(key_pair, public_key): X25519. A low-order peer key (all-zero output) is refused."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise NoiseError("invalid public key") from None


def nonce_bytes(n: int) -> bytes:
    """ChaChaPoly's nonce: 32 zero bits, then the 64-bit counter little-endian (12.3)."""
    return _NONCE_PREFIX + n.to_bytes(8, "little")


def encrypt(k: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    """ENCRYPT(k, n, ad, plaintext). Hot paths keep a ChaCha20Poly1305 object instead."""
    return ChaCha20Poly1305(k).encrypt(nonce_bytes(n), plaintext, ad)


def decrypt(k: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    """DECRYPT(k, n, ad, ciphertext); raises :class:`NoiseError` on a failed tag."""
    try:
        return ChaCha20Poly1305(k).decrypt(nonce_bytes(n), ciphertext, ad)
    except InvalidTag:
        raise NoiseError("authentication failed") from None


def rekey(k: bytes) -> bytes:
    """REKEY(k) (section 4.2): the first 32 bytes of ENCRYPT(k, maxnonce, zerolen, zeros)."""
    return encrypt(k, MAX_NONCE, b"", _ZEROS32)[:32]


def hash_(data: bytes) -> bytes:
    """HASH(data): BLAKE2s-256."""
    return hashlib.blake2s(data).digest()


_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))
_blake2s = hashlib.blake2s


def hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-HASH(key, data): RFC 2104 with BLAKE2s, written out.

    The same bytes as ``hmac.new(key, data, hashlib.blake2s).digest()`` (a test checks it) at a
    tenth of the cost; a handshake makes about a dozen of these.
    """
    if len(key) > BLOCKLEN:
        key = _blake2s(key).digest()
    key = key.ljust(BLOCKLEN, b"\0")
    inner = _blake2s(key.translate(_IPAD) + data).digest()
    return _blake2s(key.translate(_OPAD) + inner).digest()


def hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> tuple[bytes, ...]:
    """HKDF(chaining_key, input_key_material, num_outputs) of section 4.3."""
    temp_key = hmac_hash(chaining_key, input_key_material)
    output1 = hmac_hash(temp_key, b"\x01")
    output2 = hmac_hash(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = hmac_hash(temp_key, output2 + b"\x03")
    return output1, output2, output3


# --- section 5.1: CipherState ------------------------------------------------------------------
class CipherState:
    """A key ``k`` (or none) and a nonce counter ``n``; used during and after the handshake."""

    __slots__ = ("_aead", "k", "n")

    def __init__(self) -> None:
        self.k: bytes | None = None
        self.n: int = 0
        self._aead: ChaCha20Poly1305 | None = None

    def __repr__(self) -> str:
        return f"CipherState(has_key={self.has_key()}, n={self.n})"

    def initialize_key(self, key: bytes | None) -> None:
        self.k = key
        self.n = 0
        self._aead = ChaCha20Poly1305(key) if key is not None else None

    def has_key(self) -> bool:
        return self.k is not None

    def set_nonce(self, nonce: int) -> None:
        self.n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        out = self._aead.encrypt(nonce_bytes(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        try:
            out = self._aead.decrypt(nonce_bytes(self.n), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("authentication failed") from None
        self.n += 1
        return out

    def rekey(self) -> None:
        if self.k is not None:
            n = self.n
            self.initialize_key(rekey(self.k))
            self.n = n


# --- section 5.2: SymmetricState ---------------------------------------------------------------
class SymmetricState:
    """The chaining key ``ck`` and handshake hash ``h`` that every token of the pattern feeds."""

    __slots__ = ("ck", "cipher_state", "h")

    def __init__(self, protocol_name: bytes) -> None:
        # InitializeSymmetric(protocol_name)
        if len(protocol_name) <= HASHLEN:
            self.h: bytes = protocol_name + bytes(HASHLEN - len(protocol_name))
        else:
            self.h = hash_(protocol_name)
        self.ck: bytes = self.h
        self.cipher_state = CipherState()
        self.cipher_state.initialize_key(None)

    def __repr__(self) -> str:
        return "SymmetricState(...)"

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, input_key_material, 2)
        self.cipher_state.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher_state.initialize_key(temp_k)

    def get_handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher_state.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher_state.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split_keys(self) -> tuple[bytes, bytes]:
        """Split() as raw keys: (initiator -> responder, responder -> initiator).

        roamlink's packet protection takes the nonce from the packet number, so it needs the
        keys rather than two counting CipherStates; :meth:`split` gives the latter.
        """
        temp_k1, temp_k2 = hkdf(self.ck, b"", 2)
        return temp_k1, temp_k2

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = self.split_keys()
        c1 = CipherState()
        c1.initialize_key(temp_k1)
        c2 = CipherState()
        c2.initialize_key(temp_k2)
        return c1, c2


# --- section 5.3: HandshakeState ---------------------------------------------------------------
class HandshakeState:
    """One side of an IK (or IKpsk2) handshake.

    ``s`` is our static key; ``rs`` the responder's static public key, which the initiator must
    know in advance (the pinned server key) and the responder learns from message 1. ``e`` may be
    given for test vectors; otherwise a fresh one is generated when the "e" token is written.
    """

    __slots__ = ("_message_index", "e", "initiator", "psk", "re", "rs", "s", "s_public",
                 "symmetric_state")

    def __init__(
        self,
        *,
        initiator: bool,
        s: X25519PrivateKey,
        rs: bytes | None = None,
        prologue: bytes = b"",
        psk: bytes | None = None,
        e: X25519PrivateKey | None = None,
    ) -> None:
        # Initialize(handshake_pattern, initiator, prologue, s, e, rs, re, psk)
        if psk is not None and len(psk) != PSKLEN:
            raise NoiseError("a pre-shared key has 32 bytes")
        if initiator and (rs is None or len(rs) != DHLEN):
            raise NoiseError("the initiator of IK needs the responder's 32-byte static key")
        self.initiator = initiator
        self.psk = psk
        self.s = s
        self.s_public = public_key_of(s)
        self.e = e
        self.rs = rs
        self.re: bytes | None = None
        self.symmetric_state = SymmetricState(PROTOCOL_IKPSK2 if psk is not None else PROTOCOL_IK)
        self.symmetric_state.mix_hash(prologue)
        # Pre-message "<- s": the responder's static key.
        self.symmetric_state.mix_hash(self.s_public if not initiator else rs or b"")
        self._message_index = 0

    def __repr__(self) -> str:
        return f"HandshakeState(initiator={self.initiator}, message={self._message_index})"

    # -- tokens --
    def _write_e(self) -> bytes:
        if self.e is None:
            self.e = X25519PrivateKey.generate()
        e_public = public_key_of(self.e)
        self.symmetric_state.mix_hash(e_public)
        if self.psk is not None:
            self.symmetric_state.mix_key(e_public)
        return e_public

    def _read_e(self, message: bytes, pos: int) -> int:
        if len(message) < pos + DHLEN:
            raise NoiseError("handshake message too short")
        self.re = message[pos:pos + DHLEN]
        self.symmetric_state.mix_hash(self.re)
        if self.psk is not None:
            self.symmetric_state.mix_key(self.re)
        return pos + DHLEN

    def _mix_dh(self, private: X25519PrivateKey | None, public: bytes | None) -> None:
        if private is None or public is None:
            raise NoiseError("handshake state incomplete")
        self.symmetric_state.mix_key(dh(private, public))

    # -- messages --
    def write_message(self, payload: bytes) -> bytes:
        """WriteMessage(payload): message 1 for the initiator, message 2 for the responder."""
        ss = self.symmetric_state
        if self.initiator and self._message_index == 0:
            out = self._write_e()                            # e
            self._mix_dh(self.e, self.rs)                    # es
            out += ss.encrypt_and_hash(self.s_public)        # s
            self._mix_dh(self.s, self.rs)                    # ss
        elif not self.initiator and self._message_index == 1:
            out = self._write_e()                            # e
            self._mix_dh(self.e, self.re)                    # ee
            self._mix_dh(self.e, self.rs)                    # se
            if self.psk is not None:                         # psk
                ss.mix_key_and_hash(self.psk)
        else:
            raise NoiseError("no handshake message to write at this point")
        out += ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise NoiseError("handshake message too long")
        self._message_index += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message): returns the payload or raises :class:`NoiseError`."""
        ss = self.symmetric_state
        if len(message) > MAX_MESSAGE:
            raise NoiseError("handshake message too long")
        if not self.initiator and self._message_index == 0:
            pos = self._read_e(message, 0)                   # e
            self._mix_dh(self.s, self.re)                    # es
            end = pos + DHLEN + TAGLEN                       # s
            if len(message) < end + TAGLEN:
                raise NoiseError("handshake message too short")
            self.rs = ss.decrypt_and_hash(message[pos:end])
            self._mix_dh(self.s, self.rs)                    # ss
        elif self.initiator and self._message_index == 1:
            end = self._read_e(message, 0)                   # e
            if len(message) < end + TAGLEN:
                raise NoiseError("handshake message too short")
            self._mix_dh(self.e, self.re)                    # ee
            self._mix_dh(self.s, self.re)                    # se
            if self.psk is not None:                         # psk
                ss.mix_key_and_hash(self.psk)
        else:
            raise NoiseError("no handshake message to read at this point")
        payload = ss.decrypt_and_hash(message[end:])
        self._message_index += 1
        return payload

    @property
    def finished(self) -> bool:
        return self._message_index >= 2

    def get_handshake_hash(self) -> bytes:
        return self.symmetric_state.get_handshake_hash()

    def split_keys(self) -> tuple[bytes, bytes]:
        """The traffic keys as (send, receive) for this side, once the handshake is finished."""
        if not self.finished:
            raise NoiseError("the handshake is not finished")
        k1, k2 = self.symmetric_state.split_keys()
        return (k1, k2) if self.initiator else (k2, k1)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key (the responder learns it from message 1)."""
        return self.rs
