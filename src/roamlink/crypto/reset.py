"""Stateless reset: a server that lost a connection's state tells the peer at once.

Every CID an endpoint issues comes with a 16-byte token, ``HMAC-BLAKE2s(reset_key, cid)[:16]``,
sent to the peer inside encrypted frames (the SYN-ACK payload and NEW_CONNECTION_ID). The reset
key is derived from the endpoint's static private key, so a server restarted with the same key
file computes the same tokens for CIDs it no longer knows. A packet arriving for such a CID is
answered (rate-limited) with a datagram that looks like any short-header packet -- first byte
with the fixed bit set, random bytes -- ending in the token, and *smaller* than the packet that
triggered it, so resets can never loop or amplify. The peer compares the last 16 bytes of a
datagram it cannot authenticate with the tokens it holds (constant time) and fails the
connection with ``ConnectionReset`` instead of waiting out its idle timeout. (RFC 9000 section
10.3 is the model.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

RESET_TOKEN_LENGTH: Final = 16
MIN_RESET_LENGTH: Final = 1 + 4 + RESET_TOKEN_LENGTH   # as short as any short-header packet
MAX_RESET_LENGTH: Final = 1 + 8 + 8 + 16 + RESET_TOKEN_LENGTH
_KEY_LABEL: Final = b"roamlink stateless reset key v1"


def reset_key_from_static(static_private: bytes) -> bytes:
    """The reset key for an endpoint: stable across restarts with the same static key."""
    return hmac.new(static_private, _KEY_LABEL, hashlib.blake2s).digest()


def reset_token(reset_key: bytes, cid: bytes) -> bytes:
    return hmac.new(reset_key, cid, hashlib.blake2s).digest()[:RESET_TOKEN_LENGTH]


def build_stateless_reset(token: bytes, trigger_length: int) -> bytes | None:
    """A reset shorter than its trigger, or None when the trigger is too short to answer."""
    length = min(trigger_length - 1, MAX_RESET_LENGTH)
    if length < MIN_RESET_LENGTH:
        return None
    body = os.urandom(length - RESET_TOKEN_LENGTH)
    first = 0x40 | (body[0] & 0x3F)       # short header, fixed bit set, long-header bit clear
    return bytes((first,)) + body[1:] + token


def matches_reset(datagram: bytes | memoryview, tokens: list[bytes]) -> bool:
    """Whether ``datagram`` is a stateless reset carrying one of ``tokens`` (constant time)."""
    if len(datagram) < MIN_RESET_LENGTH or datagram[0] & 0x80:
        return False
    tail = bytes(datagram[-RESET_TOKEN_LENGTH:])
    found = False
    for token in tokens:
        if hmac.compare_digest(tail, token):
            found = True
    return found


class ResetRateLimiter:
    """A token bucket: at most ``rate`` resets a second on average, ``burst`` at once.

    Resets answer packets that anyone can send, so they must stay cheap and bounded.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float = 100.0, burst: float = 20.0) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = 0.0

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
