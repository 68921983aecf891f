"""Stream API defects found in review: concurrent waiters, bounded event queues, exports."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import roamlink
from roamlink import Config
from roamlink.api.stream import EVENT_QUEUE_LIMIT, EventQueue
from roamlink.core.events import ConnectionTerminated, HandshakeCompleted

from .conftest import run


async def _sink(listener: roamlink.Listener, got: dict[str, bytes]) -> None:
    async def handle(stream: roamlink.Stream) -> None:
        async with stream:
            got["data"] = await stream.read()

    async for stream in listener:
        asyncio.get_running_loop().create_task(handle(stream))


def test_concurrent_drains_all_wake() -> None:
    """asyncio's StreamWriter lets several coroutines drain at once; each must wake (the
    second drain used to replace the first's waiter, which then slept forever)."""
    config = Config(send_buffer_size=16 * 1024)

    async def main() -> None:
        got: dict[str, bytes] = {}
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            server = asyncio.create_task(_sink(listener, got))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=config)
            payload = os.urandom(1024 * 1024)
            stream.write(payload)
            assert stream.stats().send_buffered > config.send_buffer_size  # drain must wait
            drains = [asyncio.create_task(stream.drain()) for _ in range(3)]
            done, pending = await asyncio.wait(drains, timeout=20)
            assert not pending, f"{len(pending)} of 3 concurrent drain() calls never woke"
            for task in done:
                task.result()
            stream.write_eof()
            await stream.wait_closed()
            await asyncio.sleep(0.05)
            assert hashlib.sha256(got["data"]).digest() == hashlib.sha256(payload).digest()
            server.cancel()

    run(main(), 40)


def test_second_concurrent_read_raises_and_the_first_still_reads() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            accepted: asyncio.Future[roamlink.Stream] = asyncio.get_running_loop(
            ).create_future()

            async def accept() -> None:
                accepted.set_result(await listener.accept())

            acceptor = asyncio.create_task(accept())
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            stream.write(b"x")  # the server accepts once the connection carries a packet
            server_side = await asyncio.wait_for(accepted, 10)
            assert await server_side.read(1) == b"x"
            first = asyncio.create_task(server_side.read(100))
            await asyncio.sleep(0.01)  # the first reader is now waiting
            with pytest.raises(RuntimeError, match="already waiting"):
                await asyncio.wait_for(server_side.read(100), 5)
            stream.write(b"hello")
            assert await asyncio.wait_for(first, 10) == b"hello"
            # once nobody waits, reading works again
            stream.write(b"again")
            assert await asyncio.wait_for(server_side.read(100), 10) == b"again"
            stream.close()
            server_side.close()
            await stream.wait_closed()
            acceptor.cancel()

    run(main(), 40)


def test_event_queue_is_bounded_and_keeps_the_newest() -> None:
    """An application that asked for events and never reads them must not grow memory."""
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            queue = stream.events()
            small = stream.events(limit=4)
            paths = stream.path_events()
            # a long-lived connection's worth of events, never consumed
            conn = stream._conn
            for _ in range(10 * EVENT_QUEUE_LIMIT):
                conn._events.append(HandshakeCompleted())
            conn._events.append(ConnectionTerminated(None))
            stream.on_activity()
            assert queue.qsize() == EVENT_QUEUE_LIMIT
            assert queue.dropped == 10 * EVENT_QUEUE_LIMIT + 1 - EVENT_QUEUE_LIMIT
            assert small.qsize() == 4 and small.dropped == 10 * EVENT_QUEUE_LIMIT - 3
            # the newest event survives: the path-event iterator still sees the end
            events = [event async for event in paths]
            assert events == []
            last = None
            while not small.empty():
                last = small.get_nowait()
            assert isinstance(last, ConnectionTerminated)
            stream.abort()

    run(main(), 30)


def test_event_queue_offer() -> None:
    queue = EventQueue(2)
    for _ in range(5):
        queue.offer(HandshakeCompleted())
    assert queue.qsize() == 2 and queue.dropped == 3
    with pytest.raises(ValueError):
        EventQueue(0)


def test_readme_errors_are_exported() -> None:
    """The README names these; ``roamlink.X`` must work for each."""
    for name in ("ConnectTimeout", "VersionMismatch", "ConnectionClosed", "ConnectionReset",
                 "IdleTimeout", "IncompleteRead", "MigrationError", "MigrationTimeout",
                 "ConnectionAborted", "RoamlinkError", "ConfigError"):
        cls = getattr(roamlink, name)
        assert issubclass(cls, roamlink.RoamlinkError)
        assert name in roamlink.__all__


def test_listener_close_does_not_wait_for_half_open_handshakes() -> None:
    """A SYN nobody completes left a half-open connection that ``wait_closed`` waited for
    (``close_timeout``, 10 s): after a SYN flood, stopping a server took that long."""
    import base64
    import socket
    import time

    from roamlink.testing.packets import flood_syn

    async def main() -> None:
        listener = await roamlink.listen("127.0.0.1", 0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(5):
                key = base64.b64decode(listener.public_key or "")
                sock.sendto(flood_syn(key, bytes([i]) * 8), listener.local_addr)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if listener.connections() == 5:
                    break
            assert listener.connections() == 5
        finally:
            sock.close()
        start = time.monotonic()
        listener.close()
        await listener.wait_closed()
        assert time.monotonic() - start < 2.0

    run(main(), 30)


def test_connect_to_a_closed_port_is_refused_fast() -> None:
    """ICMP port unreachable (ECONNREFUSED) fails connect() in about a second with
    ConnectionRefused, not after connect_timeout."""
    import socket
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("IP_RECVERR is Linux only; elsewhere connect() times out")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now

    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(roamlink.ConnectionRefused):
            await roamlink.connect("127.0.0.1", port, config=Config(connect_timeout=10.0))
        assert time.monotonic() - start < 3.0

    run(main(), 20)
