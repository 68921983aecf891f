"""``mac1``: the cheap filter on every SYN, checked before any Diffie-Hellman work.

As in WireGuard (whitepaper section 5.4.4): the last 16 bytes of a SYN are a keyed BLAKE2s-128
MAC over everything before them, keyed by ``HASH(LABEL || server static public key)``. Only a
sender who knows the server's public key can make one, so a flood of random or recycled SYNs
costs the server one BLAKE2s call each, not an X25519 operation. (The public key is not secret;
``mac1`` is a filter, not authentication: the Noise handshake authenticates. Under load the
server can also demand a Retry token, which proves the return address.)
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

MAC1_LABEL: Final = b"roamlink-mac1---"
MAC1_LENGTH: Final = 16


def mac1_key(server_public: bytes) -> bytes:
    """The mac1 key for a server: computed once per server key and kept."""
    return hashlib.blake2s(MAC1_LABEL + server_public).digest()


def compute_mac1(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte mac1 over ``data`` (the SYN up to, not including, its mac1 field)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC1_LENGTH).digest()


def append_mac1(key: bytes, data: bytes) -> bytes:
    """``data`` with its mac1 appended (what a client sends)."""
    return data + compute_mac1(key, data)


def check_mac1(key: bytes, packet: bytes | memoryview) -> bool:
    """Whether ``packet`` ends in a valid mac1; constant-time in the comparison."""
    if len(packet) < MAC1_LENGTH:
        return False
    expected = compute_mac1(key, packet[:-MAC1_LENGTH])
    return hmac.compare_digest(expected, bytes(packet[-MAC1_LENGTH:]))
