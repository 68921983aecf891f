"""``roamlink connect HOST:PORT``: netcat over roamlink (stdin -> connection -> stdout)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading

from ..api import Stream
from ..api.forward import APPLICATION_ERROR
from ..config import Config
from ..errors import RoamlinkError
from .common import (
    EXIT_OK,
    add_session_options,
    close_quietly,
    remote_address,
    session_config,
    show,
)
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
                    "go to stderr. SIGHUP or SIGTERM (what ssh sends its ProxyCommand when "
                    "it exits) ends our side in order and exits within 2 s.",
        epilog="As an ssh ProxyCommand, against `roamlink serve 0.0.0.0:4433 --forward "
               "127.0.0.1:22`: ssh -o ProxyCommand='roamlink connect -q %%h:4433' user@host "
               "(see docs/recipes.md).")
    p.add_argument("target", metavar="HOST:PORT", type=remote_address, help="the server")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no status lines, only errors (for ssh's ProxyCommand, whose stderr "
                        "is the terminal)")
    add_session_options(p)
    add_client_key_options(p)
    p.set_defaults(func=run, data_on_stdout=True)


#: Chunks read from stdin and not yet taken by the connection, at most: the back-pressure
#: that holds a fast stdin (a file, a pipe) back to the connection's pace.
_STDIN_AHEAD = 16


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes],
                  room: threading.Semaphore) -> None:
    """Blocking reads in a daemon thread: works for terminals, pipes and regular files alike,
    and cannot keep the process alive at exit. Each read waits for ``room`` (released as the
    connection takes a chunk). No coroutine is made in this thread: one made for a loop that
    closes before it runs is reported as "never awaited" on stderr, which for an ssh
    ProxyCommand is the user's terminal."""
    fd = sys.stdin.fileno()
    while True:
        room.acquire()
        try:
            chunk = os.read(fd, _READ)
        except OSError:
            chunk = b""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
        except RuntimeError:
            return  # the loop closed: the command is over
        if not chunk:
            return


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    config = session_config(args, config, long_lived=True)
    loop = asyncio.get_running_loop()
    hangup: asyncio.Future[int] = loop.create_future()
    handled = _on_signals(loop, hangup, (signal.SIGHUP, signal.SIGTERM))
    try:
        return await _run(args, config, out, hangup)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _run(args: argparse.Namespace, config: Config, out: Output,
               hangup: asyncio.Future[int]) -> int:
    stream = await open_trusted_stream(args.target, config, out, args)
    out.report("connected", f"connected to {show(stream.remote_addr)} from "
               f"{show(stream.local_addr)} (connection {stream.connection_id})",
               remote=show(stream.remote_addr), connection_id=stream.connection_id)
    watcher = asyncio.create_task(watch_paths(stream, out, stream.connection_id))
    pump = asyncio.create_task(_stdin_to_stream(stream))
    copy = asyncio.create_task(_stream_to_stdout(stream))
    exit_code = EXIT_OK
    try:
        waiting: set[asyncio.Future[object]] = {copy, hangup}  # type: ignore[arg-type]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if copy.done():
            copy.result()  # re-raise a connection error (or a broken pipe)
            # the peer finished its side; we leave (like `nc -N`), whatever stdin still holds
        else:
            # ssh ends its ProxyCommand with SIGHUP once the session is over: what it wrote
            # has been queued; end our side after it and leave without waiting long
            exit_code = 128 + hangup.result()
            stream.write_eof()
    finally:
        for task in (pump, watcher, copy):
            task.cancel()
        # the read side decides how it ended; a write failing once the peer left is moot
        with contextlib.suppress(asyncio.CancelledError, RoamlinkError, OSError):
            await pump
        with contextlib.suppress(asyncio.CancelledError, RoamlinkError, OSError):
            await copy
    await close_quietly(stream, timeout=5.0 if exit_code == EXIT_OK else 2.0)
    st = stream.stats()
    out.report("closed", f"closed: {st.stream_bytes_sent} bytes sent, "
               f"{st.stream_bytes_received} bytes received", bytes_sent=st.stream_bytes_sent,
               bytes_received=st.stream_bytes_received)
    return exit_code


def _settle(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


def _on_signals(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[int],
                signals: tuple[signal.Signals, ...]) -> list[signal.Signals]:
    handled = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, _settle, fut, int(sig))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            continue
        handled.append(sig)
    return handled


async def _stdin_to_stream(stream: Stream) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    room = threading.Semaphore(_STDIN_AHEAD)
    thread = threading.Thread(target=_stdin_reader,
                              args=(asyncio.get_running_loop(), queue, room),
                              name="roamlink-stdin", daemon=True)
    thread.start()
    while chunk := await queue.get():
        room.release()
        stream.write(chunk)
        await stream.drain()
    stream.write_eof()


async def _stream_to_stdout(stream: Stream) -> None:
    """Blocking writes in a worker thread, one chunk at a time: a slow reader of stdout
    (a pipe, a terminal) holds back the connection, not the event loop that serves it."""
    loop = asyncio.get_running_loop()
    fd = sys.stdout.fileno()
    with concurrent.futures.ThreadPoolExecutor(1, "roamlink-stdout") as writer:
        while chunk := await stream.read(_READ):
            try:
                await loop.run_in_executor(writer, _write_all, fd, chunk)
            except BrokenPipeError:
                # whoever read our output is gone (ssh exited): nothing more is wanted
                stream.abort(APPLICATION_ERROR, "the local reader went away")
                raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
