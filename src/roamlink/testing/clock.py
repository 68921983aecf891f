"""A virtual clock for the real socket layer: timeouts over real sockets in no wall time.

:class:`VirtualClock` is a :class:`~roamlink.io.clock.Scheduler`. Give it to an
:class:`~roamlink.io.endpoint.Endpoint` and every connection on that socket lives on virtual
time: datagrams still travel through the kernel, but a deadline is reached when the clock is
moved to it, not when the wall clock gets there. :meth:`VirtualClock.run` moves it the way
trio's autojump clock does: whenever the event loop has nothing left to do, time jumps to the
next deadline. A 10-second connect timeout then takes milliseconds and never flakes.

Loopback datagrams are in the receiving socket's queue when ``sendto`` returns, so "nothing
left to do" is judged by letting the loop run a few idle passes before each jump.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Event-loop passes with nothing new before the clock may jump (I/O callbacks run meanwhile).
_IDLE_PASSES = 8


class _VirtualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Virtual seconds, and the callbacks waiting for them (a Scheduler for endpoints)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = 0
        self.jumps = 0  # how many times the clock moved to a deadline

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _VirtualTimer:
        return self.call_at(self._now + delay, callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> _VirtualTimer:
        """Run ``callback`` when the clock reaches ``when``."""
        timer = _VirtualTimer(callback)
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, timer))
        return timer

    def next_deadline(self) -> float | None:
        """The earliest deadline still wanted (None: nothing waits for time)."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, running each callback at its own time."""
        target = self._now + seconds
        while (when := self.next_deadline()) is not None and when <= target:
            self._fire_next()
        self._now = max(self._now, target)

    def _fire_next(self) -> None:
        when, _, timer = heapq.heappop(self._timers)
        if when > self._now:
            self._now = when
            self.jumps += 1
        timer.callback()

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, with every deadline and datagram in it
        handled (the virtual ``asyncio.sleep``)."""
        target = self._now + seconds
        while True:
            for _ in range(_IDLE_PASSES):
                await asyncio.sleep(0)
            when = self.next_deadline()
            if when is None or when > target:
                break
            self._fire_next()
        self._now = max(self._now, target)
        for _ in range(_IDLE_PASSES):
            await asyncio.sleep(0)

    async def run(self, awaitable: Awaitable[T], timeout: float) -> T:
        """Await ``awaitable``, jumping to the next deadline whenever the loop is idle.

        ``timeout`` is in virtual seconds: past it, :class:`TimeoutError`. While nothing
        waits for virtual time, the loop is given real time (1 ms at a go) for real I/O.
        """
        task = asyncio.ensure_future(awaitable)
        limit = self._now + timeout
        try:
            while not task.done():
                for _ in range(_IDLE_PASSES):
                    await asyncio.sleep(0)
                    if task.done():
                        break
                else:
                    when = self.next_deadline()
                    if when is None:
                        await asyncio.sleep(0.001)
                    elif when > limit:
                        raise TimeoutError(f"not done within {timeout} virtual seconds")
                    else:
                        self._fire_next()
        finally:
            if not task.done():
                task.cancel()
        return task.result()
