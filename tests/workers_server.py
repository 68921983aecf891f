"""A ``run_server`` application for the worker tests (run as a script in its own process).

Each stream gets a JSON hello line naming the worker and its pid, then the server hashes
everything the client sends and answers, when the client ends its side, with one JSON line:
the SHA-256, the byte count, the worker and that worker's hand-over counters.

Usage: python workers_server.py WORKERS [--host H] [--port P] [--server-id S]
[--no-kernel-steering]; prints ``{"port": P, "kernel_steering": bool}`` once the port is bound.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import roamlink
from roamlink.api.workers import ServerInfo, worker_index, worker_stats

SERVER_ID: int | None = None


async def handle(stream: roamlink.Stream) -> None:
    hello = {"worker": worker_index(), "pid": os.getpid()}
    stream.write(json.dumps(hello).encode() + b"\n")
    digest = hashlib.sha256()
    size = 0
    while chunk := await stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    result = {"sha256": digest.hexdigest(), "bytes": size, "worker": worker_index(),
              "pid": os.getpid(), "stats": worker_stats(), "server_id": SERVER_ID,
              "path_changes": stream.stats().path_changes}
    stream.write(json.dumps(result).encode() + b"\n")
    stream.write_eof()
    await stream.drain()


def ready(info: ServerInfo) -> None:
    print(json.dumps({"port": info.address[1], "kernel_steering": info.kernel_steering}),
          flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workers", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server-id", type=int)
    parser.add_argument("--no-kernel-steering", action="store_true")
    args = parser.parse_args()
    SERVER_ID = args.server_id
    config = roamlink.Config(idle_timeout=10.0, server_id=args.server_id)
    roamlink.run_server(handle, args.host, args.port, workers=args.workers,
                        kernel_steering=not args.no_kernel_steering, config=config,
                        on_ready=ready)
