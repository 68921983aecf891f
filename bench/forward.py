"""Throughput of ``roamlink forward`` against a direct roamlink transfer, on loopback, same run.

A download of ``--size-mib`` MiB, three ways, alternating in each round:

- ``direct``: a roamlink server process writes the bytes to a roamlink stream; this process
  reads them with ``roamlink.connect``.
- ``forward``: a TCP server process writes the bytes; ``roamlink serve --forward`` carries
  them over roamlink to ``roamlink forward``, from which this process reads them over TCP
  (what curl does in docs/recipes.md): two extra TCP legs and two bridges.
- ``tcp``: the same TCP server read directly (the ceiling of the TCP legs alone).

Goodput is size / (time from connecting to the last byte); every download's SHA-256 is
checked. Prints one JSON line per download and a summary with medians and the ratio
``forward/direct``.

Usage: python bench/forward.py [--size-mib 32] [--repeat 3] [--timeout 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from _common import SRC, child_setup, emit, machine_info, median, rnd

MiB = 1024 * 1024
_CHUNK = 256 * 1024
HERE = os.path.abspath(__file__)


def _payload(size: int) -> bytes:
    block = hashlib.sha256(b"roamlink forward bench").digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]


# ---------------------------------------------------------------------------- children
async def _tcp_source(size: int) -> None:
    data = _payload(size)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        view = memoryview(data)
        for i in range(0, size, _CHUNK):
            writer.write(view[i:i + _CHUNK])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


async def _roamlink_source(size: int) -> None:
    import roamlink

    data = _payload(size)
    listener = await roamlink.listen("127.0.0.1", 0)
    print(f"PORT {listener.local_addr[1]}", flush=True)

    async def handle(stream: roamlink.Stream) -> None:
        view = memoryview(data)
        for i in range(0, size, _CHUNK):
            stream.write(view[i:i + _CHUNK])
            await stream.drain()
        stream.write_eof()
        await stream.read()
        stream.close()
        await stream.wait_closed()

    async for stream in listener:
        asyncio.create_task(handle(stream))


# ---------------------------------------------------------------------------- clients
async def _read_tcp(port: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_CHUNK)
    digest, n = hashlib.sha256(), 0
    while chunk := await reader.read(_CHUNK):
        digest.update(chunk)
        n += len(chunk)
    writer.close()
    return n, digest.hexdigest()


async def _read_roamlink(port: int) -> tuple[int, str]:
    import roamlink

    stream = await roamlink.connect("127.0.0.1", port)
    digest, n = hashlib.sha256(), 0
    while chunk := await stream.read(_CHUNK):
        digest.update(chunk)
        n += len(chunk)
    stream.close()
    await stream.wait_closed()
    return n, digest.hexdigest()


# ---------------------------------------------------------------------------- orchestration
def _spawn(argv: list[str], procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    procs.append(proc)
    return proc


def _first_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.startswith("PORT "):
        return int(line.split()[1])
    return int(json.loads(line)["port"])  # a roamlink CLI --json "listening" report


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MiB
    expected = hashlib.sha256(_payload(size)).hexdigest()
    procs: list[subprocess.Popen[str]] = []
    me = [sys.executable, HERE, "--size-mib", str(args.size_mib)]
    try:
        tcp_port = _first_port(_spawn([*me, "--role", "tcp-source"], procs))
        rl_port = _first_port(_spawn([*me, "--role", "roamlink-source"], procs))
        cli = [sys.executable, "-m", "roamlink", "--json"]
        serve_port = _first_port(_spawn([*cli, "serve", "0", "--forward",
                                         f"127.0.0.1:{tcp_port}"], procs))
        fwd_port = _first_port(_spawn([*cli, "forward", "0", f"127.0.0.1:{serve_port}"],
                                      procs))
        readers = {"direct": lambda: _read_roamlink(rl_port),
                   "forward": lambda: _read_tcp(fwd_port),
                   "tcp": lambda: _read_tcp(tcp_port)}
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for round_no in range(1, args.repeat + 1):
            for name, read in readers.items():
                start = time.monotonic()
                n, sha = await asyncio.wait_for(read(), args.timeout)
                elapsed = time.monotonic() - start
                ok = n == size and sha == expected
                rate = size / elapsed / 1e6
                if ok:
                    rates[name].append(rate)
                emit({"event": "download", "variant": name, "round": round_no, "bytes": n,
                      "seconds": rnd(elapsed, 3), "mb_per_s": rnd(rate), "hash_ok": ok})
        medians = {name: rnd(median(values)) for name, values in rates.items()}
        direct, forward = medians["direct"], medians["forward"]
        return {"event": "summary", "size_mib": args.size_mib, "repeat": args.repeat,
                "mb_per_s": medians,
                "ratio_forward_to_direct": rnd(forward / direct, 3)
                if direct and forward else None,
                "all_hashes_ok": all(len(v) == args.repeat for v in rates.values()),
                "machine": machine_info()}
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--role", choices=("tcp-source", "roamlink-source"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        child_setup(args.timeout)  # never outlive the timeout or the orchestrator
    if args.role == "tcp-source":
        asyncio.run(_tcp_source(args.size_mib * MiB))
        return 0
    if args.role == "roamlink-source":
        asyncio.run(_roamlink_source(args.size_mib * MiB))
        return 0
    summary = asyncio.run(_bench(args))
    emit(summary)
    return 0 if summary["all_hashes_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
