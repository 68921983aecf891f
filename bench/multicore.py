"""Worker processes: what ``run_server(workers=2)`` buys over ``workers=1``, in one run.

Two measurements, each alternating the worker counts in the same run (the machine is shared,
so only same-run ratios mean something):

1. goodput: ``--clients`` client processes each push data over ``--streams`` connections
   for ``--seconds``; the figure is the sum of what the server received per second. The CPU time
   of the server (supervisor + workers) and of the clients is reported beside it: on a
   machine with few cores the clients compete with the workers for them.
2. echo: ``--clients`` client processes hold ``--connections`` connections between them and
   run 64-byte request/response exchanges on all of them for ``--seconds``; the figure is
   requests per second, with the spread of connections over the workers.

Usage: python bench/multicore.py [--workers 1,2] [--clients 2] [--streams 4] [--seconds 5]
       [--connections 1000] [--work 0] [--rounds 1] [--only goodput,echo] [--quick]
Prints one JSON line per run and a summary line with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import roamlink  # noqa: E402
from roamlink.api.workers import ServerInfo, worker_index  # noqa: E402

SCRIPT = os.path.abspath(__file__)
CHUNK = os.urandom(64 * 1024)
REQUEST = b"x" * 63 + b"\n"


# ------------------------------------------------------------------ server process
#: SHA-256 passes over every received byte: stands for an application's work per byte
WORK = int(os.environ.get("MULTICORE_WORK", "0"))


async def sink(stream: roamlink.Stream) -> None:
    received = 0
    while chunk := await stream.read(1 << 20):
        received += len(chunk)
        for _ in range(WORK):
            hashlib.sha256(chunk).digest()
    stream.write(json.dumps({"bytes": received, "worker": worker_index()}).encode() + b"\n")
    stream.write_eof()
    await stream.drain()


async def echo(stream: roamlink.Stream) -> None:
    stream.write(f"{worker_index()}\n".encode())
    while chunk := await stream.read(65536):
        stream.write(chunk)
    stream.write_eof()


def run_server_role(mode: str, workers: str) -> None:
    """``workers`` is a count, or a count + "h": the filter off, workers hand packets over."""
    def ready(info: ServerInfo) -> None:
        print(json.dumps({"port": info.address[1], "steering": info.kernel_steering}),
              flush=True)

    handler = sink if mode == "sink" else echo
    roamlink.run_server(handler, "127.0.0.1", 0, workers=int(workers.rstrip("h")),
                        kernel_steering=not workers.endswith("h"), on_ready=ready,
                        config=roamlink.Config(idle_timeout=60.0))


# ------------------------------------------------------------------ client processes
async def goodput_client(port: int, seconds: float, streams: int) -> dict[str, Any]:
    """Push data on ``streams`` connections at once (several, so that the kernel's hash of
    their handshakes spreads them over the workers)."""
    async def push(stream: roamlink.Stream, deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            stream.write(CHUNK)
            await stream.drain()
        stream.write_eof()
        reply: dict[str, Any] = json.loads(await stream.read())
        await stream.wait_closed()
        return reply

    opened = await asyncio.gather(*(roamlink.connect("127.0.0.1", port)
                                    for _ in range(streams)))
    start = time.monotonic()
    replies = await asyncio.gather(*(push(s, start + seconds) for s in opened))
    elapsed = time.monotonic() - start
    return {"bytes": sum(r["bytes"] for r in replies), "seconds": elapsed,
            "workers": [r["worker"] for r in replies]}


async def echo_client(port: int, connections: int, seconds: float) -> dict[str, Any]:
    t0 = time.monotonic()
    sem = asyncio.Semaphore(100)

    async def open_one() -> tuple[roamlink.Stream, int]:
        async with sem:
            stream = await roamlink.connect("127.0.0.1", port)
            line = b""
            while not line.endswith(b"\n"):
                line += await stream.read(1)
            return stream, int(line)

    opened = await asyncio.gather(*(open_one() for _ in range(connections)))
    open_seconds = time.monotonic() - t0
    requests = 0
    deadline = time.monotonic() + seconds

    async def exchange(stream: roamlink.Stream) -> None:
        nonlocal requests
        while time.monotonic() < deadline:
            stream.write(REQUEST)
            await stream.readexactly(len(REQUEST))
            requests += 1

    start = time.monotonic()
    await asyncio.gather(*(exchange(s) for s, _ in opened))
    elapsed = time.monotonic() - start
    for stream, _ in opened:
        stream.abort()
    spread = collections.Counter(w for _, w in opened)
    return {"requests": requests, "seconds": elapsed, "open_seconds": open_seconds,
            "spread": {str(k): v for k, v in sorted(spread.items())}}


# ------------------------------------------------------------------ driver
def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _spawn(*args: str, work: int = 0) -> subprocess.Popen[str]:
    env = dict(os.environ, MULTICORE_WORK=str(work))
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, text=True,
                            env=env)


def measure(kind: str, workers: str, args: argparse.Namespace) -> dict[str, Any]:
    cpu0 = _children_cpu()
    server = _spawn("--role", "server", "--mode", "sink" if kind == "goodput" else "echo",
                    "--workers", workers, work=args.work)
    assert server.stdout is not None
    info = json.loads(server.stdout.readline())
    port = str(info["port"])
    try:
        if kind == "goodput":
            clients = [_spawn("--role", "goodput-client", "--port", port, "--seconds",
                              str(args.seconds), "--streams", str(args.streams))
                       for _ in range(args.clients)]
        else:
            share = args.connections // args.clients
            clients = [_spawn("--role", "echo-client", "--port", port, "--connections",
                              str(share), "--seconds", str(args.seconds))
                       for _ in range(args.clients)]
        results = []
        for proc in clients:
            out, _ = proc.communicate(timeout=args.seconds * 4 + 120)
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu1 = _children_cpu()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    cpu2 = _children_cpu()
    row: dict[str, Any] = {"bench": kind, "workers": int(workers.rstrip("h")),
                           "kernel_steering": info["steering"],
                           "clients": args.clients, "work": args.work,
                           "client_cpu_s": round(cpu1 - cpu0, 2),
                           "server_cpu_s": round(cpu2 - cpu1, 2)}
    if kind == "goodput":
        total = sum(r["bytes"] / r["seconds"] for r in results)
        per_worker = collections.Counter(w for r in results for w in r["workers"])
        row.update(goodput_MB_s=round(total / 1e6, 1),
                   MB_per_server_cpu_s=round(sum(r["bytes"] for r in results) / 1e6
                                             / max(row["server_cpu_s"], 0.01), 1),
                   streams_per_worker=dict(sorted(per_worker.items())))
    else:
        rate = sum(r["requests"] / r["seconds"] for r in results)
        spread: collections.Counter[str] = collections.Counter()
        for r in results:
            spread.update(r["spread"])
        requests = sum(r["requests"] for r in results)
        row.update(connections=args.connections, requests_per_s=round(rate),
                   requests_per_server_cpu_s=round(requests / max(row["server_cpu_s"], 0.01)),
                   open_seconds=round(max(r["open_seconds"] for r in results), 2),
                   spread=dict(sorted(spread.items())))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", default="driver",
                        choices=["driver", "server", "goodput-client", "echo-client"])
    parser.add_argument("--mode", default="sink")
    parser.add_argument("--workers", default="1,2",
                        help="worker counts to alternate; '2h': 2 workers, filter off "
                             "(hand-over between workers)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--streams", type=int, default=4,
                        help="connections per goodput client")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--work", type=int, default=0,
                        help="goodput: SHA-256 passes the server makes over every byte (an "
                             "application's work, which is what more workers spread)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--port", type=int)
    parser.add_argument("--only", default="goodput,echo")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args()
    if args.role == "server":
        run_server_role(args.mode, args.workers)
        return
    if args.role == "goodput-client":
        print(json.dumps(asyncio.run(goodput_client(args.port, args.seconds, args.streams))))
        return
    if args.role == "echo-client":
        print(json.dumps(asyncio.run(echo_client(args.port, args.connections, args.seconds))))
        return
    if args.quick:
        args.seconds, args.connections = 1.0, 100
    counts = args.workers.split(",")
    summary: dict[str, Any] = {"bench": "summary", "cpus": os.cpu_count()}
    for kind in args.only.split(","):
        rows: dict[str, list[dict[str, Any]]] = {w: [] for w in counts}
        for _ in range(args.rounds):  # alternate: 1, 2, 1, 2, ...
            for w in counts:
                rows[w].append(measure(kind, w, args))
        key = "goodput_MB_s" if kind == "goodput" else "requests_per_s"
        best = {w: max(r[key] for r in rs) for w, rs in rows.items()}
        summary[kind] = best
        for other in counts[1:]:
            if best[counts[0]]:
                summary[f"{kind}_ratio_{other}_vs_{counts[0]}"] = round(
                    best[other] / best[counts[0]], 2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
