"""Half-close, orderly close, abort, timeouts, draining, version negotiation (simulated)."""

from __future__ import annotations

from roamlink import Config
from roamlink.core.connection import Connection
from roamlink.core.events import ConnectionTerminated
from roamlink.core.states import State
from roamlink.errors import (
    ConnectionReset,
    ConnectTimeout,
    IdleTimeout,
    VersionMismatch,
)
from roamlink.testing.scenarios import establish
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _pair(seed: int = 0, **cfg: object) -> tuple[SimNetwork, SimNode, SimNode]:
    config = Config(**cfg)  # type: ignore[arg-type]
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=0.01))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    client = net.add_node(("10.0.0.2", 50000), config)
    return net, server, client


def _events(conn: Connection) -> list[object]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def test_half_close_then_four_way_close() -> None:
    net, server, client = _pair()
    c, s = establish(net, client, server)
    c.send(b"request")
    c.send_eof()
    net.flush(client)
    assert net.run_until(lambda: s.readable > 0 and s.recv_buf.fin_offset is not None, 5)
    assert s.read() == b"request" and s.at_eof
    assert c.is_established  # half-closed: the other direction still works
    s.send(b"response")
    s.send_eof()
    net.flush(server)
    assert net.run_until(lambda: c.at_eof or bool(c.readable and c.recv_buf.fin_offset), 5)
    assert c.read() == b"response"
    assert net.run_until(lambda: c.state is State.DRAINING and s.state is State.DRAINING, 5)
    assert ConnectionTerminated(None) in _events(c) and ConnectionTerminated(None) in _events(s)
    assert net.run_until(lambda: c.is_closed and s.is_closed, 10)
    assert c.error is None and s.error is None


def test_abort_resets_the_peer_with_code() -> None:
    net, server, client = _pair()
    c, s = establish(net, client, server)
    c.abort(net.now, 0x1234, "bye")
    net.flush(client)
    assert net.run_until(lambda: s.is_terminated, 5)
    assert isinstance(s.error, ConnectionReset) and s.error.code == 0x1234
    assert s.error.reason == "bye"


def test_abort_survives_lost_close() -> None:
    net, server, client = _pair()
    c, s = establish(net, client, server)
    net.link("10.0.0.2", "10.0.0.1").loss = 1.0
    c.abort(net.now, 0x200, "gone")
    net.flush(client)
    net.run(until=net.now + 0.1)
    net.link("10.0.0.2", "10.0.0.1").loss = 0.0
    s.send(b"are you there?")  # the peer's next packet draws CLOSE again
    net.flush(server)
    assert net.run_until(lambda: s.is_terminated, 5)
    assert isinstance(s.error, ConnectionReset) and s.error.code == 0x200


def test_idle_timeout_and_keepalive() -> None:
    net, server, client = _pair(idle_timeout=2.0)
    c, s = establish(net, client, server)
    net.link("10.0.0.1", "10.0.0.2").loss = 1.0  # the server goes silent
    net.link("10.0.0.2", "10.0.0.1").loss = 1.0
    net.run(until=net.now + 3.0)
    assert isinstance(c.error, IdleTimeout) and c.is_terminated
    # with keepalive, an idle but healthy connection stays up
    net, server, client = _pair(idle_timeout=2.0, keepalive_interval=0.5)
    c, s = establish(net, client, server)
    net.run(until=net.now + 20.0)
    assert c.is_established and s.is_established


def test_connect_timeout_to_silent_address() -> None:
    net, server, client = _pair(connect_timeout=1.5)
    conn = client.connect(("10.9.9.9", 1))
    net.run(until=3.0)
    assert isinstance(conn.error, ConnectTimeout) and conn.is_closed


def test_version_negotiation_mismatch_and_fallback() -> None:
    net = SimNetwork(seed=1)
    server = net.add_node(("10.0.0.1", 4433), Config(versions=(1,)), listen=True)
    client = net.add_node(("10.0.0.2", 50000), Config(versions=(7,)))
    conn = client.connect(server.addr)
    net.run(until=1.0)
    assert isinstance(conn.error, VersionMismatch)
    assert conn.error.supported == (1,) and server.dispatcher.stats.version_negotiations_sent
    # a client that also speaks version 1 falls back to it
    client2 = net.add_node(("10.0.0.3", 50000), Config(versions=(7, 1)))
    c, s = establish(net, client2, server)
    assert c.version == 1 and s.version == 1


def test_late_packets_after_close_neither_error_nor_reopen() -> None:
    net, server, client = _pair(draining_period=1.0)
    net.capture = True
    c, s = establish(net, client, server)
    c.send(b"data")
    c.send_eof()
    s.send_eof()
    net.flush(client)
    net.flush(server)
    assert net.run_until(lambda: c.state is State.DRAINING and s.state is State.DRAINING, 5)
    sent = [d for src, dst, d in net.captured if src == client.addr]
    assert any(d[0] == 0xC1 for d in sent)  # the SYN is among them
    accepted = server.dispatcher.stats.connections_accepted
    # replay, late, everything the client sent: during draining and after it
    for delay in (0.1, 2.0):
        for data in sent:
            net.call_at(net.now + delay, lambda d=data: net.send(client.addr, server.addr, d))
    net.run(until=net.now + 3.0)
    assert server.dispatcher.stats.connections_accepted == accepted  # no new connection
    assert s.error is None and s.is_closed
    stats = server.dispatcher.stats
    assert stats.dropped_unknown_cid > 0 and stats.dropped_late_handshake > 0  # counted


def test_close_with_unresponsive_peer_times_out() -> None:
    net, server, client = _pair(close_timeout=1.0)
    c, s = establish(net, client, server)
    c.close(net.now)
    net.flush(client)
    net.run(until=net.now + 3.0)  # the server application never closes its side
    assert c.is_terminated
    assert s.is_terminated  # it got CLOSE after the timeout
