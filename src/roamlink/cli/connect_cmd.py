"""``roamlink connect HOST:PORT``: netcat over roamlink (stdin -> connection -> stdout)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading

from ..api import Stream
from ..config import Config
from ..errors import RoamlinkError
from .common import EXIT_OK, close_quietly, remote_address, show
from .output import Output
from .serve import watch_paths
from .trust import add_client_key_options, open_trusted_stream

_READ = 65536


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "connect", parents=parents, help="netcat-like: stdin to the connection, it to stdout",
        description="Connect to HOST:PORT; copy stdin to the connection and the connection to "
                    "stdout. End of stdin (Ctrl-D) half-closes: the peer sees the end of the "
                    "stream and can still answer. Exits when the peer ends its side. Reports "
                    "go to stderr.")
    p.add_argument("target", metavar="HOST:PORT", type=remote_address, help="the server")
    add_client_key_options(p)
    p.set_defaults(func=run, data_on_stdout=True)


def _stdin_reader(loop: asyncio.AbstractEventLoop,
                  queue: asyncio.Queue[bytes]) -> None:
    """Blocking reads in a daemon thread: works for terminals, pipes and regular files alike,
    and cannot keep the process alive at exit. The bounded queue is the back-pressure."""
    fd = sys.stdin.fileno()
    while True:
        try:
            chunk = os.read(fd, _READ)
        except OSError:
            chunk = b""
        try:
            asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
        except RuntimeError:  # loop closed: the command is over
            return
        if not chunk:
            return


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    stream = await open_trusted_stream(args.target, config, out, args)
    out.report("connected", f"connected to {show(stream.remote_addr)} from "
               f"{show(stream.local_addr)} (connection {stream.connection_id})",
               remote=show(stream.remote_addr), connection_id=stream.connection_id)
    watcher = asyncio.create_task(watch_paths(stream, out, stream.connection_id))
    pump = asyncio.create_task(_stdin_to_stream(stream))
    try:
        await _stream_to_stdout(stream)
        # the peer finished its side; we leave (like `nc -N`), whatever stdin still holds
    finally:
        pump.cancel()
        watcher.cancel()
        # the read side decides how it ended; a write failing once the peer left is moot
        with contextlib.suppress(asyncio.CancelledError, RoamlinkError):
            await pump
    await close_quietly(stream)
    st = stream.stats()
    out.report("closed", f"closed: {st.stream_bytes_sent} bytes sent, "
               f"{st.stream_bytes_received} bytes received", bytes_sent=st.stream_bytes_sent,
               bytes_received=st.stream_bytes_received)
    return EXIT_OK


async def _stdin_to_stream(stream: Stream) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
    thread = threading.Thread(target=_stdin_reader, args=(asyncio.get_running_loop(), queue),
                              name="roamlink-stdin", daemon=True)
    thread.start()
    while chunk := await queue.get():
        stream.write(chunk)
        await stream.drain()
    stream.write_eof()


async def _stream_to_stdout(stream: Stream) -> None:
    out = sys.stdout.buffer
    while chunk := await stream.read(_READ):
        out.write(chunk)
        out.flush()
