"""Issue 7's congestion-control figures, on the simulated network (virtual clock, fixed seeds).

Scenario: 20 ms RTT, 100 Mbit/s bottleneck with a 100-packet queue. The issue asks for 30 s of
simulated time; at ~0.5 s of wall time per simulated second (one 100 Mbit/s flow in Python)
these tests simulate 4 s per scenario (6-8 s for two flows, 20 s on the slow, long paths) so
the whole file runs in ~25 s. bench/sim_figures.py runs the same scenarios for the full 30 s
and prints the figures.
"""

from __future__ import annotations

from functools import cache

import pytest

from roamlink.config import Config
from roamlink.testing.bulk import (
    BottleneckRun,
    QueueProbe,
    drive,
    finish,
    open_flow,
    run_bottleneck,
)
from roamlink.testing.simnet import LinkConfig, SimNetwork

RATE = 100e6 / 8  # bytes per second
SECONDS = 4.0


@cache
def bottleneck(controller: str, loss: float) -> BottleneckRun:
    return run_bottleneck(controller, loss=loss, seconds=SECONDS, rate=RATE, warmup=0.0)


@pytest.mark.parametrize(("loss", "minimum"), [(0.0, 0.90), (0.01, 0.70), (0.05, 0.40)])
def test_vegas_goodput_through_the_bottleneck(loss: float, minimum: float) -> None:
    run = bottleneck("vegas", loss)
    assert run.exact
    assert run.utilisation >= minimum, run.summary()
    assert run.stats[0].congestion_controller == "vegas"
    if loss:
        assert run.stats[0].packets_lost > 0 and run.stats[0].retransmissions > 0


def test_vegas_keeps_the_queue_short_while_newreno_fills_it() -> None:
    vegas = bottleneck("vegas", 0.0)
    reno = bottleneck("newreno", 0.0)
    assert vegas.exact and reno.exact
    # Vegas: average queueing delay at most 5 ms above the base RTT, and never a full queue
    assert vegas.queue_delay <= 0.005, vegas.summary()
    assert vegas.queue_drops == 0
    st = vegas.stats[0]
    assert st.smoothed_rtt - st.min_rtt <= 0.005
    # NewReno in the same scenario: the queue overflows (100 packets = 9.6 ms at 100 Mbit/s)
    assert reno.queue_drops > 0
    assert reno.queue_delay_max >= 0.009
    assert reno.queue_delay >= 4 * vegas.queue_delay
    assert reno.queue_delay >= 0.002, reno.summary()


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_random_loss_vegas_at_least_twice_newreno(loss: float) -> None:
    vegas = bottleneck("vegas", loss)
    reno = bottleneck("newreno", loss)
    assert vegas.exact and reno.exact
    # the link never queued up: this loss is random, not congestion
    assert vegas.queue_drops == 0 and reno.queue_drops == 0
    assert vegas.goodput >= 2 * reno.goodput, (vegas.summary(), reno.summary())
    # Vegas judged (almost) every loss random and kept its window
    assert vegas.stats[0].cwnd >= 0.9 * RATE * 0.02


def test_vegas_still_backs_off_when_a_queue_starts_to_grow() -> None:
    """5% random loss on a fast link, then the link slows to a quarter: the queue must not fill."""
    net = SimNetwork(seed=3)
    cfg = Config(congestion_control="vegas")
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    forward = LinkConfig(delay=0.01, loss=0.05, rate=RATE, queue_packets=100)
    net.set_link("10.0.0.2", "10.0.0.1", forward, both_ways=False)
    net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=0.01, loss=0.05), both_ways=False)
    flow = open_flow(net, client, server)
    t0 = net.now
    drive(net, [flow], t0 + 2.0)
    fast_cwnd = flow.sender.cc.cwnd
    assert fast_cwnd >= 0.9 * RATE * 0.02  # kept its rate under 5% random loss
    link = net.link_stats("10.0.0.2", "10.0.0.1")
    drops_before = link.queue_drops
    forward.rate = RATE / 4  # a bottleneck appears: the queue starts to grow
    drive(net, [flow], t0 + 2.5)  # half a second to notice
    probe = QueueProbe(link)
    probe.start()
    flow.mark("slow")
    drive(net, [flow], t0 + 4.0)
    flow.mark("end")
    assert flow.sender.cc.cwnd <= 0.5 * fast_cwnd  # backed off
    assert probe.average() <= 0.005  # the queue stays short at the new rate
    assert link.queue_drops - drops_before <= 100  # at most one queue's worth at the switch
    assert flow.goodput("slow", "end") >= 0.7 * RATE / 4  # and it still uses the link
    assert finish(net, [flow]) and flow.exact()


def test_two_vegas_flows_converge_to_equal_shares() -> None:
    """The second flow starts a second later, while the first keeps a queue (so its first base
    RTT is too high); the periodic base-RTT probe corrects that and the shares converge."""
    run = run_bottleneck("vegas", seconds=8.0, rate=RATE, flows=2, stagger=1.0, warmup=5.0,
                         seed=2)
    assert run.exact
    a, b = run.goodputs
    fair = (a + b) / 2
    assert abs(a - fair) <= 0.2 * fair and abs(b - fair) <= 0.2 * fair, run.summary()
    assert run.utilisation >= 0.85
    assert run.queue_delay <= 0.005


def test_jitter_and_reordering_do_not_read_as_congestion() -> None:
    """5 ms of per-packet jitter (so heavy reordering) and 1% loss on a 40 Mbit/s path: the
    loss thresholds widen after the first spurious losses, jitter is not taken for a queue,
    and Vegas keeps most of the link while NewReno collapses."""
    runs = {}
    for cc in ("vegas", "newreno"):
        net = SimNetwork(seed=5)
        cfg = Config(congestion_control=cc)
        server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
        client = net.add_node(("10.0.0.2", 5000), cfg)
        net.set_link("10.0.0.2", "10.0.0.1", LinkConfig(delay=0.01, jitter=0.005, loss=0.01,
                                                        rate=5e6, queue_packets=100),
                     both_ways=False)
        net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=0.01, jitter=0.005, loss=0.01),
                     both_ways=False)
        flow = open_flow(net, client, server)
        flow.mark("start")
        drive(net, [flow], net.now + 4.0)
        flow.mark("end")
        assert finish(net, [flow]) and flow.exact()
        runs[cc] = flow
    vegas, reno = runs["vegas"], runs["newreno"]
    v_goodput, r_goodput = vegas.goodput("start", "end"), reno.goodput("start", "end")
    assert v_goodput >= 0.6 * 5e6 and v_goodput >= 2 * r_goodput, (v_goodput, r_goodput)
    rec = vegas.sender.recovery
    assert rec.packet_threshold > 3 and rec.spurious_losses < 0.2 * rec.packets_lost + 20


@pytest.mark.parametrize(("rate_mbit", "rtt", "loss", "minimum"),
                         [(10, 0.6, 0.10, 0.4), (2, 0.4, 0.20, 0.4)])
def test_very_poor_networks_long_delay_and_heavy_random_loss(
        rate_mbit: float, rtt: float, loss: float, minimum: float) -> None:
    """The first principle: a satellite-like 600 ms path with 10% loss each way, and a 2 Mbit/s
    path with 400 ms and 20% loss each way. Vegas keeps a large share of the link (measured
    after a 5 s start-up) where NewReno is reduced to a trickle."""
    rate = rate_mbit * 1e6 / 8
    kwargs = {"loss": loss, "seconds": 20.0, "rate": rate, "queue_packets": 200,
              "one_way_delay": rtt / 2, "warmup": 5.0, "finish_timeout": 300.0}
    vegas = run_bottleneck("vegas", **kwargs)  # type: ignore[arg-type]
    # NewReno's window stays a few packets here: a small send buffer does not limit it, and
    # lets its transfer end (hash-checked) within the time limit
    reno = run_bottleneck("newreno", config=Config(send_buffer_size=32 * 1024),
                          **kwargs)  # type: ignore[arg-type]
    assert vegas.exact and reno.exact
    assert vegas.utilisation >= minimum, vegas.summary()
    assert vegas.goodput >= 5 * reno.goodput, (vegas.summary(), reno.summary())


def test_vegas_is_not_starved_by_a_loss_based_flow() -> None:
    """NewReno fills the queue until it overflows; a pure delay-based flow would shrink to a
    trickle (12% of the link here). Vegas notices that it keeps shrinking while the queue keeps
    growing and overflowing, and competes with AIMD until the queue drains again."""
    run = run_bottleneck("vegas", seconds=6.0, rate=RATE, flows=2, warmup=2.0,
                         controllers=["vegas", "newreno"])
    assert run.exact
    vegas, reno = run.goodputs
    assert vegas >= 0.2 * RATE, run.summary()
    assert reno >= 0.2 * RATE
    assert run.utilisation >= 0.85
