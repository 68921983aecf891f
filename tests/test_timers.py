"""The timer table: one entry per timer, fired in order, stopping when the connection ends."""

from __future__ import annotations

import pytest

from roamlink import Config
from roamlink.core.timers import LIVE_TIMERS, Timer, TimerTable
from roamlink.io.dispatcher import Dispatcher
from roamlink.testing.packets import keyed_pair


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


def test_fast_live_deadline_agrees_with_the_table() -> None:
    """``get_timer`` computes the live deadline by direct calls (the hot path); at every
    step of a handshake, a transfer with a loss, a path probe and a close it must equal the
    table's generic earliest."""
    a_addr, b_addr = ("10.0.0.2", 5000), ("10.0.0.1", 4433)
    client, server, connect = keyed_pair()
    conn = connect(b_addr, 0.0)  # type: ignore[operator]
    conns = [conn]
    checked = 0

    def check() -> None:
        nonlocal checked
        for c in conns:
            expected = (TimerTable.earliest(c.timers, LIVE_TIMERS)
                        if c.state.name not in ("CLOSING", "DRAINING", "CLOSED") else None)
            if expected is not None or c.state.name not in ("CLOSING", "DRAINING", "CLOSED"):
                assert c.get_timer() == expected
                checked += 1

    def exchange(now: float, drop_first: bool = False) -> None:
        for data, _ in conn.datagrams_to_send(now):
            if drop_first:
                drop_first = False
                continue
            server.datagram_received(data, a_addr, now)
        check()
        for peer in conns[1:]:
            for data, _ in peer.datagrams_to_send(now):
                client.datagram_received(data, b_addr, now)
        check()

    check()
    exchange(0.0)
    conns.append(server.accept_queue.popleft())
    now = 0.0
    for i in range(40):
        now += 0.01
        conn.send(b"x" * 3000)
        conns[1].send(b"y" * 100)
        exchange(now, drop_first=(i == 5))
        conns[1].read()
        conn.read()
        if i == 20:
            conn.migrate(now, ("10.0.0.1", 4434))
        for c in conns:
            deadline = c.get_timer()
            if deadline is not None and deadline <= now + 0.005:
                c.handle_timer(deadline)
                check()
    conn.close(now)
    for _ in range(10):
        now += 0.05
        exchange(now)
        for c in conns:
            deadline = c.get_timer()
            if deadline is not None and deadline <= now:
                c.handle_timer(now)
                check()
    assert checked > 150
