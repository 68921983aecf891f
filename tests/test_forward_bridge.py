"""``roamlink.forward.bridge`` on loopback: TCP app -> bridge -> roamlink -> bridge -> TCP target.

The pipeline is what ``roamlink forward`` and ``roamlink serve --forward`` run, built from the
library pieces in one event loop so the tests can look at both sides' buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import roamlink
from roamlink.forward import (
    TARGET_UNREACHABLE,
    TCP_RESET,
    BridgeResult,
    bridge,
    forward_stream,
)
from tests.support.paths import PACKAGE_PARENT

from .conftest import run

pytestmark = pytest.mark.timeout(60)

SRC = PACKAGE_PARENT  # the roamlink under test (installed or src/)
TargetHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Pipeline:
    """A forwarding pair on loopback: ``app_port`` (TCP) -> roamlink -> ``target`` (TCP)."""

    def __init__(self) -> None:
        self.client_results: list[BridgeResult] = []
        self.server_results: list[BridgeResult] = []
        self.client_streams: list[roamlink.Stream] = []
        self.client_readers: list[asyncio.StreamReader] = []
        self.server_writers: list[asyncio.StreamWriter] = []
        self.server_streams: list[roamlink.Stream] = []
        self.app_port = 0
        self.roamlink_port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def results(self, n: int = 1, timeout: float = 20.0) -> tuple[BridgeResult,
                                                                          BridgeResult]:
        deadline = time.monotonic() + timeout
        while len(self.client_results) < n or len(self.server_results) < n:
            assert time.monotonic() < deadline, "bridges did not finish"
            await asyncio.sleep(0.01)
        return self.client_results[n - 1], self.server_results[n - 1]


@contextlib.asynccontextmanager
async def pipeline(target: tuple[str, int], config: roamlink.Config | None = None,
                   client_config: roamlink.Config | None = None,
                   serve: Callable[..., Awaitable[BridgeResult]] | None = None,
                   ) -> AsyncIterator[Pipeline]:
    config = config or roamlink.Config()
    p = Pipeline()
    listener = await roamlink.listen("127.0.0.1", 0, config=config)
    p.roamlink_port = listener.local_addr[1]

    async def serve_one(stream: roamlink.Stream) -> None:
        p.server_streams.append(stream)
        if serve is not None:  # the library's server side, as `serve --forward` runs it
            p.server_results.append(await serve(stream, *target))
            return
        reader, writer = await asyncio.open_connection(*target)
        p.server_writers.append(writer)
        p.server_results.append(await bridge(stream, reader, writer))

    async def accept_loop() -> None:
        async for stream in listener:
            p.spawn(serve_one(stream))

    async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = await roamlink.connect("127.0.0.1", p.roamlink_port,
                                        config=client_config or config)
        p.client_streams.append(stream)
        p.client_readers.append(reader)
        p.client_results.append(await bridge(stream, reader, writer))

    tcp = await asyncio.start_server(lambda r, w: p.spawn(on_tcp(r, w)), "127.0.0.1", 0)
    p.app_port = tcp.sockets[0].getsockname()[1]
    p.spawn(accept_loop())
    try:
        yield p
    finally:
        tcp.close()
        for task in list(p.tasks):
            task.cancel()
        await asyncio.gather(*p.tasks, return_exceptions=True)
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def tcp_target(handler: TargetHandler,
                     sock: socket.socket | None = None) -> AsyncIterator[tuple[str, int]]:
    if sock is None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
    else:
        server = await asyncio.start_server(handler, sock=sock)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


def sync(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test body on a fresh event loop, bounded (no pytest-asyncio here)."""
    @functools.wraps(fn)
    def wrapper() -> None:
        run(fn(), timeout=50)  # type: ignore[arg-type]

    return wrapper


def _small_buffer_socket(option: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, option, 128 * 1024)
    return sock


def _closed_port() -> int:
    """A TCP port nobody listens on (bound, never listened, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ----------------------------------------------------------------------------- half-close
@sync
async def test_app_half_closes_first_and_target_still_answers() -> None:
    """TCP FIN from the app reaches the target as EOF; the target's answer, sent after that
    EOF, still comes back, then the target's FIN ends the app's read."""
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read()  # until the forwarded EOF
        writer.write(hashlib.sha256(got).hexdigest().encode() + b"\n" + got[:1000])
        await writer.drain()
        writer.close()

    async with tcp_target(target) as addr, pipeline(addr) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.app_port)
        writer.write(data)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        client, server = await p.results()
    assert answer == hashlib.sha256(data).hexdigest().encode() + b"\n" + data[:1000]
    assert client.outcome == server.outcome == "closed"
    assert client.tcp_to_stream == server.stream_to_tcp == len(data)
    assert client.stream_to_tcp == server.tcp_to_stream == len(answer)
    assert p.client_streams[0].error is None or p.client_streams[0].is_closing()


@sync
async def test_target_half_closes_first_and_app_keeps_sending() -> None:
    """The target sends a greeting and shuts its write side at once (FIN); the app reads the
    end of the greeting, keeps sending, and the target reads everything."""
    data = os.urandom(1024 * 1024)
    seen: list[bytes] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"greeting")
        writer.write_eof()
        seen.append(await reader.read())
        writer.close()

    async with tcp_target(target) as addr, pipeline(addr) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.app_port)
        assert await asyncio.wait_for(reader.read(), 20) == b"greeting"  # EOF came through
        writer.write(data)  # the other direction is still open
        await writer.drain()
        writer.write_eof()
        client, server = await p.results()
        writer.close()
    assert seen == [data]
    assert client.outcome == server.outcome == "closed"
    assert (client.stream_to_tcp, client.tcp_to_stream) == (8, len(data))


# ----------------------------------------------------------------------------- aborts
@sync
async def test_target_refuses_and_the_client_side_reports_the_code() -> None:
    async with pipeline(("127.0.0.1", _closed_port()), serve=forward_stream) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.app_port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ConnectionResetError):  # RST, not an orderly empty answer
            await asyncio.wait_for(reader.read(), 20)
        writer.close()
        deadline = time.monotonic() + 10
        while not p.client_results:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    result = p.client_results[0]
    assert result.outcome == "stream_reset"
    assert result.code == TARGET_UNREACHABLE == 0x101
    assert isinstance(result.error, roamlink.ConnectionReset)
    assert result.error.reason == "forward target: connection refused"
    assert p.server_results[0].outcome == "target_unreachable"
    assert roamlink.forward.describe_code(0x101) is not None


@sync
async def test_app_reset_aborts_the_stream_and_resets_the_target() -> None:
    target_saw: list[BaseException | bytes] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ready")
        await writer.drain()
        try:
            target_saw.append(await reader.read())
        except OSError as exc:
            target_saw.append(exc)

    async with tcp_target(target) as addr, pipeline(addr) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.app_port)
        assert await asyncio.wait_for(reader.readexactly(5), 20) == b"ready"
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # the app's TCP connection is reset
        client, server = await p.results()
        deadline = time.monotonic() + 5
        while not target_saw and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert client.outcome == "tcp_reset"
    assert server.outcome == "stream_reset" and server.code == TCP_RESET
    assert len(target_saw) == 1 and isinstance(target_saw[0], ConnectionResetError)


@sync
async def test_vanished_client_releases_the_target_after_the_idle_timeout() -> None:
    """The roamlink client is killed (no CLOSE ever arrives): the server side times out after
    ``idle_timeout`` and resets its TCP connection to the target."""
    closed_at: list[float] = []
    how: list[str] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x")
        await writer.drain()
        try:
            rest = await reader.read()
            how.append(f"eof after {len(rest)} bytes")
        except OSError as exc:
            how.append(type(exc).__name__)
        closed_at.append(time.monotonic())

    config = roamlink.Config(idle_timeout=0.6, keepalive_interval=0.2)
    async with tcp_target(target) as addr, pipeline(addr, config=config) as p:
        code = ("import asyncio, sys, roamlink\n"
                "async def main():\n"
                "    s = await roamlink.connect('127.0.0.1', int(sys.argv[1]))\n"
                "    s.write(b'hello'); await s.drain()\n"
                "    assert await s.read(1) == b'x'\n"
                "    print('ready', flush=True)\n"
                "    await asyncio.sleep(60)\n"
                "asyncio.run(main())\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(p.roamlink_port), stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=SRC))
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"ready\n"
            proc.kill()  # vanishes: no CLOSE, no more packets
            killed = time.monotonic()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        deadline = time.monotonic() + 10
        while not p.server_results and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        while not closed_at and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert p.server_results and p.server_results[0].outcome == "idle_timeout"
    assert how == ["ConnectionResetError"]  # reset, not an orderly end of the data
    assert 0.4 <= closed_at[0] - killed <= 5.0


# ----------------------------------------------------------------------------- back-pressure
@sync
async def test_slow_tcp_reader_bounds_the_buffers_of_both_sides() -> None:
    """The target does not read for a while: the app's writes stop after a bounded amount,
    and neither side's user-space buffers grow past their configured limits."""
    window = 256 * 1024
    config = roamlink.Config(receive_window=window, send_buffer_size=window)
    total = 16 * 1024 * 1024
    data = os.urandom(1024 * 1024)
    gate = asyncio.Event()
    received = hashlib.sha256()
    count = [0]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        while chunk := await reader.read(1 << 20):
            received.update(chunk)
            count[0] += len(chunk)
        writer.close()

    # small kernel buffers at the two outer ends, so what stalls is the bridge's own chain
    # (the kernel may still hold a few MiB in the two bridge-side sockets)
    listen_sock = _small_buffer_socket(socket.SO_RCVBUF)
    listen_sock.bind(("127.0.0.1", 0))
    async with tcp_target(target, sock=listen_sock) as addr, \
            pipeline(addr, config=config) as p:
        app_sock = _small_buffer_socket(socket.SO_SNDBUF)
        app_sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(app_sock, ("127.0.0.1", p.app_port))
        reader, writer = await asyncio.open_connection(sock=app_sock)
        written = [0]
        sent = hashlib.sha256()

        async def source() -> None:
            while written[0] < total:
                writer.write(data)
                sent.update(data)
                await writer.drain()
                written[0] += len(data)
            writer.write_eof()

        src = asyncio.create_task(source())
        peaks = {"client_send": 0, "server_recv": 0, "server_tcp_out": 0, "client_tcp_in": 0}
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            if p.client_readers and p.server_writers:
                cs, ss = p.client_streams[0], p.server_streams[0]
                peaks["client_send"] = max(peaks["client_send"], cs.stats().send_buffered)
                peaks["server_recv"] = max(peaks["server_recv"], ss._conn.readable)
                peaks["server_tcp_out"] = max(
                    peaks["server_tcp_out"],
                    p.server_writers[0].transport.get_write_buffer_size())
                peaks["client_tcp_in"] = max(peaks["client_tcp_in"],
                                             len(p.client_readers[0]._buffer))
        stalled_at = written[0]
        await asyncio.sleep(0.3)
        assert written[0] == stalled_at, "the app could keep writing: no back-pressure"
        assert stalled_at < total - 2 * 1024 * 1024
        gate.set()
        await asyncio.wait_for(src, 30)
        client, server = await p.results()
        writer.close()
    chunk = 64 * 1024
    assert peaks["client_send"] <= window + chunk
    assert peaks["server_recv"] <= window
    assert peaks["server_tcp_out"] <= 64 * 1024 + chunk  # asyncio's high-water mark + a read
    # StreamReader pauses reading above 2 * limit; one socket read (256 KiB) may overshoot
    assert peaks["client_tcp_in"] <= 2 * 64 * 1024 + 256 * 1024
    assert min(peaks.values()) >= 0 and peaks["client_send"] > 0, peaks
    assert count[0] == total and received.digest() == sent.digest()
    assert client.outcome == server.outcome == "closed"
