"""Every deadline a connection keeps: one enum names them, one table fires them.

``Connection.get_timer()`` is the earliest deadline in the table and
``Connection.handle_timer(now)`` fires, in the order below, each timer whose deadline passed.
The order matters: the first three end the connection, and once one of them fires nothing
else runs. While closing or draining only ``DRAIN`` is armed.

:func:`connection_timers` writes down, for each timer of a connection, where its deadline
comes from and what firing it does; like :mod:`.migration`, these functions are the
connection's own behaviour, kept in the file named for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import IntEnum
from functools import partial
from typing import TYPE_CHECKING, Final

from ..errors import ConnectionClosed, ConnectTimeout, IdleTimeout
from . import delivery, migration, wire
from .states import State, Trigger

if TYPE_CHECKING:
    from .connection import Connection


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
LIVE_TIMERS: Final[tuple[Timer, ...]] = (
    Timer.CONNECT, Timer.IDLE, Timer.CLOSE, Timer.ACK, Timer.PATH_VALIDATION,
    Timer.LOSS_DETECTION, Timer.GAP_PROBE, Timer.KEEPALIVE, Timer.PACING,
)
#: ... and while it is closing or draining.
ENDING_TIMERS: Final[tuple[Timer, ...]] = (Timer.DRAIN,)

#: (module constants: compiled, a Final global is a C variable, an enum member a dict lookup)
_HANDSHAKING: Final = State.HANDSHAKING
_ESTABLISHED: Final = State.ESTABLISHED
_VALIDATING_PATH: Final = State.VALIDATING_PATH

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


# ---------------------------------------------------------------------- a connection's timers
class ConnectionTimers(TimerTable):
    """A connection's table. ``get_timer`` runs after every packet and send pass, so the
    earliest live deadline is computed by calling the deadline functions directly (one
    call each, instead of nine calls through the table's callables); the table's entries
    are the same functions, so the two cannot disagree (``tests/test_timers.py`` checks)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection,
                 entries: Mapping[Timer, tuple[Deadline, Handler]]) -> None:
        super().__init__(entries)
        self._conn = conn

    def earliest(self, timers: tuple[Timer, ...]) -> float | None:
        if timers is LIVE_TIMERS:
            return live_earliest(self._conn)
        return TimerTable.earliest(self, timers)


#: "not armed", for the deadline functions below that return a plain float (compiled, a
#: ``float | None`` is a boxed object each time; ``live_earliest`` runs after every serve)
NEVER: Final = math.inf


def live_earliest(conn: Connection) -> float | None:
    """The earliest deadline among LIVE_TIMERS (what ``TimerTable.earliest`` returns)."""
    best = _connect_at(conn)
    at = _idle_at(conn)
    if at < best:
        best = at
    opt = conn._close_deadline
    if opt is not None and opt < best:
        best = opt
    opt = conn.acks.deadline
    if opt is not None and opt < best:
        best = opt
    if conn.paths.candidates:
        opt = conn.paths.timer()
        if opt is not None and opt < best:
            best = opt
    opt = conn.recovery.timer()
    if opt is not None and opt < best:
        best = opt
    at = _gap_probe_at(conn)
    if at < best:
        best = at
    at = _keepalive_at(conn)
    if at < best:
        best = at
    opt = conn.packets.pace_at
    if opt is not None and opt < best:
        best = opt
    return best if best < NEVER else None


def _armed(at: float) -> float | None:
    return at if at < NEVER else None


def connection_timers(conn: Connection) -> TimerTable:
    """Each timer's deadline (None: not armed) and what firing it does, for ``conn``."""
    packets, acks = conn.packets, conn.acks
    return ConnectionTimers(conn, {
        Timer.CONNECT: (partial(_connect_deadline, conn), partial(_connect_timeout, conn)),
        Timer.IDLE: (partial(_idle_deadline, conn), partial(_idle_timeout, conn)),
        Timer.CLOSE: (lambda: conn._close_deadline, partial(_close_timeout, conn)),
        Timer.ACK: (lambda: acks.deadline, partial(_ack_due, conn)),
        Timer.PATH_VALIDATION: (conn.paths.timer, partial(_expire_paths, conn)),
        Timer.LOSS_DETECTION: (conn.recovery.timer, partial(_loss_timeout, conn)),
        Timer.GAP_PROBE: (partial(_gap_probe_deadline, conn), partial(_gap_probe, conn)),
        Timer.KEEPALIVE: (partial(_keepalive_deadline, conn), partial(_keepalive, conn)),
        Timer.PACING: (lambda: packets.pace_at, _nothing_to_do),
        Timer.DRAIN: (lambda: conn._drain_deadline, partial(_drained, conn)),
    })


def _nothing_to_do(now: float) -> bool:
    return False


def _connect_deadline(conn: Connection) -> float | None:
    return _armed(_connect_at(conn))


def _connect_at(conn: Connection) -> float:
    if conn.state is not _HANDSHAKING:
        return NEVER
    return conn.handshake_deadline


def _connect_timeout(conn: Connection, now: float) -> bool:
    if conn.is_client:
        err = ConnectTimeout(
            f"no answer from {conn.remote_addr} within {conn.config.connect_timeout} s")
    else:
        err = ConnectTimeout(f"half-open handshake from {conn.remote_addr} expired")
    conn._terminate(err, Trigger.TIMEOUT)
    return True


def _idle_deadline(conn: Connection) -> float | None:
    return _armed(_idle_at(conn))


def _idle_at(conn: Connection) -> float:
    idle = conn.idle_timeout
    return conn._last_received + idle if idle else NEVER


def _idle_timeout(conn: Connection, now: float) -> bool:
    conn._terminate(IdleTimeout(
        f"nothing heard from the peer for {conn.config.idle_timeout} s"), Trigger.TIMEOUT)
    return True


def _close_timeout(conn: Connection, now: float) -> bool:
    conn._close_deadline = None
    conn._enter_closing(now, wire.CloseCode.NO_ERROR, "close timeout",
                        ConnectionClosed("the peer did not close in time"))
    return True


def _ack_due(conn: Connection, now: float) -> bool:
    conn.acks.pending = True
    conn.acks.deadline = now  # send at the next opportunity
    return False


def _expire_paths(conn: Connection, now: float) -> bool:
    migration.expire_paths(conn, now)
    return False


def _loss_timeout(conn: Connection, now: float) -> bool:
    lost, probe = conn.recovery.on_timeout(now)
    if lost:
        delivery.on_lost(conn, lost, now)
    if probe:
        recovery = conn.recovery
        conn.packets.probe_pending = recovery.probe_packets  # 1 for a TLP, 2 for a PTO
        send_buf = conn.send_buf
        if conn.state is State.HANDSHAKING:
            conn.handshake.pending = True
        elif not send_buf.unsent:
            # nothing new to probe with: a tail-loss probe repeats the newest data (its ACK
            # then reveals what before it was lost), a PTO the oldest
            again = (recovery.newest_unacked() if recovery.last_probe_was_tlp
                     else recovery.oldest_unacked())
            if again is not None:
                for offset, length, fin in again.stream:
                    send_buf.on_lost(offset, length, fin)
    return False


#: The receiver probes' interval doubles at most this many times (2, 4, 8, 16 probe
#: timeouts): while the peer is unreachable the probes are all that can bring it back, and
#: one probe is a datagram or two, so they stay frequent enough to catch a NAT mapping that
#: lives a short time (the 8 probes of a silence then span about 100 probe timeouts).
GAP_PROBE_MAX_DOUBLINGS: Final = 3


def _gap_probe_deadline(conn: Connection) -> float | None:
    return _armed(_gap_probe_at(conn))


def _gap_probe_at(conn: Connection) -> float:
    """Data is missing, or the peer may still send (no FIN yet): if it went quiet, a few
    backed-off probes (8 at most per silence) let it find us after an address change it
    cannot see."""
    recv_buf = conn.recv_buf
    state = conn.state
    if (state is not _ESTABLISHED and state is not _VALIDATING_PATH) or not (
            recv_buf.segment_count or (
            recv_buf.fin_offset is None and conn._gap_probes < 8)):
        return NEVER
    # the RTO without the probe timeout's backoff: that backoff grows while our own packets
    # go unanswered, which is just when our address may have changed, and compounding it
    # with this one left a receiver behind a re-mapping NAT silent for many seconds
    backoff = 2.0 * (1 << min(conn._gap_probes, GAP_PROBE_MAX_DOUBLINGS))
    return (max(conn._last_received, conn._gap_probe_sent)
            + backoff * conn.gap_probe_jitter * conn.recovery.rto())


def _gap_probe(conn: Connection, now: float) -> bool:
    # the peer was sending (or data is missing) and went quiet: maybe our address changed
    # and its packets go astray. A packet from us lets it find us again: our ACK and a PING,
    # padded to the full datagram size, so that the peer may answer with a full-size
    # PATH_CHALLENGE at once (3x what it received) and validate the path in one round trip
    # instead of two (a small challenge first, then a padded one): behind a NAT that
    # re-maps often, the second round trip may already find the old mapping gone.
    conn._gap_probe_sent = now
    conn._gap_probes += 1
    conn.padded_ping_due = True
    conn.gap_probe_jitter = 0.75 + conn.random_bytes(1)[0] / 510
    return False


def _keepalive_deadline(conn: Connection) -> float | None:
    return _armed(_keepalive_at(conn))


def _keepalive_at(conn: Connection) -> float:
    """One interval after the last packet sent, or after the last keepalive PING queued: a
    connection blocked by its congestion window (e.g. towards a dead peer) cannot send the
    PING at once, and a deadline counted from the last send alone would stay in the past and
    fire again and again (a spinning timer queueing PINGs without end)."""
    interval = conn.keepalive_interval
    state = conn.state
    if not interval or (state is not _ESTABLISHED and state is not _VALIDATING_PATH):
        return NEVER
    return max(conn.packets.last_sent, conn._keepalive_queued) + interval


def _keepalive(conn: Connection, now: float) -> bool:
    conn._keepalive_queued = now
    control = conn.packets.control
    if not any(type(frame) is wire.PingFrame for frame in control):
        control.append(wire.PingFrame())  # one PING waiting is enough
    return False


def _drained(conn: Connection, now: float) -> bool:
    conn._set_state(Trigger.DRAIN_DONE)
    return True
