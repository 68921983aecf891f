"""Congestion-control figures on the simulated network (virtual clock); prints JSON.

Scenario of issue 7: 20 ms RTT, 100 Mbit/s bottleneck with a 100-packet queue.
Usage: PYTHONPATH=src python3 bench/sim_figures.py [seconds] [controller ...]
"""

from __future__ import annotations

import json
import sys
import time

from roamlink.config import Config
from roamlink.testing.bulk import QueueProbe, drive, finish, open_flow
from roamlink.testing.simnet import LinkConfig, SimNetwork

RATE = 100e6 / 8


def run(cc: str, loss: float, seconds: float, rate: float | None = RATE, seed: int = 1) -> dict:
    cfg = Config(congestion_control=cc)
    net = SimNetwork(seed=seed)
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    net.set_link("10.0.0.2", "10.0.0.1", LinkConfig(delay=0.01, loss=loss, rate=rate,
                                                    queue_packets=100), both_ways=False)
    net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=0.01, loss=loss), both_ways=False)
    wall = time.perf_counter()
    flow = open_flow(net, client, server)
    probe = QueueProbe(net.link_stats("10.0.0.2", "10.0.0.1"))
    probe.start()
    flow.mark("start")
    drive(net, [flow], net.now + seconds)
    flow.mark("end")
    st = flow.stats()
    ok = finish(net, [flow])
    wall = time.perf_counter() - wall
    link = net.link_stats("10.0.0.2", "10.0.0.1")
    return {"cc": cc, "loss": loss, "sim_s": seconds, "wall_s": round(wall, 2),
            "goodput_MBps": round(flow.goodput("start", "end") / 1e6, 3),
            "of_bottleneck": round(flow.goodput("start", "end") / (rate or RATE), 3),
            "queue_delay_ms": round(probe.average() * 1e3, 2), "exact": ok and flow.exact(),
            "srtt_ms": round(st.smoothed_rtt * 1e3, 2), "min_rtt_ms": round(st.min_rtt * 1e3, 2),
            "cwnd": st.cwnd, "lost": st.packets_lost, "retx": st.retransmissions,
            "spurious": st.spurious_losses, "queue_drops": link.queue_drops,
            "state": st.congestion_state}


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    ccs = sys.argv[2:] or ["newreno"]
    for cc in ccs:
        for loss in (0.0, 0.01, 0.05):
            print(json.dumps(run(cc, loss, secs)), flush=True)
