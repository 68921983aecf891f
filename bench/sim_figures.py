"""Congestion-control figures on the simulated network (virtual clock); prints JSON.

Issue 7's scenario: 20 ms RTT, 100 Mbit/s bottleneck with a 100-packet queue, random loss both
ways (``loss``, ``two_flows``, ``back_off``, ``mixed``). Issue 15's, on jittery links
(``jitter``, ``jitter_bottleneck``, ``reorder``, ``fairness``): delay jitter as the relay
makes it (``--jitter J``: each one-way delay is ``d +- J``, here ``delay=d-J`` plus up to
``2J``), in order ("fifo", a cellular link) or reordering (netem); and on busy hosts behind a
token-bucket shaper (``busy_host``). The tests
(tests/test_congestion_figures.py, tests/test_congestion_jitter.py) run the same scenarios
for a few simulated seconds; this script runs them for as long as asked.

Usage: PYTHONPATH=src python3 bench/sim_figures.py [--seconds 30] [--only NAME ...]
       [--controllers vegas,newreno,bbr]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from roamlink.config import Config
from roamlink.testing.bulk import (
    BottleneckRun,
    QueueProbe,
    drive,
    finish,
    open_flow,
    run_bottleneck,
)
from roamlink.testing.simnet import HostStalls, LinkConfig, SimNetwork

RATE = 100e6 / 8
CONTROLLERS = ["vegas", "newreno", "bbr"]


def emit(name: str, data: dict[str, Any], wall: float) -> None:
    data = {"figure": name, **data, "wall_s": round(wall, 1)}
    print(json.dumps(data), flush=True)


def goodput_vs_loss(seconds: float) -> None:
    for cc in CONTROLLERS:
        for loss in (0.0, 0.01, 0.05):
            t = time.perf_counter()
            run = run_bottleneck(cc, loss=loss, seconds=seconds, rate=RATE)
            emit("bottleneck", run.summary(), time.perf_counter() - t)


def two_flows(seconds: float) -> None:
    for cc in CONTROLLERS:
        t = time.perf_counter()
        run = run_bottleneck(cc, seconds=seconds, rate=RATE, flows=2, stagger=1.0,
                             warmup=seconds / 2, seed=2)
        a, b = run.goodputs
        emit("two_flows", {**run.summary(), "share_deviation": round(abs(a - b) / (a + b), 3),
                           "jain": round(jain(run.goodputs), 4)},
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
    for cc in CONTROLLERS:
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


def jain(shares: list[float]) -> float:
    """Jain's fairness index: 1 when all shares are equal, 1/n when one flow takes all."""
    return sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares)) if any(shares) else 0.0


def jittery(cc: str, seconds: float, *, jitter: float, mode: str, loss: float = 0.0,
            rate: float = RATE, flows: int = 1, stagger: float = 0.0, warmup: float = 0.0,
            seed: int = 1) -> BottleneckRun:
    """20 ms RTT through a ``rate`` bottleneck, each one-way delay 10 ms +- ``jitter``."""
    return run_bottleneck(cc, loss=loss, seconds=seconds, rate=rate,
                          one_way_delay=0.01 - jitter, jitter=2 * jitter,
                          jitter_mode="fifo" if mode == "fifo" else "reorder", flows=flows,
                          stagger=stagger, warmup=warmup, seed=seed)


def jitter_figure(seconds: float) -> None:
    """1% random loss, FIFO jitter 0 / 5 / 10 ms: goodput against the same controller's
    jitter-free goodput (issue 15: >= 70% at 5 ms)."""
    for cc in CONTROLLERS:
        base = 0.0
        for j in (0.0, 0.005, 0.01):
            t = time.perf_counter()
            run = jittery(cc, seconds, jitter=j, mode="fifo", loss=0.01)
            if j == 0.0:
                base = run.goodput
            emit("jitter_fifo", {**run.summary(), "jitter_ms": j * 1e3,
                                 "of_jitter_free": round(run.goodput / base, 3) if base else None},
                 time.perf_counter() - t)


def jitter_bottleneck(seconds: float) -> None:
    """50 Mbit/s bottleneck, FIFO jitter 5 ms, no loss: link utilisation (issue 15: >= 80%)."""
    for cc in CONTROLLERS:
        t = time.perf_counter()
        run = jittery(cc, seconds, jitter=0.005, mode="fifo", rate=50e6 / 8)
        emit("jitter_bottleneck", {**run.summary(), "jitter_ms": 5.0},
             time.perf_counter() - t)


def reorder(seconds: float) -> None:
    """Per-packet jitter that reorders (netem-like), 5 ms, 50 Mbit/s: spurious retransmissions
    as a share of packets sent (issue 15: < 1%)."""
    for cc in CONTROLLERS:
        t = time.perf_counter()
        run = jittery(cc, seconds, jitter=0.005, mode="reorder", rate=50e6 / 8)
        st = run.stats[0]
        emit("reorder", {**run.summary(), "jitter_ms": 5.0, "packets_sent": st.packets_sent,
                         "spurious_share": round(st.spurious_losses / max(st.packets_sent, 1),
                                                 5)},
             time.perf_counter() - t)


def fairness(seconds: float) -> None:
    """Two flows of one controller through a 50 Mbit/s bottleneck, the second 1 s later,
    without and with 5 ms FIFO jitter: Jain's index over the second half (>= 0.95)."""
    for cc in CONTROLLERS:
        for j in (0.0, 0.005):
            t = time.perf_counter()
            run = jittery(cc, seconds, jitter=j, mode="fifo", rate=50e6 / 8, flows=2,
                          stagger=1.0, warmup=seconds / 2, seed=2)
            emit("fairness", {**run.summary(), "jitter_ms": j * 1e3,
                              "jain": round(jain(run.goodputs), 4)}, time.perf_counter() - t)


def busy_host(seconds: float) -> None:
    """The netns tbf figure's path (bench/netns_bottleneck.py) with busy hosts: 0.5 ms RTT,
    50 Mbit/s token-bucket shaper (15 KB bucket, 100-packet queue), both hosts descheduled
    for 1-15 ms every 3-20 ms; queueing delay measured after the first second (issue 15:
    mean <= 5 ms above the base RTT)."""
    stalls = HostStalls(run_min=0.003, run_max=0.02, stall_min=0.001, stall_max=0.015)
    for cc in CONTROLLERS:
        t = time.perf_counter()
        run = run_bottleneck(cc, seconds=seconds, rate=50e6 / 8, one_way_delay=0.00025,
                             warmup=1.0, burst=15137, stalls=stalls)
        emit("busy_host", {**run.summary(), "base_rtt_ms": 0.5}, time.perf_counter() - t)


FIGURES = {"loss": goodput_vs_loss, "two_flows": two_flows, "back_off": back_off,
           "mixed": mixed, "jitter": jitter_figure, "jitter_bottleneck": jitter_bottleneck,
           "reorder": reorder, "fairness": fairness, "busy_host": busy_host}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--only", nargs="*", choices=sorted(FIGURES), default=sorted(FIGURES))
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    args = parser.parse_args()
    CONTROLLERS[:] = args.controllers.split(",")
    for name in args.only:
        FIGURES[name](args.seconds)
