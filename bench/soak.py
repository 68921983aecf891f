"""Soak: many connections through a lossy, rebinding relay for a long time, every byte checked.

32 clients (``--connections``) connect through ``roamlink relay`` (a child process) to an echo
server, with 5% loss each way, delay jitter, and a NAT rebinding of every client every 2 s.
Each client streams bytes from its own seeded generator and checks every echoed byte against
the same generator (and a SHA-256 of each direction at the end). Once a second the script
samples its resident memory (server and clients live in this process). It prints one JSON
line per ``--report`` seconds and a summary: bytes moved, migrations the server saw, errors
(must be 0) and the RSS slope after warm-up (must be flat). Exit status 1 when errors > 0,
a transfer is not exact, or the slope exceeds ``--max-rss-slope``.

Usage: python bench/soak.py [--minutes 10 | --seconds 60] [--connections 32] [--loss 5%]
       [--jitter 2ms] [--delay 5ms] [--rebind-every 2s] [--seed 1] [--tracemalloc N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import random
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

from _common import rss_kib  # noqa: E402  (bench/ is the script's own folder)

import roamlink  # noqa: E402

BLOCK = 16 * 1024
#: Bytes a client may have sent but not yet seen echoed: without such a window the writers
#: run ahead into their send buffers (4 MiB each), memory is all buffers, and the final
#: drain after the stop takes minutes.
WINDOW = 64 * 1024
MiB = 1024 * 1024



def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) samples, in MiB per minute."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    sxy = sum((t - mx) * (v - my) for t, v in samples)
    return (sxy / sxx) * 60 / MiB if sxx else 0.0


@dataclass
class Totals:
    sent: int = 0
    echoed: int = 0
    errors: list[str] = field(default_factory=list)
    exact: int = 0
    migrations: int = 0
    server_streams: list[roamlink.Stream] = field(default_factory=list)


class Client:
    """One connection: a writer of seeded bytes and a reader checking their echo."""

    def __init__(self, index: int, seed: int, totals: Totals) -> None:
        self.index = index
        self.seed = seed
        self.totals = totals
        self.sent_hash = hashlib.sha256()
        self.echo_hash = hashlib.sha256()
        self.sent = 0
        self.echoed = 0
        self.room = asyncio.Event()

    async def run(self, port: int, stop: asyncio.Event) -> None:
        stream = await roamlink.connect("127.0.0.1", port)
        try:
            writer = asyncio.create_task(self._write(stream, stop))
            await self._read(stream)
            await writer
            if self.echoed != self.sent:
                raise AssertionError(f"echoed {self.echoed} of {self.sent} bytes")
            if self.sent_hash.digest() != self.echo_hash.digest():
                raise AssertionError("SHA-256 of the echo differs from what was sent")
            self.totals.exact += 1
        finally:
            stream.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.wait_closed(), 15)

    async def _write(self, stream: roamlink.Stream, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed)
        while not stop.is_set():
            if self.sent - self.echoed >= WINDOW:
                self.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.room.wait(), 1.0)
                continue
            block = rng.randbytes(BLOCK)
            stream.write(block)
            self.sent_hash.update(block)
            self.sent += len(block)
            self.totals.sent += len(block)
            await stream.drain()
        stream.write_eof()

    async def _read(self, stream: roamlink.Stream) -> None:
        rng = random.Random(self.seed)
        expected = bytearray()
        while True:
            data = await stream.read(65536)
            if not data:
                return
            while len(expected) < len(data):
                expected += rng.randbytes(BLOCK)
            if expected[:len(data)] != data:
                raise AssertionError(f"echo differs from the sent bytes near offset "
                                     f"{self.echoed}")
            del expected[:len(data)]
            self.echo_hash.update(data)
            self.echoed += len(data)
            self.totals.echoed += len(data)
            self.room.set()


async def echo(stream: roamlink.Stream, totals: Totals) -> None:
    totals.server_streams.append(stream)
    try:
        async with stream:
            while data := await stream.read(65536):
                stream.write(data)
                await stream.drain()
            stream.write_eof()
    except Exception as exc:  # counted: the soak's verdict
        totals.errors.append(f"server stream {stream.connection_id}: {exc!r}")


async def start_relay(args: argparse.Namespace, target: int) -> tuple[
        asyncio.subprocess.Process, int, dict[str, Any]]:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "roamlink", "--json", "relay", "127.0.0.1:0",
           f"127.0.0.1:{target}", "--loss", args.loss, "--jitter", args.jitter,
           "--delay", args.delay, "--rebind-every", args.rebind_every,
           "--seed", str(args.seed), "--interval", "1"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env,
                                                start_new_session=True)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    first = json.loads(line)
    if first.get("event") != "listening":
        raise RuntimeError(f"relay did not start: {line!r}")
    counters: dict[str, Any] = {}

    async def follow() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                counters.update(json.loads(raw))

    asyncio.get_running_loop().create_task(follow())
    return proc, int(first["port"]), counters


async def soak(args: argparse.Namespace) -> int:
    totals = Totals()
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    warmup = min(max(10.0, duration * 0.25), duration / 2)
    listener = await roamlink.listen("127.0.0.1", 0)

    async def accept() -> None:
        async for stream in listener:
            asyncio.get_running_loop().create_task(echo(stream, totals))

    acceptor = asyncio.create_task(accept())
    relay, relay_port, relay_counters = await start_relay(args, listener.local_addr[1])
    stop = asyncio.Event()
    clients = [Client(i, args.seed * 1000 + i, totals) for i in range(args.connections)]
    tasks = [asyncio.create_task(c.run(relay_port, stop)) for c in clients]
    start = time.monotonic()
    samples: list[tuple[float, int]] = []
    last_report = start
    try:
        baseline = None
        while (elapsed := time.monotonic() - start) < duration:
            await asyncio.sleep(1.0)
            samples.append((elapsed, rss_kib() * 1024))
            if args.tracemalloc and baseline is None and elapsed >= warmup:
                gc.collect()
                baseline = tracemalloc.take_snapshot()
            failed = [t for t in tasks if t.done() and t.exception() is not None]
            if failed:
                break  # a connection died: stop early, the summary says why
            if time.monotonic() - last_report >= args.report:
                last_report = time.monotonic()
                print(json.dumps({"event": "progress", "seconds": round(elapsed, 1),
                                  "bytes_echoed": totals.echoed,
                                  "rss_mib": round(samples[-1][1] / MiB, 1),
                                  "relay_rebinds": relay_counters.get("rebinds")}),
                      flush=True)
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
            totals.errors.append("a connection did not finish within 60 s after the stop")
        for i, task in enumerate(tasks):
            if task in done and not task.cancelled() and task.exception() is not None:
                totals.errors.append(f"client {i}: {task.exception()!r}")
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            relay.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay.wait(), 10)
        acceptor.cancel()
        listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), 15)
    if args.tracemalloc and baseline is not None:
        gc.collect()
        growth = tracemalloc.take_snapshot().compare_to(baseline, "traceback")
        for stat in growth[:args.tracemalloc]:  # where the memory that stayed was allocated
            print(json.dumps({"event": "growth", "kib": round(stat.size_diff / 1024, 1),
                              "blocks": stat.count_diff,
                              "where": stat.traceback.format()[-12:]}), flush=True)
    totals.migrations = sum(s.stats().path_changes for s in totals.server_streams)
    elapsed = time.monotonic() - start
    steady = [(t, v) for t, v in samples if t >= warmup]
    slope = slope_per_minute(steady)
    summary = {
        "event": "summary", "seconds": round(elapsed, 1), "connections": args.connections,
        "loss": args.loss, "jitter": args.jitter, "rebind_every": args.rebind_every,
        "bytes_sent": totals.sent, "bytes_echoed": totals.echoed,
        "goodput_mbit_s": round(totals.echoed * 8 / max(elapsed, 1e-9) / 1e6, 2),
        "exact_connections": totals.exact, "migrations": totals.migrations,
        "relay_rebinds": relay_counters.get("rebinds"),
        "relay_dropped_loss": relay_counters.get("dropped_loss"),
        "errors": len(totals.errors), "error_messages": totals.errors[:10],
        "rss_start_mib": round(samples[0][1] / MiB, 1) if samples else None,
        "rss_end_mib": round(samples[-1][1] / MiB, 1) if samples else None,
        "rss_warmup_s": round(warmup, 1),
        "rss_slope_mib_per_min": round(slope, 3),
        "max_rss_slope_mib_per_min": args.max_rss_slope,
    }
    print(json.dumps(summary), flush=True)
    ok = (not totals.errors and totals.exact == args.connections
          and slope <= args.max_rss_slope and totals.migrations > 0)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=None,
                        help="duration in seconds (overrides --minutes)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--loss", default="5%")
    parser.add_argument("--jitter", default="2ms")
    parser.add_argument("--delay", default="5ms")
    parser.add_argument("--rebind-every", default="2s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=float, default=10.0,
                        help="seconds between progress lines")
    parser.add_argument("--max-rss-slope", type=float, default=2.0,
                        help="MiB per minute after warm-up above which the soak fails")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                        help="print the N call sites whose memory grew most after warm-up "
                             "(slow; pure-Python frames only)")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(12)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
