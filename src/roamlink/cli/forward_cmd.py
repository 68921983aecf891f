"""``roamlink forward [BIND:]PORT HOST:PORT``: TCP in, roamlink out (like ``ssh -L``).

Every TCP connection accepted on ``[BIND:]PORT`` gets its own roamlink connection to a
``roamlink serve --forward`` at ``HOST:PORT``, which carries it to its one configured TCP
target. The per-connection work is :func:`roamlink.forward.bridge`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import socket
import time

from ..api import Stream
from ..api.forward import DEFAULT_CHUNK, BridgeResult, bridge, describe_code, reset_tcp
from ..config import Config
from ..core.events import ConnectionTerminated, PathChanged, PathValidationFailed
from .common import (
    EXIT_CONNECTION,
    EXIT_OK,
    CliError,
    add_session_options,
    listen_address,
    remote_address,
    session_config,
    show,
)
from .output import Output, format_bytes
from .trust import add_client_key_options, check_client_key_options, open_trusted_stream


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "forward", parents=parents,
        help="carry TCP connections over roamlink (like ssh -L)",
        description="Listen for TCP connections on [BIND:]PORT (127.0.0.1 unless a bind "
                    "address is given) and carry each over its own roamlink connection to "
                    "HOST:PORT, where `roamlink serve --forward TARGET` passes it on to its "
                    "TCP target. The connections survive address changes of this machine. "
                    "One status line per connection: opened, moved, closed (with byte "
                    "counts).",
        epilog="Example: roamlink forward 8080 server.example:4433, then "
               "curl http://127.0.0.1:8080/. See docs/recipes.md.")
    p.add_argument("listen", metavar="[BIND:]PORT", type=listen_address,
                   help="TCP address to listen on (port 0 picks a free port, printed at start)")
    p.add_argument("target", metavar="HOST:PORT", type=remote_address,
                   help="the roamlink server (`roamlink serve ... --forward ...`)")
    p.add_argument("--once", action="store_true",
                   help="exit after the first connection ends (status 0 if it ended in "
                        "order, 3 if it was reset)")
    add_session_options(p)
    add_client_key_options(p)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: Config, out: Output) -> int:
    config = session_config(args, config, long_lived=True)
    check_client_key_options(args)
    target: tuple[str, int] = args.target
    numbers = itertools.count(1)
    tasks: set[asyncio.Task[BridgeResult | None]] = set()
    first: asyncio.Future[BridgeResult | None] = asyncio.get_running_loop().create_future()

    def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_forward_one(next(numbers), reader, writer, args,
                                                config, out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if args.once and not first.done():
            task.add_done_callback(lambda t: _first_result(first, t))

    host, port = args.listen
    try:
        server = await asyncio.start_server(on_tcp, host, port, limit=DEFAULT_CHUNK,
                                            reuse_address=True)
    except OSError as exc:
        raise _listen_error(args.listen, exc) from exc
    try:
        addr = server.sockets[0].getsockname()
        out.report("listening", f"forwarding tcp {show(addr)} -> roamlink {show(target)} "
                   f"(idle timeout {_seconds(config.idle_timeout)}, keepalive "
                   f"{_seconds(config.keepalive_interval)})",
                   host=str(addr[0]), port=addr[1], target=show(target),
                   idle_timeout=config.idle_timeout, keepalive=config.keepalive_interval)
        if args.once:
            result = await first
            server.close()
            return EXIT_OK if result is not None and result.ok else EXIT_CONNECTION
        await server.serve_forever()
        return EXIT_OK  # pragma: no cover - serve_forever only ends by cancellation
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _first_result(first: asyncio.Future[BridgeResult | None],
                  task: asyncio.Task[BridgeResult | None]) -> None:
    if first.done():
        return
    if task.cancelled():
        first.set_result(None)
    elif task.exception() is not None:
        first.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        first.set_result(task.result())


async def _forward_one(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       args: argparse.Namespace, config: Config,
                       out: Output) -> BridgeResult | None:
    target: tuple[str, int] = args.target
    peer = show(writer.get_extra_info("peername") or ("?", 0))
    with contextlib.suppress(OSError):  # interactive sessions: no Nagle delay on the TCP leg
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    try:
        stream = await open_trusted_stream(target, config, out, args)
    except CliError as exc:
        reset_tcp(writer)
        out.report("failed", f"#{n} tcp {peer}: {exc.message}", style="red", number=n,
                   peer=peer, error=exc.message)
        return None
    cid = stream.connection_id
    out.report("opened", f"#{n} opened: tcp {peer} -> roamlink {show(stream.remote_addr)} "
               f"from {show(stream.local_addr)} (connection {cid})", number=n, peer=peer,
               remote=show(stream.remote_addr), local=show(stream.local_addr),
               connection_id=cid)
    watcher = asyncio.create_task(_watch(n, stream, out))
    try:
        result = await bridge(stream, reader, writer)
    finally:
        watcher.cancel()
    elapsed = time.monotonic() - start
    how, code = _outcome_text(result)
    out.report("closed", f"#{n} closed after {elapsed:.2f} s: "
               f"{format_bytes(result.tcp_to_stream)} sent, "
               f"{format_bytes(result.stream_to_tcp)} received; {how}",
               style=None if result.ok else "yellow", number=n, connection_id=cid,
               seconds=round(elapsed, 3), bytes_sent=result.tcp_to_stream,
               bytes_received=result.stream_to_tcp, outcome=result.outcome, code=code,
               reason=how, path_changes=stream.stats().path_changes)
    return result


def _outcome_text(result: BridgeResult) -> tuple[str, int | None]:
    if result.outcome == "closed":
        return "both sides ended in order", None
    if result.outcome == "tcp_reset":
        return f"the local TCP connection was reset ({result.error})", None
    if result.outcome == "stream_reset" and result.code is not None:
        meaning = describe_code(result.code)
        reason = getattr(result.error, "reason", "")
        if meaning is not None:
            return f"{meaning} (code {result.code:#x}: {reason})", result.code
        return f"reset by the server (code {result.code}: {reason})", result.code
    if result.outcome == "idle_timeout":
        return f"nothing heard from the server: {result.error}", None
    return f"roamlink connection failed: {result.error}", None


async def _watch(n: int, stream: Stream, out: Output) -> None:
    """Report every path change of this connection (a move to a new local socket or a new
    server address) as it happens."""
    events = stream.events()
    while True:
        event = await events.get()
        if isinstance(event, PathChanged):
            out.report("path_changed", f"#{n} moved: {show(event.old_addr)} -> "
                       f"{show(event.new_addr)} ({event.reason}; path validated in "
                       f"{event.validation_time * 1e3:.1f} ms)", number=n,
                       old=show(event.old_addr), new=show(event.new_addr),
                       reason=event.reason,
                       validation_ms=round(event.validation_time * 1e3, 3))
        elif isinstance(event, PathValidationFailed):
            out.report("path_failed", f"#{n} path to {show(event.addr)} not validated "
                       f"({event.reason}); staying on the old path", number=n,
                       addr=show(event.addr), reason=event.reason)
        elif isinstance(event, ConnectionTerminated):
            return


def _seconds(value: float | None) -> str:
    return "off" if not value else f"{value:g} s"


def _listen_error(addr: tuple[str, int], exc: OSError) -> CliError:
    if exc.errno == errno.EADDRINUSE:
        return CliError(f"cannot listen on tcp {show(addr)}: address already in use")
    if exc.errno == errno.EACCES:
        return CliError(f"cannot listen on tcp {show(addr)}: permission denied")
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return CliError(f"cannot listen on tcp {show(addr)}: no such local address")
    return CliError(f"cannot listen on tcp {show(addr)}: {exc.strerror or exc}")
