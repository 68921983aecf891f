"""Regression tests for defects found in review (each failed before its fix)."""

from __future__ import annotations

from roamlink import Config
from roamlink.core.connection import Connection
from roamlink.core.states import State
from roamlink.testing.scenarios import establish
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _pair(config: Config, seed: int = 1, delay: float = 0.01
          ) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=delay))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    client = net.add_node(("10.0.0.2", 50000), config)
    c, s = establish(net, client, server)
    return net, server, client, c, s


def _count_timer_calls(conn: Connection) -> list[int]:
    calls = [0]
    original = conn.handle_timer

    def counting(now: float) -> None:
        calls[0] += 1
        original(now)

    conn.handle_timer = counting  # type: ignore[method-assign]
    return calls


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
        calls = _count_timer_calls(c)
        start = net.now
        try:
            net.run(until=start + 5.0, max_events=100_000)
        except RuntimeError:  # the event budget ran out: the timer spins
            pass
        assert net.now >= start + 5.0, f"spinning at {net.now - start:.6f} s"
        assert c.state is State.ESTABLISHED
        # loss detection backs off, keepalives come once per interval: a few dozen calls
        assert calls[0] < 200, f"handle_timer ran {calls[0]} times in 5 simulated seconds"
        assert len(c.packets.control) <= 2
