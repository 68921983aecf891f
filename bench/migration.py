"""The stall after a NAT rebinding, over a real NAT (network namespaces) with a 20 ms RTT.

A client behind the NAT streams data to a server; the NAT forgets its mapping mid-transfer
(`NatTopology.rebind`). From the server's receive timeline and its PathChanged event we
measure the stall: from the first packet on the new path (when validation started) until data
flows again at full rate (bytes received over a sliding window reach 90% of the rate before
the rebinding). The result is reported in seconds and in RTTs; the target is at most
1 RTT + 1 RTO. Needs root (it builds namespaces); prints JSON lines.

Usage: sudo python bench/migration.py [--rebinds 3] [--interval 1.0] [--size-mib 160]
       [--delay-ms 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "src"), ROOT]  # ROOT: tests/support/ is test tooling

from tests.support.netns import NatTopology, ensure_tools  # noqa: E402

PEER = os.path.join(ROOT, "src", "roamlink", "testing", "netpeer.py")


def _stall(timeline: list[list[float]], start: float, rtt: float) -> dict[str, float]:
    """Stall from ``start`` until the windowed rate is back to 90% of the rate before."""
    window = max(4 * rtt, 0.1)
    before = [(t, b) for t, b in timeline if start - 1.0 <= t <= start - 0.05]
    if len(before) < 2:
        return {"stall_s": float("nan")}
    rate = (before[-1][1] - before[0][1]) / max(before[-1][0] - before[0][0], 1e-6)

    def bytes_at(t: float) -> float:
        last = 0.0
        for ts, b in timeline:
            if ts > t:
                break
            last = b
        return last

    t = start
    end = timeline[-1][0]
    while t + window <= end:
        if bytes_at(t + window) - bytes_at(t) >= 0.9 * rate * window:
            return {"stall_s": t - start, "rate_before_mb_s": rate / 1e6}
        t += 0.005
    return {"stall_s": end - start, "rate_before_mb_s": rate / 1e6}


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                             "text": True, "env": env}
    with NatTopology(link_delay_ms=args.delay_ms) as topo:
        server = topo.popen(topo.server_ns, [sys.executable, PEER, "server", topo.server_ip,
                                             "9000"], **pipes)
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        client = topo.popen(topo.client_ns, [sys.executable, PEER, "client", topo.server_ip,
                                             "9000", str(args.size_mib), "0"], **pipes)
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "CONNECTED"

        def rebinder() -> None:
            for _ in range(args.rebinds):
                time.sleep(args.interval)
                topo.rebind()

        thread = threading.Thread(target=rebinder, daemon=True)
        thread.start()
        try:
            client_line = client.stdout.readline()
            server_line = server.stdout.readline()
        finally:
            for proc in (client, server):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
        thread.join(timeout=1)
    result = json.loads(server_line)
    rtt = max(result["min_rtt"], 1e-3)
    rto = rtt * 1.5 + 0.025 + 0.05  # srtt + 4 rttvar + max_ack_delay, rttvar ~ rtt/8, floor
    stalls = []
    for change in result["changes"]:
        if change["event"] != "PathChanged":
            continue
        start = change["at"] - change["validation_ms"] / 1e3
        st = _stall(result["timeline"], start, rtt)
        st.update({"validation_ms": round(change["validation_ms"], 2),
                   "stall_rtts": st["stall_s"] / rtt})
        stalls.append(st)
        print(json.dumps({"rebinding": len(stalls), **{k: round(v, 4) for k, v in st.items()}}),
              flush=True)
    ok = result["sha256"] and json.loads(client_line).get("reply") == "ok"
    values = [s["stall_s"] for s in stalls if s["stall_s"] == s["stall_s"]]
    summary = {
        "summary": "migration_stall", "rtt_ms": round(rtt * 1e3, 2), "rebinds": len(stalls),
        "hash_ok": bool(ok), "bytes": result["bytes"],
        "stall_ms_median": round(statistics.median(values) * 1e3, 2) if values else None,
        "stall_ms_max": round(max(values) * 1e3, 2) if values else None,
        "stall_rtts_median": round(statistics.median(values) / rtt, 2) if values else None,
        "target_ms": round((rtt + rto) * 1e3, 2),
    }
    print(json.dumps(summary), flush=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebinds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rebinds")
    parser.add_argument("--size-mib", type=int, default=160)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    args = parser.parse_args()
    ok, reason = ensure_tools()
    if not ok:
        print(json.dumps({"summary": "migration_stall", "error": reason}))
        return 1
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
