"""One-way bulk transfer over loopback between two processes: roamlink vs asyncio TCP.

Both run in the same invocation, so the ratio is measured in one run. The receiver (a child
process) times from the moment it accepts the connection to the last byte, checks the byte
count and SHA-256, and reports; the sender is this process.

Usage: python bench/bulk.py [--size-mib 64] [--repeat 1] [--only roamlink,tcp] [--uvloop]
Prints one JSON line per run and a final summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

MiB = 1024 * 1024
CHUNK = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))  # run from a checkout without installing


def _payload(size: int) -> bytes:
    block = hashlib.sha256(b"roamlink-bench").digest() * (CHUNK // 32)
    return (block * (size // CHUNK + 1))[:size]


# ------------------------------------------------------------------ receiver (child process)
async def _receive_roamlink(expect: int) -> dict[str, Any]:
    import roamlink

    listener = await roamlink.listen("127.0.0.1", 0)
    print(f"PORT {listener.local_addr[1]}", flush=True)
    stream = await listener.accept()
    start = time.perf_counter()
    digest = hashlib.sha256()
    got = 0
    while chunk := await stream.read(CHUNK):
        digest.update(chunk)
        got += len(chunk)
    elapsed = time.perf_counter() - start
    stream.write(b"done")
    stream.write_eof()
    await stream.wait_closed()
    st = stream.stats()
    listener.close()
    await listener.wait_closed()
    return {"bytes": got, "seconds": elapsed, "sha256": digest.hexdigest(),
            "retransmissions_seen": st.duplicate_packets, "packets_received": st.packets_received}


async def _receive_tcp(expect: int) -> dict[str, Any]:
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())

    def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result((r, w))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    reader, writer = await accepted
    start = time.perf_counter()
    digest = hashlib.sha256()
    got = 0
    while chunk := await reader.read(CHUNK):
        digest.update(chunk)
        got += len(chunk)
    elapsed = time.perf_counter() - start
    writer.write(b"done")
    await writer.drain()
    writer.close()
    server.close()
    return {"bytes": got, "seconds": elapsed, "sha256": digest.hexdigest()}


def _child(kind: str, expect: int, uvloop: bool) -> None:
    receive = {"roamlink": _receive_roamlink, "tcp": _receive_tcp}[kind]
    if uvloop:
        import uvloop as _uvloop

        result = _uvloop.run(receive(expect))
    else:
        result = asyncio.run(receive(expect))
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ sender (this process)
async def _send_roamlink(port: int, payload: bytes) -> None:
    import roamlink

    stream = await roamlink.connect("127.0.0.1", port)
    view = memoryview(payload)
    for off in range(0, len(payload), CHUNK):
        stream.write(view[off:off + CHUNK])
        await stream.drain()
    stream.write_eof()
    assert await stream.read() == b"done"
    await stream.wait_closed()


async def _send_tcp(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    view = memoryview(payload)
    for off in range(0, len(payload), CHUNK):
        writer.write(view[off:off + CHUNK])
        await writer.drain()
    writer.write_eof()
    assert await reader.read() == b"done"
    writer.close()


async def _run_one(kind: str, payload: bytes, uvloop: bool, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind,
           "--size-mib", str(len(payload) / MiB)]
    if uvloop:
        cmd.append("--uvloop")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"receiver did not start: {line!r}")
        port = int(line.split()[1])
        sender = {"roamlink": _send_roamlink, "tcp": _send_tcp}[kind]
        await asyncio.wait_for(sender(port, payload), timeout)
        result_line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result: dict[str, Any] = json.loads(result_line.removeprefix("RESULT "))
    result["ok"] = (result["bytes"] == len(payload)
                    and result["sha256"] == hashlib.sha256(payload).hexdigest())
    result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6
    return result


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    size = int(args.size_mib * MiB)
    payload = _payload(size)
    kinds = args.only.split(",")
    medians: dict[str, float] = {}
    for kind in kinds:
        rates = []
        for i in range(args.repeat):
            try:
                res = await _run_one(kind, payload, args.uvloop, args.timeout)
            except Exception as exc:  # one failing transport must not hide the others
                print(json.dumps({"transport": kind, "run": i, "error": repr(exc)}), flush=True)
                continue
            print(json.dumps({"transport": kind, "run": i, "size_mib": args.size_mib,
                              "mb_per_s": round(res["mb_per_s"], 2), "ok": res["ok"],
                              "seconds": round(res["seconds"], 3)}), flush=True)
            if res["ok"]:
                rates.append(res["mb_per_s"])
        if rates:
            medians[kind] = statistics.median(rates)
    summary: dict[str, Any] = {"summary": "bulk", "size_mib": args.size_mib,
                               "loop": "uvloop" if args.uvloop else "asyncio",
                               "mb_per_s": {k: round(v, 2) for k, v in medians.items()}}
    if "roamlink" in medians and "tcp" in medians:
        summary["ratio_roamlink_to_tcp"] = round(medians["roamlink"] / medians["tcp"], 4)
    print(json.dumps(summary), flush=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="roamlink,tcp")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, int(args.size_mib * MiB), args.uvloop)
        return 0
    summary = asyncio.run(_main(args))
    return 0 if summary["mb_per_s"] else 1


if __name__ == "__main__":
    sys.exit(main())
