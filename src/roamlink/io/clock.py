"""The clock and timer service the socket layer runs on, injectable so tests can replace it.

The endpoint never reads ``time.monotonic`` or arms an event-loop timer itself: it asks a
:class:`Scheduler`. In production that is :class:`LoopScheduler` (the monotonic clock and the
running event loop); in tests it can be :class:`roamlink.testing.clock.VirtualClock`, which
jumps from deadline to deadline, so a 10-second connect timeout over real sockets takes no
wall time (trio's mock clock is the model).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    """What :meth:`Scheduler.call_later` returns: a callback that can still be called off."""

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """A clock and a way to run a callback at a time of that clock."""

    def now(self) -> float:
        """Seconds on a monotonic clock; connections take every ``now`` from here."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once ``delay`` seconds of this clock have passed."""
        ...


class LoopScheduler:
    """The real clock (``time.monotonic``) and the event loop's timers.

    Not ``loop.time()``: uvloop's is cached per loop iteration in whole milliseconds, which
    would blind the pacer and RTT samples to anything faster than a millisecond. Timers are
    therefore armed by delay (``loop.call_later``), whatever clock the loop keeps.
    """

    #: the clock itself, as a plain function: the hot path calls it without a wrapper
    now = staticmethod(time.monotonic)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.call_later = loop.call_later
