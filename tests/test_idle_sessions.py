"""Long-lived, mostly idle connections (an ssh shell left open): quiet, and alive (simulated).

An idle connection should cost a keepalive every ``keepalive_interval`` and its ACK, plus a
few backed-off receiver probes after the data stopped — not a packet every two PTOs.
"""

from __future__ import annotations

import pytest

from roamlink import Config
from roamlink.core.connection import Connection
from roamlink.testing.scenarios import establish
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _idle_pair(delay: float) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    config = Config(idle_timeout=600.0, keepalive_interval=15.0)
    net = SimNetwork(seed=1, default_link=LinkConfig(delay=delay))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    client = net.add_node(("10.0.0.2", 50000), config)
    c, s = establish(net, client, server)
    # a shell: the server greets, the client types, then nobody says anything
    s.send(b"banner")
    net.flush(server)
    assert net.run_until(lambda: c.readable > 0, 5)
    c.read()
    c.send(b"ls\n")
    net.flush(client)
    assert net.run_until(lambda: s.readable > 0, 5)
    s.read()
    return net, server, client, c, s


@pytest.mark.parametrize("delay", [0.0005, 0.025])
def test_an_idle_session_sends_little_and_stays_up(delay: float) -> None:
    net, server, client, c, s = _idle_pair(delay)
    net.run(until=net.now + 1.0)
    before = (c.stats().packets_sent, s.stats().packets_sent)
    minutes = 10
    net.run(until=net.now + 60.0 * minutes)
    sent = (c.stats().packets_sent - before[0], s.stats().packets_sent - before[1])
    # per side: a keepalive every 15 s and the ACKs of the peer's (<= 2 x 40 in 10 min),
    # plus at most 8 receiver probes after the data stopped
    assert all(n <= 2 * 4 * minutes + 8 + 4 for n in sent), sent
    assert c.is_established and s.is_established  # and nobody timed out
    # the session still works at once
    s.send(b"prompt$ ")
    net.flush(server)
    assert net.run_until(lambda: c.readable > 0, 2)
    assert c.read() == b"prompt$ "


def test_probes_resume_when_data_flowed_again() -> None:
    """The probe budget is per silence: after new data, a later silence probes again
    (what finds a peer whose NAT re-mapped it during a pause in a download)."""
    net, server, client, c, s = _idle_pair(0.01)
    net.run(until=net.now + 100.0)  # long enough to spend the first silence's probes
    s.send(b"more")
    net.flush(server)
    assert net.run_until(lambda: c.readable > 0, 2)
    c.read()
    start = c.stats().packets_sent
    net.run(until=net.now + 5.0)  # no keepalive is due within these 5 s
    # the ACK of "more", then probes backing off from two PTOs: several, not one
    assert c.stats().packets_sent - start >= 4
