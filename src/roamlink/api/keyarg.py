"""Key arguments of ``listen`` and ``connect``: a ``KeyPair``, raw bytes or base64 text.

Key files, generation and the ``known_hosts`` store live in :mod:`roamlink.keys` and the CLI;
this only turns what a caller passes into raw 32-byte keys.
"""

from __future__ import annotations

import base64

from ..errors import ConfigError
from ..keys import KeyPair, parse_public_key


def public_key_bytes(value: object, what: str = "server_key") -> bytes:
    """A peer's public key as raw bytes: a ``KeyPair`` (its public half), 32 raw bytes, or
    base64 text. Raises :class:`~roamlink.errors.InvalidKey` for anything else."""
    if isinstance(value, KeyPair):
        return value.public_bytes
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if isinstance(value, (str, bytes)):
        return parse_public_key(value)
    raise ConfigError(what, f"a public key is a KeyPair, str or bytes, not {type(value).__name__}")


def private_key_bytes(value: object, what: str = "key") -> bytes:
    """Our static private key as raw bytes, from a ``KeyPair`` or 32 raw bytes.

    The error text never contains the key."""
    if isinstance(value, KeyPair):
        return value.private_bytes
    if isinstance(value, (bytes, bytearray)) and len(value) == 32:
        return bytes(value)
    raise ConfigError(what, "must be a KeyPair or a 32-byte X25519 private key")


def encode_public(raw: bytes) -> str:
    """Base64 of a raw public key, as ``KeyPair.public`` spells it."""
    return base64.b64encode(raw).decode("ascii")
