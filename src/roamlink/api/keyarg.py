"""Key arguments of ``listen`` and ``connect``: a ``KeyPair``, raw bytes or base64 text.

Kept small on purpose: key files, generation and the ``known_hosts`` store live in
``roamlink.keys`` and the CLI; this only turns what a caller passes into raw 32-byte keys.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import ConfigError


def public_key_bytes(value: object, what: str = "server_key") -> bytes:
    """A peer's public key as raw bytes, from 32 raw bytes, base64 text, or a key pair."""
    raw = getattr(value, "public_bytes", None)
    if isinstance(raw, bytes):
        value = raw
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return bytes(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    if isinstance(value, str):
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == 32:
            return decoded
    raise ConfigError(what, "must be a 32-byte X25519 public key (raw, or base64 text)")


def private_key_bytes(value: object, what: str = "key") -> bytes:
    """Our static private key as raw bytes, from a key pair (``roamlink.KeyPair``) or 32 bytes.

    The error text never contains the key."""
    raw = getattr(value, "private_bytes", None)
    if isinstance(raw, bytes):
        value = raw
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return bytes(value)
    raise ConfigError(what, "must be a KeyPair or a 32-byte X25519 private key")


def encode_public(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
