"""The simulator's models of a token-bucket shaper and of a busy host (``simnet``)."""

from __future__ import annotations

from roamlink.testing.simnet import HostStalls, LinkConfig, SimNetwork

SIZE = 1200


def _net(link: LinkConfig) -> SimNetwork:
    net = SimNetwork(seed=3)
    net.add_node(("10.0.0.2", 5000))
    net.add_node(("10.0.0.1", 4433)).record = True
    net.set_link("10.0.0.2", "10.0.0.1", link, both_ways=False)
    return net


def test_token_bucket_passes_its_burst_at_once_then_the_rate() -> None:
    """tbf-like: after idling, ``burst`` bytes leave at once; the rest one per size/rate."""
    net = _net(LinkConfig(delay=0.0, rate=SIZE * 1000.0, burst=5 * SIZE))
    receiver = net.nodes[("10.0.0.1", 4433)]
    for i in range(20):
        net.send(("10.0.0.2", 5000), receiver.addr, bytes([i]) * SIZE)
    net.run(until=0.0001)
    assert len(receiver.received) == 5
    net.run(until=0.0101)
    assert len(receiver.received) == 15
    net.run(until=0.017)  # the last left at 15 ms: idle for 2 ms since
    assert [d[0] for d, _ in receiver.received] == list(range(20))
    for i in range(4):  # the bucket refilled by 2 packets' worth, no more
        net.send(("10.0.0.2", 5000), receiver.addr, bytes([i]) * SIZE)
    net.run(until=0.0171)
    assert len(receiver.received) == 22
    net.run(until=0.0191)
    assert len(receiver.received) == 24


def test_a_stalled_host_reads_what_waited_when_it_runs_again() -> None:
    """Datagrams that reach a descheduled node wait (in order) until its stall ends."""
    net = _net(LinkConfig(delay=0.001))
    receiver = net.nodes[("10.0.0.1", 4433)]
    receiver.set_stalls(HostStalls(run_min=0.004, run_max=0.008, stall_min=0.003,
                                   stall_max=0.006), seed=1)
    for i in range(200):
        net.call_at(i * 0.0005, lambda i=i: net.send(("10.0.0.2", 5000), receiver.addr,
                                                     i.to_bytes(2, "big")))
    t, seen = 0.0, 0
    stalls = 0
    while t < 0.1:
        net.run(until=t)
        count = len(receiver.received)
        if receiver.stalled_until(t):
            if seen == count:
                stalls += 1
            assert count == seen or receiver.stalled_until(t - 0.0001) == 0.0
        seen = count
        t += 0.0001
    assert stalls > 50  # it did stall, and nothing arrived meanwhile
    net.run(until=1.0)
    assert [int.from_bytes(d, "big") for d, _ in receiver.received] == list(range(200))
