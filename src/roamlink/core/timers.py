"""Every deadline a connection keeps: one enum names them, one table fires them.

``Connection.get_timer()`` is the earliest deadline in the table and
``Connection.handle_timer(now)`` fires, in the order below, each timer whose deadline passed.
The order matters: the first three end the connection, and once one of them fires nothing
else runs. While closing or draining only ``DRAIN`` is armed.

Where a deadline is stored or computed, and what firing does, is written next to each other
in ``Connection._timer_table`` (the connection owns the state both read).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import IntEnum


class Timer(IntEnum):
    CONNECT = 0  # the handshake did not complete within Config.connect_timeout: give up
    IDLE = 1  # nothing heard from the peer for Config.idle_timeout: give up
    CLOSE = 2  # after close(), the peer's FIN is overdue (Config.close_timeout): abort
    ACK = 3  # a delayed ACK is due
    PATH_VALIDATION = 4  # a candidate path's challenge retry or validation deadline
    LOSS_DETECTION = 5  # loss time or probe timeout (see recovery.py)
    GAP_PROBE = 6  # the peer went quiet while we expect data: a packet lets it find us
    KEEPALIVE = 7  # nothing sent for Config.keepalive_interval: PING
    PACING = 8  # the pacer lets the next packet go (nothing to do but send)
    DRAIN = 9  # closing or draining is over: the connection is closed


#: The order ``handle_timer`` fires timers in while the connection is alive.
LIVE_TIMERS: tuple[Timer, ...] = (
    Timer.CONNECT, Timer.IDLE, Timer.CLOSE, Timer.ACK, Timer.PATH_VALIDATION,
    Timer.LOSS_DETECTION, Timer.GAP_PROBE, Timer.KEEPALIVE, Timer.PACING,
)
#: ... and while it is closing or draining.
ENDING_TIMERS: tuple[Timer, ...] = (Timer.DRAIN,)

#: The deadline of one timer (None: not armed).
Deadline = Callable[[], float | None]
#: Fire one timer; True when the connection ended (no further timer runs).
Handler = Callable[[float], bool]


class TimerTable:
    """Each timer's deadline and handler, indexed by :class:`Timer`."""

    __slots__ = ("_deadlines", "_handlers")

    def __init__(self, entries: Mapping[Timer, tuple[Deadline, Handler]]) -> None:
        missing = [t.name for t in Timer if t not in entries]
        if missing:
            raise ValueError(f"timers without an entry: {', '.join(missing)}")
        self._deadlines: list[Deadline] = [entries[t][0] for t in Timer]
        self._handlers: list[Handler] = [entries[t][1] for t in Timer]

    def deadline(self, timer: Timer) -> float | None:
        return self._deadlines[timer]()

    def earliest(self, timers: tuple[Timer, ...]) -> float | None:
        """The earliest armed deadline among ``timers``."""
        deadlines = self._deadlines
        earliest: float | None = None
        for timer in timers:
            at = deadlines[timer]()
            if at is not None and (earliest is None or at < earliest):
                earliest = at
        return earliest

    def fire(self, timers: tuple[Timer, ...], now: float) -> None:
        """Fire each of ``timers`` (in order) whose deadline passed, until one ends the
        connection. A deadline is read just before its timer fires: an earlier handler may
        have moved it (the probe timeout backs off the gap-probe deadline)."""
        deadlines = self._deadlines
        handlers = self._handlers
        for timer in timers:
            at = deadlines[timer]()
            if at is not None and now >= at and handlers[timer](now):
                return
