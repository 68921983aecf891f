"""A real bottleneck: Vegas, then NewReno, through a tbf-limited veth between two namespaces.

Two network namespaces joined by a veth pair; the client side's egress is limited with
``tc qdisc ... tbf`` (default 50 Mbit/s, a queue of about 100 full-size packets). The kernel
here has no netem, so there is no added delay: the base RTT is a fraction of a millisecond and
everything above it is the tbf queue. A loss-based controller fills that queue (100 packets
of 1200 bytes at 50 Mbit/s is ~19 ms); Vegas should stay near the base RTT.

Needs root (CI is root); prints a reason and exits 0 elsewhere. The namespaces come from
``BottleneckTopology`` in ``tests/support/netns.py`` (test tooling, not in the package); only
addresses inside them are used, and they are removed at the end.

Usage: sudo PYTHONPATH=src python3 bench/netns_bottleneck.py [--mib 32] [--rate-mbit 50]
       [--queue-packets 100] [--controllers vegas newreno]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PORT = 4433
MiB = 1024 * 1024


# ----------------------------------------------------------------------------- topology
class Topology:
    """client ns --> router ns (tbf on its egress toward the server) --> server ns."""

    def __init__(self, rate_mbit: float, queue_packets: int) -> None:
        from tests.support.netns import BottleneckTopology

        self.topo = BottleneckTopology(rate=f"{rate_mbit}mbit", limit_packets=queue_packets)
        self.client_ns, self.server_ns = self.topo.a_ns, self.topo.b_ns
        self.client_ip, self.server_ip = self.topo.a_ip, self.topo.b_ip

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.topo.close()

    def run(self, ns: str, *args: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=SRC)
        return self.topo.popen(ns, [sys.executable, *args], stdout=subprocess.PIPE, text=True,
                               stderr=subprocess.PIPE, env=env)

    def qdisc_stats(self) -> str:
        return self.topo.qdisc_stats("b")


# ----------------------------------------------------------------------------- children
async def server_main(cc: str, server_ip: str) -> None:
    import roamlink

    listener = await roamlink.listen(server_ip, PORT,
                                     config=roamlink.Config(congestion_control=cc))
    print("READY", flush=True)
    stream = await asyncio.wait_for(listener.accept(), 30)
    h = hashlib.sha256()
    n = 0
    while data := await stream.read(1 << 20):
        h.update(data)
        n += len(data)
    print(json.dumps({"received": n, "sha256": h.hexdigest()}), flush=True)
    stream.write_eof()
    await stream.drain()
    await asyncio.wait_for(stream.wait_closed(), 10)
    listener.close()
    await listener.wait_closed()


async def client_main(cc: str, mib: float, server_ip: str) -> None:
    import random

    import roamlink

    payload = random.Random(7).randbytes(int(mib * MiB))
    stream = await roamlink.connect(server_ip, PORT,
                                    config=roamlink.Config(congestion_control=cc))
    samples: list[float] = []
    done = False

    async def sample() -> None:
        while not done:
            await asyncio.sleep(0.05)
            samples.append(stream.stats().latest_rtt)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    for i in range(0, len(payload), 256 * 1024):
        stream.write(payload[i:i + 256 * 1024])
        await stream.drain()
    stream.write_eof()
    assert await stream.read() == b""  # the server answers EOF once it has everything
    elapsed = time.perf_counter() - start
    done = True
    await sampler
    st = stream.stats()
    await asyncio.wait_for(stream.wait_closed(), 10)
    settled = samples[len(samples) // 4:] or samples  # skip slow start
    print(json.dumps({
        "cc": cc, "bytes": len(payload), "seconds": round(elapsed, 3),
        "goodput_MBps": round(len(payload) / elapsed / 1e6, 3),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "rtt_ms_mean": round(sum(settled) / len(settled) * 1e3, 2) if settled else None,
        "rtt_ms_max": round(max(settled) * 1e3, 2) if settled else None,
        "min_rtt_ms": round(st.min_rtt * 1e3, 3), "srtt_ms": round(st.smoothed_rtt * 1e3, 2),
        "lost": st.packets_lost, "retransmissions": st.retransmissions,
        "congestion_events": st.congestion_events, "cwnd": st.cwnd}), flush=True)


# ----------------------------------------------------------------------------- orchestration
def run_one(topo: Topology, cc: str, mib: float) -> dict[str, Any]:
    me = os.path.abspath(__file__)
    server = topo.run(topo.server_ns, me, "--child", "server", "--cc", cc,
                      "--server-ip", topo.server_ip)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "READY" not in line:
            err = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"server did not start: {line!r} {err}")
        client = topo.run(topo.client_ns, me, "--child", "client", "--cc", cc,
                          "--mib", str(mib), "--server-ip", topo.server_ip)
        out, err = client.communicate(timeout=300)
        if client.returncode:
            raise RuntimeError(f"client failed: {err}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        srv_out, _ = server.communicate(timeout=30)
        srv = json.loads(srv_out.strip().splitlines()[-1])
        result["exact"] = (srv["received"] == result.pop("bytes")
                           and srv["sha256"] == result.pop("sha256"))
        return result
    finally:
        if server.poll() is None:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=32.0)
    parser.add_argument("--rate-mbit", type=float, default=50.0)
    parser.add_argument("--queue-packets", type=int, default=100)
    parser.add_argument("--controllers", nargs="*", default=["vegas", "newreno"])
    parser.add_argument("--child", choices=["server", "client"])
    parser.add_argument("--cc", default="vegas")
    parser.add_argument("--server-ip", default="")
    args = parser.parse_args()
    if args.child == "server":
        asyncio.run(server_main(args.cc, args.server_ip))
        return
    if args.child == "client":
        asyncio.run(client_main(args.cc, args.mib, args.server_ip))
        return
    sys.path[:0] = [SRC, ROOT]  # ROOT: tests.support.netns is test tooling, not in the package
    from tests.support.netns import ensure_tools

    ok, reason = ensure_tools()
    if not ok:
        print(json.dumps({"skipped": f"needs network namespaces: {reason}"}))
        return
    with Topology(args.rate_mbit, args.queue_packets) as topo:
        for cc in args.controllers:
            before = topo.qdisc_stats()
            result = run_one(topo, cc, args.mib)
            result.update({"rate_mbit": args.rate_mbit, "queue_packets": args.queue_packets,
                           "bottleneck_MBps": args.rate_mbit / 8,
                           "tbf_before": before, "tbf_after": topo.qdisc_stats()})
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
