"""Request/response latency over loopback: 64-byte messages, one connection, two processes.

The client sends a message, waits for the server's 64-byte echo, and times each round trip
(after a warm-up). roamlink (encrypted, the default), roamlink with ``insecure_plaintext``
("roamlink-plain"), asyncio TCP, "udp" and "udp-sealed" are measured in the same invocation.
"udp" is a bare asyncio UDP echo with the same task structure and no protocol at all: the floor
of any UDP transport on this event loop. "udp-sealed" is the same echo with roamlink's packet
protection on every datagram (sealed by the sender, opened by the receiver: four ChaCha20-Poly1305
calls per round trip, as roamlink makes): the floor of an encrypted UDP transport here.

``--pin CPU`` runs both processes on that one CPU. Unpinned, each round trip pays two wake-ups
of a process on the other CPU, which on a virtual machine can cost more than everything the
transports do (docs/performance.md, "Round trips on this machine"); pinned, the figure is the
CPU both ends spend per round trip, plus two context switches.

Usage: python bench/latency.py [--count 5000] [--warmup 500] [--size 64]
       [--only roamlink,roamlink-plain,tcp,udp,udp-sealed] [--uvloop] [--pin CPU] [--quick]
       [--timeout s]
Prints one JSON line per transport (p50/p99 in microseconds) and a final summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from typing import Any

from _common import (
    add_common_args,
    child_setup,
    emit,
    machine_info,
    percentile,
    rnd,
    run_loop,
    run_pair,
    say_port,
    say_result,
    stream_connect,
    stream_server,
)

SCRIPT = os.path.abspath(__file__)


async def server(kind: str, size: int) -> None:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def echo(stream: Any) -> None:
        n = 0
        try:
            while True:
                msg = await stream.readexactly(size)
                stream.write(msg)
                await stream.drain()
                n += 1
        except Exception:  # end of stream (IncompleteRead) or reset: the client is done
            pass
        finally:
            stream.close()
            if not done.done():
                done.set_result(n)

    port, close = await stream_server(kind, echo)
    say_port(port)
    echoed = await done
    await close()
    say_result({"echoed": echoed})


async def client(kind: str, port: int, size: int, count: int, warmup: int) -> None:
    stream = await stream_connect(kind, port)
    msg = os.urandom(size)
    clock = time.perf_counter_ns
    samples: list[int] = []
    for i in range(warmup + count):
        t0 = clock()
        stream.write(msg)
        await stream.drain()
        reply = await stream.readexactly(size)
        t1 = clock()
        if reply != msg:
            raise RuntimeError("echo differs from request")
        if i >= warmup:
            samples.append(t1 - t0)
    stream.write_eof()
    stream.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream.wait_closed(), 5)
    samples.sort()
    us = [s / 1e3 for s in samples]
    say_result({"round_trips": len(us), "p50_us": rnd(percentile(us, 50), 1),
                "p90_us": rnd(percentile(us, 90), 1), "p99_us": rnd(percentile(us, 99), 1),
                "min_us": rnd(us[0], 1), "max_us": rnd(us[-1], 1),
                "mean_us": rnd(sum(us) / len(us), 1),
                **({"client_cpus": sorted(os.sched_getaffinity(0))}
                   if hasattr(os, "sched_getaffinity") else {})})


async def orchestrate(args: argparse.Namespace) -> int:
    loop_name = "uvloop" if args.uvloop else "asyncio"
    p50: dict[str, float | None] = {}
    p99: dict[str, float | None] = {}
    for kind in [k.strip() for k in args.only.split(",") if k.strip()]:
        common = ["--transport", kind, "--size", str(args.size)]
        if args.uvloop:
            common.append("--uvloop")
        if args.pin is not None:
            common += ["--pin", str(args.pin)]
        line: dict[str, Any] = {"bench": "latency", "transport": kind, "loop": loop_name,
                                "message_bytes": args.size, "warmup": args.warmup}
        try:
            _, result = await asyncio.wait_for(run_pair(
                SCRIPT, ["--role", "server", *common],
                ["--role", "client", *common, "--count", str(args.count),
                 "--warmup", str(args.warmup)], args.timeout), args.timeout + 30)
            line.update(result)
            line["ok"] = result["round_trips"] == args.count
        except Exception as exc:  # report and go on with the next transport
            line["error"] = f"{type(exc).__name__}: {exc}"
        p50[kind] = line.get("p50_us")
        p99[kind] = line.get("p99_us")
        emit(line)
    summary: dict[str, Any] = {"bench": "latency", "summary": "latency", "loop": loop_name,
                               "round_trips": args.count, "p50_us": p50, "p99_us": p99,
                               **machine_info()}
    if args.pin is not None:
        summary["pinned_cpu"] = args.pin
    if os.environ.get("GLIBC_TUNABLES"):
        # e.g. glibc.malloc.mmap_threshold: asyncio's 256 KiB reads go through mmap without
        # it (docs/performance.md, "Round trips on this machine"); say how this run was made
        summary["glibc_tunables"] = os.environ["GLIBC_TUNABLES"]
    if p50.get("roamlink") and p50.get("tcp"):
        summary["p50_ratio_roamlink_to_tcp"] = rnd(p50["roamlink"] / p50["tcp"], 3)  # type: ignore[operator]
    if p50.get("tcp"):
        summary["p50_ratio_to_tcp"] = {k: rnd(v / p50["tcp"], 3)  # type: ignore[operator]
                                       for k, v in p50.items() if v and k != "tcp"}
    if p50.get("roamlink") and p50.get("roamlink-plain"):
        summary["p50_encryption_cost_us"] = rnd(
            p50["roamlink"] - p50["roamlink-plain"], 1)  # type: ignore[operator]
    if p50.get("roamlink") and p50.get("udp-sealed"):
        # what the protocol itself adds to an encrypted round trip, over sealed bare UDP
        summary["p50_protocol_cost_us"] = rnd(
            p50["roamlink"] - p50["udp-sealed"], 1)  # type: ignore[operator]
    emit(summary)
    return sum(1 for k in p50 if p50[k] is None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--count", type=int, default=None, help="timed round trips (5000)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed round trips (500)")
    parser.add_argument("--size", type=int, default=64, help="message bytes")
    parser.add_argument("--only", default="roamlink,roamlink-plain,tcp,udp,udp-sealed")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any transport failed (a smoke test: never on timing)")
    add_common_args(parser, timeout=120)
    parser.add_argument("--pin", type=int, default=None, metavar="CPU",
                        help="run both processes on this one CPU (Linux)")
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = 200 if args.quick else 5000
    if args.warmup is None:
        args.warmup = 20 if args.quick else 500
    if args.pin is not None and not hasattr(os, "sched_setaffinity"):
        parser.error("--pin needs os.sched_setaffinity (Linux)")
    if args.role:
        child_setup(args.timeout)
        if args.pin is not None:
            os.sched_setaffinity(0, {args.pin})
        if args.role == "server":
            run_loop(server(args.transport, args.size), args.uvloop)
        else:
            run_loop(client(args.transport, args.port, args.size, args.count, args.warmup),
                     args.uvloop)
        return 0
    failed = asyncio.run(orchestrate(args))
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
