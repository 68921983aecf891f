"""Regression tests for defects found in review (each failed before its fix)."""

from __future__ import annotations

import contextlib

from roamlink import Config
from roamlink.core import wire
from roamlink.core.connection import Connection
from roamlink.core.states import TRANSITIONS, State, Trigger
from roamlink.testing.scenarios import establish
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _pair(config: Config, seed: int = 1, delay: float = 0.01, rate: float | None = None
          ) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=delay, rate=rate,
                                                        queue_packets=1000))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    client = net.add_node(("10.0.0.2", 50000), config)
    c, s = establish(net, client, server)
    return net, server, client, c, s


def test_keepalive_does_not_spin_when_the_window_is_full() -> None:
    """A connection blocked by its congestion window towards a dead peer could not send its
    keepalive PING, so the keepalive deadline stayed in the past: handle_timer fired again at
    once, queueing one more PING each time (hundreds of thousands of calls per simulated
    tenth of a second; a spinning CPU and unbounded memory on a real socket)."""
    for idle in (0.0, 600.0):  # no idle timeout, or one far longer than the keepalive
        config = Config(idle_timeout=idle, keepalive_interval=0.2)
        net, server, client, c, s = _pair(config)
        for a, b in ((client.host, server.host), (server.host, client.host)):
            net.link(a, b).loss = 1.0  # the peer is gone
        c.send(bytes(2_000_000))  # far more than the congestion window
        net.flush(client)
        start = net.now
        # loss detection backs off, keepalives come once per interval: a few dozen timer
        # events in 5 simulated seconds; a spinning timer exhausts the event budget at once
        with contextlib.suppress(RuntimeError):  # the event budget ran out: it spins
            net.run(until=start + 5.0, max_events=20_000)
        assert net.now >= start + 5.0, f"spinning at {net.now - start:.6f} s"
        assert c.state is State.ESTABLISHED
        assert len(c.packets.control) <= 2


def test_migration_requeue_is_not_counted_as_loss() -> None:
    """Packets in flight when the path changes are resent on the new path; they were not
    judged lost, so they must neither count in ``packets_lost`` nor move the loss-detection
    thresholds (a migration looked like a burst of loss)."""
    from roamlink.testing.scenarios import Pump, run_pumps

    net, server, client, c, s = _pair(Config(), seed=3, delay=0.02, rate=2e6)
    payload = bytes(range(256)) * 16_000  # 4 MB at 2 MB/s: the client moves half-way
    pump = Pump(net, s, server, c, client, payload)
    assert not run_pumps(net, [pump], 1.0)  # well into the transfer, a window in flight
    in_flight = s.recovery.bytes_in_flight
    assert in_flight > 20_000
    threshold = (s.recovery.packet_threshold, s.recovery.time_threshold,
                 s.recovery._losses_since_spurious)
    net.rebind(client, ("10.0.0.2", 50001))  # NAT rebinding: the server must follow
    assert run_pumps(net, [pump], 60) and pump.exact()
    stats = s.stats()
    assert stats.path_changes == 1
    assert stats.packets_lost == 0, f"{stats.packets_lost} packets counted lost"
    assert (s.recovery.packet_threshold, s.recovery.time_threshold,
            s.recovery._losses_since_spurious) == threshold
    assert s.recovery.packets_requeued > 0  # they were resent, and counted as such


def test_closing_end_that_receives_a_close_drains() -> None:
    """The state table says CLOSING + peer CLOSE -> DRAINING; packets in CLOSING used to
    return before their frames were read, so that transition never happened and both ends
    of a simultaneous abort kept answering each other's CLOSE."""
    net, server, client, c, s = _pair(Config(draining_period=5.0))
    c.abort(net.now, 0x100, "client gives up")
    s.abort(net.now, 0x101, "server gives up")
    assert c.state is State.CLOSING and s.state is State.CLOSING
    net.flush(client)
    net.flush(server)
    net.run(until=net.now + 1.0)
    assert c.state is State.DRAINING and s.state is State.DRAINING
    # draining ends send nothing more, whatever still arrives (no CLOSE answering CLOSE)
    sent = (c.stats().packets_sent, s.stats().packets_sent)
    for conn, node, peer in ((c, client, server), (s, server, client)):
        for pn in range(1000, 1003):
            net.send(peer.addr, node.addr, wire.encode_short_header(conn.local_cid, pn)
                     + wire.encode_frame(wire.CloseFrame(0x100, "again")))
    net.run(until=net.now + 1.0)
    assert (c.stats().packets_sent, s.stats().packets_sent) == sent
    net.run(until=net.now + 5.0)
    assert c.state is State.CLOSED and s.state is State.CLOSED
    # the table says so too (and the code now takes that transition)
    assert TRANSITIONS[(State.CLOSING, Trigger.PEER_CLOSE)] is State.DRAINING


def test_icmp_port_unreachable_fails_the_handshake_fast() -> None:
    """A client whose SYNs draw ICMP port unreachable fails with ConnectionRefused after
    a few tries (about a second), not after connect_timeout (10 s)."""
    from roamlink.errors import ConnectionRefused

    net = SimNetwork(seed=2, default_link=LinkConfig(delay=0.01))
    net.refusing_hosts.add("10.0.0.1")  # a host with nothing on port 4433
    client = net.add_node(("10.0.0.2", 50000))
    c = client.connect(("10.0.0.1", 4433))
    assert net.run_until(lambda: c.is_terminated or c.is_closed, 10)
    assert isinstance(c.error, ConnectionRefused)
    assert 0.5 <= net.now <= 1.5, f"refused after {net.now:.2f} s"


def test_icmp_is_ignored_once_established() -> None:
    net, server, client, c, s = _pair(Config())
    for _ in range(10):
        client.dispatcher.unreachable(server.addr, net.now)
    assert c.is_established and c.refusals == 0
