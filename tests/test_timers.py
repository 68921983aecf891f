"""The timer table: one entry per timer, fired in order, stopping when the connection ends."""

from __future__ import annotations

import pytest

from roamlink import Config
from roamlink.core.timers import LIVE_TIMERS, Timer, TimerTable
from roamlink.io.dispatcher import Dispatcher


def test_every_timer_needs_an_entry() -> None:
    entries = {t: ((lambda: None), (lambda now: False)) for t in Timer if t is not Timer.ACK}
    with pytest.raises(ValueError, match="ACK"):
        TimerTable(entries)


def test_fire_runs_due_timers_in_order_and_stops_at_an_ending_one() -> None:
    fired: list[Timer] = []
    due = {Timer.IDLE: 1.0, Timer.ACK: 2.0, Timer.KEEPALIVE: 3.0, Timer.PACING: 9.0}

    def entry(t: Timer) -> tuple:  # type: ignore[type-arg]
        def handle(now: float) -> bool:
            fired.append(t)
            return t is Timer.KEEPALIVE  # pretend the keepalive ended the connection
        return (lambda: due.get(t)), handle

    table = TimerTable({t: entry(t) for t in Timer})
    assert table.earliest(LIVE_TIMERS) == 1.0
    table.fire(LIVE_TIMERS, 5.0)
    assert fired == [Timer.IDLE, Timer.ACK, Timer.KEEPALIVE]  # PACING not due; none after
    fired.clear()
    table.fire((Timer.PACING, Timer.IDLE), 10.0)
    assert fired == [Timer.PACING, Timer.IDLE]


def test_connection_timer_is_the_earliest_table_deadline() -> None:
    cfg = Config(idle_timeout=7.0, connect_timeout=3.0)
    conn = Dispatcher(cfg).connect(("10.0.0.1", 4433), 100.0)
    assert conn.timers.deadline(Timer.CONNECT) == 103.0
    assert conn.timers.deadline(Timer.IDLE) == 107.0
    assert conn.timers.deadline(Timer.KEEPALIVE) is None  # not established yet
    assert conn.get_timer() == 103.0
    conn.handle_timer(103.0)
    assert conn.is_closed and conn.get_timer() is None


def test_every_state_says_which_timers_it_can_arm() -> None:
    from roamlink.core.states import State
    from roamlink.core.timers import TIMERS_BY_STATE

    assert set(TIMERS_BY_STATE) == set(State)
    for timers in TIMERS_BY_STATE.values():  # each in the one firing order
        order = [t for t in (*LIVE_TIMERS, Timer.DRAIN) if t in timers]
        assert list(timers) == order
