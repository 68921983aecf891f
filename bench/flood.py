"""SYN flood: does a genuine client still get in, and how fast does it move data?

A server (child process) listens on 127.0.0.1. An attacker sends forged SYNs (full-size,
each with a fresh connection ID, never answered; as the attacker knows the server's public key,
each is a genuine Noise message 1 whose mac1 verifies -- the worst case, built before the flood
starts) at ``--rate`` per second from ``--ports``
source ports for ``--flood`` seconds. A genuine client opens a connection and sends for
``--transfer`` seconds, again and again: before the flood (the baseline), during it (the
first one arrives mid-flood), and after it; the rates compared are medians. The
server reports its resident memory and listener counters every quarter second.

Printed (JSON lines): connect time during the flood (target: < 1 s), goodput during the
flood as a fraction of the baseline (target: >= 0.5), the server's memory growth during the
flood (target: <= 64 MiB for 20,000 forged SYNs) and after it (it must come back down), and
the counters (RETRYs sent, half-open handshakes at most, SYNs dropped).

Usage: python bench/flood.py [--rate 2000] [--ports 16] [--flood 10] [--transfer 1.5]
       [--repeat 2] [--retry-threshold 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import socket
import struct
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from _common import rss_kib  # noqa: E402  (bench/ is the script's own folder)

import roamlink  # noqa: E402
from roamlink.testing.packets import flood_syn  # noqa: E402

MiB = 1024 * 1024



# ------------------------------------------------------------------ the server (child)
async def serve(retry_threshold: int | None) -> None:
    config = roamlink.Config(retry_threshold=retry_threshold)
    listener = await roamlink.listen("127.0.0.1", 0, config=config)

    async def sink(stream: roamlink.Stream) -> None:
        with contextlib.suppress(roamlink.RoamlinkError):
            digest = hashlib.sha256()
            total = 0
            while data := await stream.read(1 << 20):
                digest.update(data)
                total += len(data)
            stream.write(struct.pack("!Q", total) + digest.digest())
            stream.write_eof()
            await stream.wait_closed()

    async def accept() -> None:
        async for stream in listener:
            asyncio.get_running_loop().create_task(sink(stream))

    asyncio.get_running_loop().create_task(accept())
    print(json.dumps({"event": "port", "port": listener.local_addr[1],
                      "key": listener.public_key}), flush=True)
    disp = listener.endpoint.dispatcher
    half_open_max = 0
    while True:
        for _ in range(5):
            await asyncio.sleep(0.05)
            half_open_max = max(half_open_max, len(disp.half_open))
        stats = dataclasses.asdict(disp.stats)
        rss = rss_kib() * 1024
        print(json.dumps({"event": "server", "rss": rss, "half_open": len(disp.half_open),
                          "half_open_max": half_open_max,
                          "connections": len(listener.endpoint.live_connections),
                          **stats}), flush=True)


# ------------------------------------------------------------------ the orchestrator
class Server:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.reports: list[tuple[float, dict[str, Any]]] = []
        self.port = 0
        self.key = ""
        self._port = asyncio.get_running_loop().create_future()

    async def follow(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if line.get("event") == "port" and not self._port.done():
                    self.key = line["key"]
                    self._port.set_result(line["port"])
                elif line.get("event") == "server":
                    self.reports.append((time.monotonic(), line))

    async def started(self) -> int:
        self.port = await asyncio.wait_for(self._port, 30)
        return self.port

    def latest(self) -> dict[str, Any]:
        return self.reports[-1][1] if self.reports else {}

    def during(self, start: float, end: float) -> list[dict[str, Any]]:
        return [r for t, r in self.reports if start <= t <= end]


async def transfer(port: int, seconds: float, key: str) -> dict[str, float]:
    """Connect, send for ``seconds``, then wait for the server's count and hash; the rate is
    what the server confirmed over the time from the first byte to its reply."""
    rng = random.Random(int(seconds * 1000))
    chunk = rng.randbytes(256 * 1024)
    digest = hashlib.sha256()
    t0 = time.monotonic()
    stream = await asyncio.wait_for(roamlink.connect("127.0.0.1", port, server_key=key), 30)
    t1 = time.monotonic()
    total = 0
    while time.monotonic() - t1 < seconds:
        stream.write(chunk)
        digest.update(chunk)
        total += len(chunk)
        await stream.drain()
    stream.write_eof()
    reply = await asyncio.wait_for(stream.readexactly(40), 120)
    t2 = time.monotonic()
    got, their_digest = struct.unpack("!Q", reply[:8])[0], reply[8:]
    exact = got == total and their_digest == digest.digest()
    retries = stream.stats().handshake_retries
    stream.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream.wait_closed(), 10)
    return {"connect_s": t1 - t0, "transfer_s": t2 - t1, "mb_per_s": total / (t2 - t1) / 1e6,
            "exact": float(exact), "handshake_retries": float(retries)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def forge(key: str, count: int) -> list[bytes]:
    """``count`` forged SYNs for the server with public key ``key``: each a real Noise
    message 1 from a throw-away client key, a fresh source CID each."""
    raw = base64.b64decode(key)
    rng = random.Random(1)
    return [flood_syn(raw, rng.randbytes(8)) for _ in range(count)]


async def flood(port: int, rate: float, ports: int, seconds: float, sent: list[int],
                syns: list[bytes]) -> None:
    """Forged SYNs from ``ports`` source ports."""
    socks = []
    for _ in range(ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) - sent[0]
            for _ in range(max(due, 0)):
                syn = syns[sent[0] % len(syns)]
                with contextlib.suppress(BlockingIOError):
                    socks[sent[0] % ports].sendto(syn, ("127.0.0.1", port))
                sent[0] += 1
            await asyncio.sleep(0.005)
    finally:
        for s in socks:
            s.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "server",
           "--retry-threshold", str(args.retry_threshold)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env,
                                                start_new_session=True)
    server = Server(proc)
    follower = asyncio.create_task(server.follow())
    seconds = args.transfer
    try:
        port = await server.started()
        await transfer(port, 0.3, server.key)  # warm-up
        before = [await transfer(port, seconds, server.key) for _ in range(2)]
        await asyncio.sleep(0.5)
        rss_before = server.latest().get("rss", 0)
        syns = forge(server.key, int(args.rate * args.flood))  # before the clock starts
        floods = []
        for _ in range(args.repeat):
            sent = [0]
            flood_start = time.monotonic()
            attacker = asyncio.create_task(flood(port, args.rate, args.ports, args.flood, sent,
                                                  syns))
            await asyncio.sleep(min(args.flood / 4, 2.0))  # the genuine client comes mid-flood
            during = []
            while time.monotonic() - flood_start + seconds + 0.5 < args.flood:
                during.append(await transfer(port, seconds, server.key))  # all within the flood
            await attacker
            flood_end = time.monotonic()
            await asyncio.sleep(1.0)
            # after the flood: the baseline again
            before.append(await transfer(port, seconds, server.key))
            await asyncio.sleep(max(2.0, 3 * roamlink.Config().half_open_timeout))
            reports = server.during(flood_start, flood_end + 0.5)
            floods.append({"sent": sent[0], "during": during, "flood_s": flood_end - flood_start,
                           "rss_peak": max([r["rss"] for r in reports] or [0]),
                           "half_open_max": max([r["half_open_max"] for r in reports] or [0]),
                           "rss_after": server.latest().get("rss", 0)})
        settled = server.latest()
        baseline = _median([b["mb_per_s"] for b in before])
        flooded = _median([d["mb_per_s"] for f in floods for d in f["during"]])
        first = floods[0]
        rss_peak = max(f["rss_peak"] for f in floods)
        connects = [d["connect_s"] for f in floods for d in f["during"]]
        result = {
            "event": "flood", "forged_syns": sum(f["sent"] for f in floods),
            "floods": args.repeat, "rate_per_s": args.rate,
            "source_ports": args.ports, "flood_s": round(first["flood_s"], 2),
            "retry_threshold": args.retry_threshold,
            "connects_during_flood": len(connects),
            "connect_during_flood_max_s": round(max(connects), 4),
            "handshake_retries": sum(int(d["handshake_retries"]) for f in floods
                                     for d in f["during"]),
            "baseline_mb_per_s": round(baseline, 2),
            "flooded_mb_per_s": round(flooded, 2),
            "flooded_ratio": round(flooded / baseline, 3),
            "all_exact": all(t["exact"] for t in (*before, *(d for f in floods
                                                                for d in f["during"]))),
            "server_rss_before_mib": round(rss_before / MiB, 1),
            "server_rss_peak_mib": [round(f["rss_peak"] / MiB, 1) for f in floods],
            "server_rss_growth_mib": round((rss_peak - rss_before) / MiB, 1),
            "server_rss_after_mib": [round(f["rss_after"] / MiB, 1) for f in floods],
            "half_open_max": max(f["half_open_max"] for f in floods),
            "half_open_after": settled.get("half_open"),
            "retries_sent": settled.get("retries_sent"),
            "retry_tokens_valid": settled.get("retry_tokens_valid"),
            "dropped_half_open_full": settled.get("dropped_half_open_full"),
            "dropped_per_source": settled.get("dropped_per_source"),
            "connections_accepted": settled.get("connections_accepted"),
        }
        result["ok"] = bool(result["all_exact"]
                            and max(connects) < 1.0
                            and result["flooded_ratio"] >= 0.5
                            and result["server_rss_growth_mib"] <= 64
                            and result["half_open_after"] == 0)
        return result
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
        follower.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "server"), default="bench",
                        help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=2000.0, help="forged SYNs per second")
    parser.add_argument("--ports", type=int, default=16, help="attacker source ports")
    parser.add_argument("--flood", type=float, default=10.0, help="flood duration, seconds")
    parser.add_argument("--transfer", type=float, default=1.5,
                        help="seconds each genuine transfer sends (several per flood)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="floods in a row (memory must not grow from one to the next)")
    parser.add_argument("--retry-threshold", default="64",
                        help="the server's Config.retry_threshold ('none': never retry)")
    args = parser.parse_args()
    threshold = None if args.retry_threshold.lower() == "none" else int(args.retry_threshold)
    if args.role == "server":
        asyncio.run(serve(threshold))
        return 0
    args.retry_threshold = threshold
    result = asyncio.run(main_async(args))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
