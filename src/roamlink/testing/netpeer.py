"""A roamlink peer run inside a network namespace by the real-network tests and benchmarks
(``python -m roamlink.testing.netpeer server|client ...``).

server HOST PORT: accept one connection, hash everything until EOF, answer "ok", print one
JSON line (bytes, sha256, path changes, timeline of (seconds, bytes) samples).
client HOST PORT SIZE_MIB CHECKPOINTS: send SIZE_MIB of deterministic data; after each of
CHECKPOINTS equal parts print "CHECKPOINT k" and wait for a line on stdin before going on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time

import roamlink

CHUNK = 1 << 20


def block(i: int) -> bytes:
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return seed * (CHUNK // len(seed))


async def server(host: str, port: int) -> None:
    listener = await roamlink.listen(host, port)
    print("READY", flush=True)
    stream = await listener.accept()
    events = stream.path_events()
    changes: list[dict[str, object]] = []

    async def watch() -> None:
        async for ev in events:
            changes.append({"at": time.monotonic(), "event": type(ev).__name__,
                            "new": list(getattr(ev, "new_addr", ())),
                            "validation_ms": getattr(ev, "validation_time", 0) * 1e3})

    watcher = asyncio.create_task(watch())
    digest = hashlib.sha256()
    total = 0
    t0 = time.monotonic()
    timeline = []
    while chunk := await stream.read(CHUNK):
        digest.update(chunk)
        total += len(chunk)
        timeline.append((round(time.monotonic() - t0, 5), total))
    stream.write(b"ok")
    stream.write_eof()
    st = stream.stats()
    await asyncio.wait_for(stream.wait_closed(), 30)
    watcher.cancel()
    print(json.dumps({"bytes": total, "sha256": digest.hexdigest(),
                      "path_changes": st.path_changes, "remote": list(stream.remote_addr),
                      "min_rtt": st.min_rtt, "changes": [
                          {**c, "at": round(float(str(c["at"])) - t0, 5)} for c in changes],
                      "timeline": timeline[:: max(1, len(timeline) // 4000)]}), flush=True)
    listener.close()
    await listener.wait_closed()


async def client(host: str, port: int, size_mib: int, checkpoints: int) -> None:
    stream = await roamlink.connect(host, port)
    print("CONNECTED", flush=True)
    per_part = max(1, size_mib // (checkpoints + 1))
    loop = asyncio.get_running_loop()
    for i in range(size_mib):
        stream.write(block(i))
        await stream.drain()
        if checkpoints and (i + 1) % per_part == 0 and (i + 1) // per_part <= checkpoints:
            print(f"CHECKPOINT {(i + 1) // per_part}", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
    stream.write_eof()
    reply = await asyncio.wait_for(stream.read(), 60)
    st = stream.stats()
    print(json.dumps({"reply": reply.decode(), "retransmissions": st.retransmissions,
                      "path_changes": st.path_changes}), flush=True)
    await asyncio.wait_for(stream.wait_closed(), 30)


def expected_sha256(size_mib: int) -> str:
    digest = hashlib.sha256()
    for i in range(size_mib):
        digest.update(block(i))
    return digest.hexdigest()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
