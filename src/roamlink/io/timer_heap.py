"""One scheduler timer for all the connections of a socket: their deadlines in a heap.

A busy endpoint re-arms a connection's timer on almost every packet; cancelling and creating
an event-loop timer each time would cost more than the rest of the packet's handling. So each
connection's deadline goes into a heap (stale entries are skipped when they surface), and the
scheduler holds one timer, armed for the earliest deadline.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Hashable
from typing import Final, Generic, Protocol, TypeVar

from .clock import Scheduler, TimerHandle

logger = logging.getLogger("roamlink.endpoint")

#: Shortest timer armed: event loops cannot sleep for less (see TimerHeap._schedule).
MIN_TIMER_DELAY: Final = 0.001


class Timed(Hashable, Protocol):
    """Anything with one deadline, such as a Connection."""

    def get_timer(self) -> float | None: ...


K = TypeVar("K", bound=Timed)


class TimerHeap(Generic[K]):
    """Deadlines of many keys; ``on_due(key, now)`` is called for each one that is reached."""

    def __init__(self, scheduler: Scheduler, on_due: Callable[[K, float], None],
                 describe: Callable[[K], str] = repr) -> None:
        self.scheduler = scheduler
        self.on_due = on_due
        self.describe = describe  # names a key in the log
        self.deadlines: dict[K, float] = {}  # each key's armed deadline
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._handle: TimerHandle | None = None
        self._at = math.inf  # when the scheduler's timer fires
        self._closed = False

    def __contains__(self, key: K) -> bool:
        return key in self.deadlines

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def armed(self) -> bool:
        """Whether the scheduler holds a timer for this heap."""
        return self._handle is not None

    def arm(self, key: K) -> None:
        """Follow ``key.get_timer()``: arm, move earlier, or drop its deadline."""
        self.arm_at(key, key.get_timer())

    def arm_at(self, key: K, deadline: float | None) -> None:
        """:meth:`arm` with ``key.get_timer()`` read by the caller (who may know the key's
        type, and so call it natively)."""
        deadlines = self.deadlines
        current = deadlines.get(key)
        if deadline is None:
            if current is not None:
                del deadlines[key]
            return
        if current is not None and current <= deadline:
            # the armed deadline comes no later than needed: keep it (no churn per packet);
            # when it fires early, the connection finds nothing due and is armed again
            return
        deadlines[key] = deadline
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, key))
        if len(heap) > 4 * len(deadlines) + 64:  # too many stale entries: rebuild
            heap[:] = [(d, i, k) for i, (k, d) in enumerate(deadlines.items())]
            heapq.heapify(heap)
        if deadline < self._at:
            self._schedule(deadline)

    def disarm(self, key: K) -> None:
        """Forget ``key``'s deadline (its heap entry is skipped when it surfaces)."""
        self.deadlines.pop(key, None)

    def close(self) -> None:
        """Cancel the scheduler's timer and forget every deadline; nothing fires after this."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.deadlines.clear()
        self._heap.clear()

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        scheduler = self.scheduler
        delay = when - scheduler.now()
        if 0 < delay < MIN_TIMER_DELAY:
            # no event loop sleeps less than a millisecond (epoll, libuv); uvloop would
            # instead fire at once and spin on, e.g., a pacing deadline microseconds away,
            # starving the peer process of CPU
            delay = MIN_TIMER_DELAY
        self._handle = scheduler.call_later(max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = math.inf
        if self._closed:
            return
        heap, deadlines = self._heap, self.deadlines
        now = self.scheduler.now()
        due: list[K] = []
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if deadlines.get(key) == deadline:
                del deadlines[key]
                due.append(key)
        try:
            for key in due:
                try:
                    self.on_due(key, now)
                except Exception:  # e.g. an observer's callback: the others' timers go on
                    logger.exception("timer of %s failed", self.describe(key))
        finally:
            while heap and deadlines.get(heap[0][2]) != heap[0][0]:
                heapq.heappop(heap)  # stale
            if heap and heap[0][0] < self._at and not self._closed:
                self._schedule(heap[0][0])
