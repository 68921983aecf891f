"""``roamlink serve [HOST:]PORT``: accept connections and print, echo, sink or save their data."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..api import Listener, Stream
from ..api.forward import forward_stream, target_error_reason
from ..config import Config
from ..core.events import ConnectionTerminated, PathChanged
from ..errors import RoamlinkError
from .common import (
    EXIT_OK,
    EXIT_VERIFY,
    CliError,
    add_session_options,
    close_quietly,
    describe_error,
    listen_address,
    remote_address,
    session_config,
    show,
)
from .output import Output, format_bits, format_bytes
from .transfer import ProtocolError, Reply, read_header, unsafe_name_reason
from .trust import add_server_key_options, open_server
from .workers import add_workers_option, serve_with_workers

Handler = Callable[[Stream, str], Awaitable[bool]]


def _default_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", parents=parents, help="accept connections (print, echo, sink or save data)",
        description="Accept roamlink connections on [HOST:]PORT (host defaults to 127.0.0.1; "
                    "use 0.0.0.0 or [::] to accept from other machines). Without a mode, "
                    "received data is written to stdout (reports then go to stderr).")
    p.add_argument("listen", metavar="[HOST:]PORT", type=listen_address,
                   help="where to listen (port 0 picks a free port, printed at start)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--echo", action="store_true", help="send every byte back")
    mode.add_argument("--sink", action="store_true",
                      help="discard the data and report receive rates")
    mode.add_argument("--save", metavar="DIR", type=Path,
                      help="store files sent with `roamlink send` in DIR")
    mode.add_argument("--forward", metavar="HOST:PORT", type=remote_address,
                      help="carry every connection to a new TCP connection to HOST:PORT, and "
                           "only there (for `roamlink forward`, or ssh with `roamlink "
                           "connect` as ProxyCommand); if it cannot be reached the "
                           "connection is reset with code 0x101")
    p.add_argument("--overwrite", action="store_true",
                   help="with --save: replace existing files (default: refuse)")
    p.add_argument("--once", action="store_true",
                   help="exit after the first connection ends (exit status tells how it went)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between rate reports with --sink (0: only a summary)")
    add_server_key_options(p)
    add_session_options(p, when=" with --forward")
    p.set_defaults(func=run)
    add_workers_option(p, run_workers)


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    config = session_config(args, config, long_lived=args.forward is not None)
    mode, handler = _choose_mode(args, config, out)
    listener, key_text, public_key = await open_server(args.listen, config,
                                                       args.server_key_file,
                                                       args.authorized_keys)
    try:
        addr = listener.local_addr
        out.report("listening", f"listening on udp {show(addr)} ({mode}); {key_text}",
                   host=str(addr[0]), port=addr[1], mode=mode.split(" ")[0],
                   public_key=public_key, idle_timeout=config.idle_timeout,
                   keepalive=config.keepalive_interval)
        return await _accept_loop(listener, handler, out, once=args.once)
    finally:
        listener.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 3.0)


def run_workers(args: argparse.Namespace, config: Config, out: Output) -> int:
    """``serve --workers N``: the same modes, in N processes sharing the port."""
    config = session_config(args, config, long_lived=args.forward is not None)
    mode, handler = _choose_mode(args, config, out)

    async def serve_one(stream: Stream) -> None:
        await _serve_one(stream, handler, out)

    return serve_with_workers(args, config, out, serve_one, mode, "server")


def _choose_mode(args: argparse.Namespace, config: Config,
                 out: Output) -> tuple[str, Handler]:
    if args.overwrite and args.save is None:
        raise CliError("--overwrite only makes sense with --save DIR", 2)
    handler: Handler
    if args.forward is not None:
        mode = f"forwarding to tcp {show(args.forward)}"
        handler = _forwarder(args.forward, config, out)
    elif args.save is not None:
        directory: Path = args.save
        if not directory.is_dir():
            raise CliError(f"{directory}: no such directory (create it first)")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise CliError(f"{directory}: permission denied (cannot write there)")
        mode = f"saving files into {directory}"
        handler = _saver(directory, args.overwrite, out)
    elif args.echo:
        mode, handler = "echo", _echo
    elif args.sink:
        mode, handler = "sink", _sinker(out, args.interval)
    else:
        mode, handler = "printing received data to stdout", _printer
    return mode, handler


async def _accept_loop(listener: Listener, handler: Handler, out: Output, *,
                       once: bool) -> int:
    tasks: set[asyncio.Task[bool]] = set()
    try:
        async for stream in listener:
            task = asyncio.create_task(_serve_one(stream, handler, out))
            if once:
                return EXIT_OK if await task else EXIT_VERIFY
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
    return EXIT_OK  # pragma: no cover - the listener only stops when closed


async def _serve_one(stream: Stream, handler: Handler, out: Output) -> bool:
    cid = stream.connection_id
    out.report("connection", f"connection {cid} from {show(stream.remote_addr)}",
               connection_id=cid, remote=show(stream.remote_addr))
    watcher = asyncio.create_task(watch_paths(stream, out, cid))
    start = time.monotonic()
    ok = False
    try:
        ok = await handler(stream, cid)
        await close_quietly(stream)
    except RoamlinkError as exc:
        message, _ = describe_error(exc)
        out.report("connection_failed", f"connection {cid}: {message}", connection_id=cid,
                   error=message)
    except OSError as exc:  # e.g. disk full while saving
        message, _ = describe_error(exc)
        out.report("connection_failed", f"connection {cid}: {message}", connection_id=cid,
                   error=message)
        stream.abort(1, "server error")
    finally:
        watcher.cancel()
    st = stream.stats()
    elapsed = time.monotonic() - start
    out.report("closed", f"connection {cid} closed after {elapsed:.2f} s: "
               f"{format_bytes(st.stream_bytes_received)} in, "
               f"{format_bytes(st.stream_bytes_sent)} out, {st.retransmissions} retransmitted, "
               f"{st.path_changes} path changes", connection_id=cid, seconds=round(elapsed, 3),
               bytes_in=st.stream_bytes_received, bytes_out=st.stream_bytes_sent,
               retransmissions=st.retransmissions, path_changes=st.path_changes)
    return ok


async def watch_paths(stream: Stream, out: Output, cid: str) -> None:
    """Report every validated path change (a client that roamed) as it happens."""
    events = stream.events()
    while True:
        event = await events.get()
        if isinstance(event, PathChanged):
            out.report(
                "path_changed",
                f"connection {cid}: peer moved {show(event.old_addr)} -> "
                f"{show(event.new_addr)} ({event.reason}; path validated in "
                f"{event.validation_time * 1e3:.1f} ms)",
                connection_id=cid, old=show(event.old_addr), new=show(event.new_addr),
                reason=event.reason, validation_ms=round(event.validation_time * 1e3, 3))
        elif isinstance(event, ConnectionTerminated):
            return


# ---------------------------------------------------------------------------- modes
async def _printer(stream: Stream, cid: str) -> bool:
    out = sys.stdout.buffer
    while chunk := await stream.read(65536):
        out.write(chunk)
        out.flush()
    return True


async def _echo(stream: Stream, cid: str) -> bool:
    while chunk := await stream.read(65536):
        stream.write(chunk)
        await stream.drain()
    stream.write_eof()
    return True


def _sinker(out: Output, interval: float) -> Handler:
    async def sink(stream: Stream, cid: str) -> bool:
        received = 0
        start = last_time = time.monotonic()
        last = 0
        while chunk := await stream.read(1 << 20):
            received += len(chunk)
            now = time.monotonic()
            if interval > 0 and now - last_time >= interval:
                rate = (received - last) / (now - last_time)
                out.report("interval", f"connection {cid}: {now - start:6.1f} s  "
                           f"{format_bytes(received - last):>10}  {format_bits(rate)}",
                           connection_id=cid, seconds=round(now - start, 3),
                           bytes=received - last, bits_per_s=round(rate * 8, 1))
                last, last_time = received, now
        elapsed = max(time.monotonic() - start, 1e-9)
        out.report("summary", f"connection {cid}: received {format_bytes(received)} in "
                   f"{elapsed:.2f} s = {format_bits(received / elapsed)}",
                   connection_id=cid, bytes=received, seconds=round(elapsed, 3),
                   bits_per_s=round(received * 8 / elapsed, 1))
        return True

    return sink


def _forwarder(target: tuple[str, int], config: Config, out: Output) -> Handler:
    host, port = target

    async def forward(stream: Stream, cid: str) -> bool:
        result = await forward_stream(stream, host, port,
                                      connect_timeout=config.connect_timeout)
        if result.outcome == "target_unreachable":
            reason = target_error_reason(result.error or OSError(), config.connect_timeout)
            out.report("target_unreachable", f"connection {cid}: cannot reach the forward "
                       f"target {show(target)}: {reason}; reset the connection with "
                       f"code 0x101", style="red", connection_id=cid, target=show(target),
                       error=reason)
        elif not result.ok:
            out.report("forward_failed", f"connection {cid}: forwarding ended by "
                       f"{result.outcome.replace('_', ' ')}: {result.error}", style="yellow",
                       connection_id=cid, outcome=result.outcome, error=str(result.error))
        return result.ok

    return forward


def _saver(directory: Path, overwrite: bool, out: Output) -> Handler:
    async def save(stream: Stream, cid: str) -> bool:
        try:
            name, size = await read_header(stream)
        except ProtocolError as exc:
            return await _refuse(stream, out, cid, str(exc))
        reason = unsafe_name_reason(name)
        if reason is not None:
            return await _refuse(stream, out, cid, f"unsafe file name {name!r}: {reason}")
        final = directory / name
        if final.resolve().parent != directory.resolve():  # belt and braces
            return await _refuse(stream, out, cid, f"unsafe file name {name!r}")
        if not overwrite and os.path.lexists(final):
            return await _refuse(stream, out, cid, f"{name!r} already exists on the server "
                                 "(it runs without --overwrite)")
        out.report("receiving", f"connection {cid}: receiving {name!r} "
                   f"({format_bytes(size)})", connection_id=cid, name=name, size=size)
        fd, tmp_name = tempfile.mkstemp(prefix=".roamlink-", suffix=".part", dir=directory)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            got = 0
            with os.fdopen(fd, "wb") as fh:
                while got < size:
                    chunk = await stream.read(min(1 << 20, size - got))
                    if not chunk:
                        break
                    fh.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
            if got < size:
                return await _refuse(stream, out, cid, f"size mismatch for {name!r}: "
                                     f"{size} bytes announced, {got} received")
            if await stream.read(1):
                return await _refuse(stream, out, cid, f"more data than the {size} bytes "
                                     f"announced for {name!r}")
            os.chmod(tmp, _FILE_MODE)  # as if created with open(): mkstemp's 0600 is private
            try:
                _install(tmp, final, overwrite)
            except FileExistsError:
                return await _refuse(stream, out, cid, f"{name!r} already exists on the server")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        sha = digest.hexdigest()
        stream.write(Reply(ok=True, size=got, sha256=sha, name=name).encode())
        stream.write_eof()
        out.report("saved", f"connection {cid}: saved {final} ({format_bytes(got)}, "
                   f"sha256 {sha})", style="green", connection_id=cid, path=str(final),
                   size=got, sha256=sha)
        return True

    return save


def _install(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished file into place; without ``overwrite`` never replace anything
    (a hard link fails atomically if the name exists, unlike a check-then-rename)."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links
        if os.path.lexists(final):
            raise FileExistsError(final) from None
        os.rename(tmp, final)


async def _refuse(stream: Stream, out: Output, cid: str, message: str) -> bool:
    out.report("refused", f"connection {cid}: refused: {message}", style="yellow",
               connection_id=cid, error=message)
    try:
        stream.write(Reply(ok=False, message=message).encode())
        stream.write_eof()
    except RoamlinkError:
        pass
    return False

