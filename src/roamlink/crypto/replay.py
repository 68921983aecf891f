"""The 0-RTT replay cache: data in a SYN is delivered at most once per server.

A SYN's encrypted payload carries the client's wall-clock timestamp; its Noise ephemeral key is
fresh for every connection attempt. The server accepts 0-RTT data only from a SYN whose timestamp
lies within ``window`` seconds of its own clock and whose ephemeral key it has not seen. It
remembers each ephemeral key for ``2 * window`` seconds after it arrives: a copy replayed any
later carries a timestamp more than ``window`` old and is refused on the timestamp alone. So the
cache is bounded in time; ``max_entries`` bounds it in memory (when full, 0-RTT data is refused,
never delivered twice).

What this does *not* give: a replay to a *different* server (another process without this
cache, or after a restart) can deliver the same 0-RTT data again within the window. Applications
must therefore put only idempotent requests in 0-RTT data (see docs/security.md).
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Final

DEFAULT_WINDOW: Final = 60.0


class ReplayVerdict(Enum):
    FRESH = "fresh"          # first sighting within the window: deliver 0-RTT data
    REPLAY = "replay"        # this ephemeral key was seen: drop the SYN
    STALE = "stale"          # timestamp outside the window (or cache full): no 0-RTT data


class ReplayCache:
    """Ephemeral keys seen within the window, expiring in arrival order."""

    __slots__ = ("_expiry", "_order", "max_entries", "window")

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = 1 << 16) -> None:
        self.window = window
        self.max_entries = max_entries
        self._expiry: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._expiry)

    def _prune(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            self._expiry.pop(key, None)

    def check(self, ephemeral: bytes, timestamp: float, now: float) -> ReplayVerdict:
        """Classify a SYN and remember its ephemeral key; ``now`` is the server's wall clock."""
        self._prune(now)
        if ephemeral in self._expiry:
            return ReplayVerdict.REPLAY
        if abs(now - timestamp) > self.window:
            return ReplayVerdict.STALE
        if len(self._expiry) >= self.max_entries:
            return ReplayVerdict.STALE
        expiry = now + 2.0 * self.window
        self._expiry[ephemeral] = expiry
        self._order.append((expiry, ephemeral))
        return ReplayVerdict.FRESH

    def seen(self, ephemeral: bytes) -> bool:
        return ephemeral in self._expiry
