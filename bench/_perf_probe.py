"""Developer probe: one-way roamlink bulk over loopback, two processes, optional cProfile.

Usage: python bench/_perf_probe.py [--size-mib 32] [--profile send|recv] [--uvloop]
Prints one JSON line (receiver rate and sender-side stats); with --profile, the top of the
cProfile table of that side on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
CHUNK = 1 << 20


def _config() -> Any:
    import roamlink

    return roamlink.Config(**json.loads(os.environ.get("PROBE_CONFIG", "{}")))


def _profiled(enabled: bool, coro_fn: Any, uvloop: bool) -> Any:
    prof = cProfile.Profile() if enabled else None
    if prof:
        prof.enable()
    try:
        if uvloop:
            import uvloop as _uv

            return _uv.run(coro_fn())
        return asyncio.run(coro_fn())
    finally:
        if prof:
            prof.disable()
            st = pstats.Stats(prof, stream=sys.stderr)
            st.sort_stats("tottime").print_stats(28)


async def _recv() -> dict[str, Any]:
    import roamlink

    listener = await roamlink.listen("127.0.0.1", 0, config=_config())
    print(f"PORT {listener.local_addr[1]}", flush=True)
    stream = await listener.accept()
    start = time.perf_counter()
    cpu0 = time.process_time()
    got = 0
    while chunk := await stream.read(CHUNK):
        got += len(chunk)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    stream.write(b"done")
    stream.write_eof()
    await stream.wait_closed()
    st = stream.stats()
    ep = listener.endpoint
    listener.close()
    await listener.wait_closed()
    return {
        "bytes": got,
        "seconds": elapsed,
        "cpu_share": round(cpu / elapsed, 2),
        "mb_per_s": got / elapsed / 1e6,
        "dup": st.duplicate_packets,
        "pkts_in": st.packets_received,
        "pkts_out": st.packets_sent,
        "io": getattr(ep, "io_stats", lambda: {})(),
    }


async def _send(port: int, size: int) -> dict[str, Any]:
    import roamlink

    payload = bytes(size)
    stream = await roamlink.connect("127.0.0.1", port, config=_config())
    view = memoryview(payload)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for off in range(0, len(payload), CHUNK):
        stream.write(view[off : off + CHUNK])
        await stream.drain()
    stream.write_eof()
    assert await stream.read() == b"done"
    el = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    st = stream.stats()
    ep = stream._endpoint
    await stream.wait_closed()
    return {
        "send_s": el,
        "cpu_share": round(cpu / el, 2),
        "retrans": st.retransmissions,
        "lost": st.packets_lost,
        "spurious": st.spurious_losses,
        "pto": st.pto_count,
        "srtt_ms": st.smoothed_rtt * 1e3,
        "min_rtt_ms": st.min_rtt * 1e3,
        "cwnd": st.cwnd,
        "pkts_out": st.packets_sent,
        "pkts_in": st.packets_received,
        "io": getattr(ep, "io_stats", lambda: {})(),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=float, default=32)
    p.add_argument("--profile", choices=["send", "recv", ""], default="")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        res = _profiled(a.profile == "recv", _recv, a.uvloop)
        print("RESULT " + json.dumps(res), flush=True)
        return
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--profile", a.profile]
    if a.uvloop:
        cmd.append("--uvloop")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        port = int(line.split()[1])
        size = int(a.size_mib * 1024 * 1024)
        sres = _profiled(a.profile == "send", lambda: _send(port, size), a.uvloop)
        rline = proc.stdout.readline()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    rres = json.loads(rline.removeprefix("RESULT "))
    print(json.dumps({"mb_per_s": round(rres["mb_per_s"], 1), "recv": rres, "send": sres}))


if __name__ == "__main__":
    main()
