"""A ``run_server`` application for the worker tests (run as a script in its own process).

Each stream gets a JSON hello line naming the worker and its pid, then the server hashes
everything the client sends and answers, when the client ends its side, with one JSON line:
the SHA-256, the byte count, the worker and that worker's hand-over counters.

Usage: python workers_server.py WORKERS [--no-kernel-steering]; prints
``{"port": P, "kernel_steering": bool}`` once the port is bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import roamlink
from roamlink.api.workers import ServerInfo, worker_index, worker_stats


async def handle(stream: roamlink.Stream) -> None:
    hello = {"worker": worker_index(), "pid": os.getpid()}
    stream.write(json.dumps(hello).encode() + b"\n")
    digest = hashlib.sha256()
    size = 0
    while chunk := await stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    result = {"sha256": digest.hexdigest(), "bytes": size, "worker": worker_index(),
              "pid": os.getpid(), "stats": worker_stats(),
              "path_changes": stream.stats().path_changes}
    stream.write(json.dumps(result).encode() + b"\n")
    stream.write_eof()
    await stream.drain()


def ready(info: ServerInfo) -> None:
    print(json.dumps({"port": info.address[1], "kernel_steering": info.kernel_steering}),
          flush=True)


if __name__ == "__main__":
    roamlink.run_server(handle, "127.0.0.1", 0, workers=int(sys.argv[1]),
                        kernel_steering="--no-kernel-steering" not in sys.argv,
                        config=roamlink.Config(idle_timeout=10.0), on_ready=ready)
