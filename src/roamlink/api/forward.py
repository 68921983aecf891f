"""Bridge one roamlink :class:`Stream` and one TCP connection, byte for byte, both ways.

This is what ``roamlink forward`` (TCP in, roamlink out) and ``roamlink serve --forward``
(roamlink in, TCP out) run for every connection, and what an application can embed to carry
any TCP protocol (SSH, HTTP, a database) over a connection that survives address changes.

The two directions are copied by two tasks, each awaiting the slower side before reading
more, so neither side ever buffers without bound:

- TCP -> roamlink: read at most ``chunk_size`` bytes, ``write`` them, await ``drain()``
  (which waits while more than ``Config.send_buffer_size`` bytes are unacknowledged). While
  it waits, nothing is read from the TCP socket, so the kernel's TCP window closes and the
  TCP sender stops.
- roamlink -> TCP: read at most ``chunk_size`` bytes, write them to TCP, await the writer's
  ``drain()`` (asyncio's write buffer high-water mark, 64 KiB by default). While it waits,
  nothing is read from the stream, so roamlink's receive window (``Config.receive_window``)
  closes and the roamlink sender's ``drain()`` blocks in turn.

Ends are carried across:

- half-close: TCP end of file becomes ``stream.write_eof()``; the stream's end becomes
  ``writer.write_eof()`` (TCP FIN). The other direction keeps flowing until it ends too.
- abort: a TCP reset (or any socket error) aborts the stream with :data:`TCP_RESET`; a
  roamlink reset, idle timeout or other connection failure closes the TCP connection with
  a reset (``SO_LINGER`` 0), so the TCP application learns that the session broke rather
  than seeing an orderly end of its data.

Error codes a forwarding server sends in its CLOSE (documented in ``docs/recipes.md``):
:data:`TARGET_UNREACHABLE` when it cannot open the TCP connection to its target, and
:data:`TCP_RESET` when that TCP connection fails later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from dataclasses import dataclass

from ..core.wire import CloseCode
from ..errors import ConnectionReset, IdleTimeout, RoamlinkError
from .stream import Stream

APPLICATION_ERROR = int(CloseCode.APPLICATION_ERROR)  # 0x100: the first application code
INTERNAL_ERROR = int(CloseCode.INTERNAL_ERROR)

#: The server could not open the TCP connection to its forward target (refused, no route,
#: timed out); the CLOSE reason says which. Sent before any byte was forwarded.
TARGET_UNREACHABLE = APPLICATION_ERROR + 1  # 0x101 = 257
#: The TCP connection on the other side was reset or failed while forwarding.
TCP_RESET = APPLICATION_ERROR + 2  # 0x102 = 258

#: Bytes read at a time from either side (bounds what one copy step holds).
DEFAULT_CHUNK = 64 * 1024

_FORWARD_CODES = {
    TARGET_UNREACHABLE: "the server could not reach its forward target",
    TCP_RESET: "the TCP connection behind the server was reset",
}


def describe_code(code: int) -> str | None:
    """What a forwarding error code means, for people (``None`` for other codes)."""
    return _FORWARD_CODES.get(code)


@dataclass(frozen=True)
class BridgeResult:
    """How one bridged connection went.

    ``outcome`` is ``"closed"`` (both directions ended in order), ``"tcp_reset"`` (the TCP
    side failed; the stream was aborted with :data:`TCP_RESET`), ``"stream_reset"`` (the
    roamlink peer aborted; ``code`` holds its error code), ``"idle_timeout"`` (nothing heard
    from the roamlink peer for ``Config.idle_timeout``), ``"stream_error"`` (another
    roamlink failure) or, from :func:`forward_stream` only, ``"target_unreachable"``.
    In every case other than ``"closed"`` the TCP connection was reset.
    """

    stream_to_tcp: int
    tcp_to_stream: int
    outcome: str
    error: BaseException | None = None
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "closed"


class _TcpFailed(Exception):
    """The TCP side failed (reset, broken pipe); wraps the OSError."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


def reset_tcp(writer: asyncio.StreamWriter) -> None:
    """Close a TCP connection with a reset (RST), not a FIN: the peer application must not
    mistake a broken session for the orderly end of its data."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def bridge(stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, chunk_size: int = DEFAULT_CHUNK) -> BridgeResult:
    """Copy bytes both ways between ``stream`` and the TCP connection (``reader``,
    ``writer``) until both directions have ended or one side fails; close both; report.

    Never raises for a failure of either connection: it is in the result. If the task
    running the bridge is cancelled, both connections are aborted and the cancellation
    propagates.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be > 0")
    counts = [0, 0]  # stream -> tcp, tcp -> stream

    async def tcp_to_stream() -> None:
        while True:
            try:
                data = await reader.read(chunk_size)
            except OSError as exc:
                raise _TcpFailed(exc) from exc
            if not data:
                stream.write_eof()
                return
            stream.write(data)
            counts[1] += len(data)
            await stream.drain()

    async def stream_to_tcp() -> None:
        while True:
            data = await stream.read(chunk_size)
            try:
                if not data:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                writer.write(data)
                counts[0] += len(data)
                await writer.drain()
            except OSError as exc:
                raise _TcpFailed(exc) from exc

    tasks = [asyncio.create_task(tcp_to_stream(), name="roamlink-bridge-tcp-to-stream"),
             asyncio.create_task(stream_to_tcp(), name="roamlink-bridge-stream-to-tcp")]
    failure: BaseException | None = None
    try:
        pending = set(tasks)
        while pending and failure is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and failure is None:
                    failure = exc
    except asyncio.CancelledError:
        await _stop(tasks)
        stream.abort(APPLICATION_ERROR, "forwarding cancelled")
        reset_tcp(writer)
        raise
    await _stop(tasks)

    if failure is None:  # both directions ended in order
        stream.close()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await stream.wait_closed()  # bounded by Config.close_timeout in the connection
        return BridgeResult(counts[0], counts[1], "closed")
    if isinstance(failure, _TcpFailed):
        stream.abort(TCP_RESET, f"TCP connection failed: {failure.exc.strerror or failure}")
        reset_tcp(writer)
        return BridgeResult(counts[0], counts[1], "tcp_reset", failure.exc)
    reset_tcp(writer)
    if isinstance(failure, ConnectionReset):
        return BridgeResult(counts[0], counts[1], "stream_reset", failure, failure.code)
    if isinstance(failure, IdleTimeout):
        return BridgeResult(counts[0], counts[1], "idle_timeout", failure)
    if isinstance(failure, RoamlinkError):
        stream.abort(APPLICATION_ERROR, "forwarding failed")
        return BridgeResult(counts[0], counts[1], "stream_error", failure)
    stream.abort(INTERNAL_ERROR, "internal error while forwarding")
    raise failure


async def forward_stream(stream: Stream, host: str, port: int, *,
                         connect_timeout: float = 10.0,
                         chunk_size: int = DEFAULT_CHUNK) -> BridgeResult:
    """The server side of forwarding: open a TCP connection to ``host:port`` and
    :func:`bridge` ``stream`` to it.

    If the target cannot be reached, ``stream`` is aborted with :data:`TARGET_UNREACHABLE`
    and a short reason (``connection refused``, ``timed out``; the target's address is not
    disclosed to the client), and the result's outcome is ``"target_unreachable"``.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=max(chunk_size, 2**16)), connect_timeout)
    except (OSError, TimeoutError) as exc:
        reason = target_error_reason(exc, connect_timeout)
        stream.abort(TARGET_UNREACHABLE, f"forward target: {reason}")
        return BridgeResult(0, 0, "target_unreachable", exc, TARGET_UNREACHABLE)
    return await bridge(stream, reader, writer, chunk_size=chunk_size)


def target_error_reason(exc: BaseException, timeout: float | None = None) -> str:
    """A short, lower-case reason why a TCP connection could not be opened."""
    if isinstance(exc, socket.gaierror):
        return "cannot resolve its name"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, TimeoutError):
        return "timed out" if timeout is None else f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


__all__ = [
    "DEFAULT_CHUNK",
    "TARGET_UNREACHABLE",
    "TCP_RESET",
    "BridgeResult",
    "bridge",
    "describe_code",
    "forward_stream",
    "reset_tcp",
    "target_error_reason",
]
