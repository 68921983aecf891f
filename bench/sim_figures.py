"""Issue 7's congestion-control figures on the simulated network (virtual clock); prints JSON.

Scenario: 20 ms RTT, 100 Mbit/s bottleneck with a 100-packet queue, random loss both ways.
The tests (tests/test_congestion_figures.py) run the same scenarios for a few simulated
seconds; this script runs them for as long as asked (issue 7: 30 s).

Usage: PYTHONPATH=src python3 bench/sim_figures.py [--seconds 30] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from roamlink.config import Config
from roamlink.testing.bulk import QueueProbe, drive, finish, open_flow, run_bottleneck
from roamlink.testing.simnet import LinkConfig, SimNetwork

RATE = 100e6 / 8


def emit(name: str, data: dict[str, Any], wall: float) -> None:
    data = {"figure": name, **data, "wall_s": round(wall, 1)}
    print(json.dumps(data), flush=True)


def goodput_vs_loss(seconds: float) -> None:
    for cc in ("vegas", "newreno"):
        for loss in (0.0, 0.01, 0.05):
            t = time.perf_counter()
            run = run_bottleneck(cc, loss=loss, seconds=seconds, rate=RATE)
            emit("bottleneck", run.summary(), time.perf_counter() - t)


def two_flows(seconds: float) -> None:
    for cc in ("vegas", "newreno"):
        t = time.perf_counter()
        run = run_bottleneck(cc, seconds=seconds, rate=RATE, flows=2, stagger=1.0,
                             warmup=seconds / 2, seed=2)
        a, b = run.goodputs
        emit("two_flows", {**run.summary(), "share_deviation": round(abs(a - b) / (a + b), 3)},
             time.perf_counter() - t)


def mixed(seconds: float) -> None:
    """One Vegas and one NewReno flow share the bottleneck (Vegas's competing mode)."""
    t = time.perf_counter()
    run = run_bottleneck("vegas", seconds=seconds, rate=RATE, flows=2, warmup=seconds / 3,
                         controllers=["vegas", "newreno"])
    emit("vegas_vs_newreno", {**run.summary(), "controllers": ["vegas", "newreno"]},
         time.perf_counter() - t)


def back_off(seconds: float) -> None:
    """5% random loss on a fast link; halfway the link slows to a quarter."""
    for cc in ("vegas", "newreno"):
        t = time.perf_counter()
        net = SimNetwork(seed=3)
        cfg = Config(congestion_control=cc)
        server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
        client = net.add_node(("10.0.0.2", 5000), cfg)
        forward = LinkConfig(delay=0.01, loss=0.05, rate=RATE, queue_packets=100)
        net.set_link("10.0.0.2", "10.0.0.1", forward, both_ways=False)
        net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=0.01, loss=0.05), both_ways=False)
        flow = open_flow(net, client, server)
        t0 = net.now
        flow.mark("start")
        drive(net, [flow], t0 + seconds / 2)
        flow.mark("switch")
        cwnd_fast = flow.sender.cc.cwnd
        link = net.link_stats("10.0.0.2", "10.0.0.1")
        forward.rate = RATE / 4
        drive(net, [flow], t0 + seconds / 2 + 0.5)
        probe = QueueProbe(link)
        probe.start()
        flow.mark("slow")
        drive(net, [flow], t0 + seconds)
        flow.mark("end")
        cwnd_slow = flow.sender.cc.cwnd
        ok = finish(net, [flow]) and flow.exact()
        fast = flow.goodput("start", "switch")
        emit("back_off", {"cc": cc, "fast_goodput_MBps": round(fast / 1e6, 3),
                          "slow_goodput_MBps": round(flow.goodput("slow", "end") / 1e6, 3),
                          "slow_rate_MBps": RATE / 4 / 1e6, "cwnd_fast": cwnd_fast,
                          "cwnd_slow": cwnd_slow,
                          "queue_delay_after_ms": round(probe.average() * 1e3, 2),
                          "queue_drops": link.queue_drops, "exact": ok},
             time.perf_counter() - t)


FIGURES = {"loss": goodput_vs_loss, "two_flows": two_flows, "back_off": back_off,
           "mixed": mixed}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--only", nargs="*", choices=sorted(FIGURES), default=sorted(FIGURES))
    args = parser.parse_args()
    for name in args.only:
        FIGURES[name](args.seconds)
