"""A cancelled migrate() leaves the Stream consistent with the path the connection uses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import roamlink
from roamlink.testing.clock import VirtualClock

from .conftest import run, virtual_pair


async def _sink(listener: roamlink.Listener) -> bytes:
    return await _sink_stream(await listener.accept())


async def _sink_stream(stream: roamlink.Stream) -> bytes:
    digest = hashlib.sha256()
    while chunk := await stream.read(1 << 20):
        digest.update(chunk)
    stream.write(b"ok")
    stream.write_eof()
    return digest.digest()


def test_cancelled_migrate_leaves_a_consistent_stream() -> None:
    async def main() -> None:
        clock = VirtualClock()
        listener, stream, accepted = await virtual_pair(clock, roamlink.Config())
        async with listener:
            server = asyncio.ensure_future(_sink_stream(accepted))
            payload = os.urandom(4 * 1024 * 1024)
            half = len(payload) // 2
            stream.write(payload[:half])
            task = asyncio.create_task(stream.migrate(local_addr=0))
            conn = stream._conn
            for _ in range(10_000):  # until the validation is under way
                if conn.paths.candidates:
                    break
                await asyncio.sleep(0)
            assert conn.paths.candidates
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await clock.sleep(0.5)  # whatever validation was under way has ended
            # the socket the stream reports is the one the connection sends from
            assert stream._endpoint.socket_id == conn.paths.socket_id
            assert not conn.paths.candidates and stream.local_addr[1] > 0
            stream.write(payload[half:])
            stream.write_eof()
            assert await clock.run(stream.read(), timeout=60) == b"ok"
            assert await clock.run(server, timeout=10) == hashlib.sha256(payload).digest()
            await clock.run(stream.wait_closed(), timeout=30)

    run(main(), 60)


def test_server_side_migration_socket_closes_with_its_connection() -> None:
    """A socket that migrate(local_addr=...) opened serves that one connection only: it is
    closed when the connection ends, also on a server (whose listener socket stays open).
    On a virtual clock: the draining period passes without wall time."""
    async def main() -> None:
        cfg = roamlink.Config(draining_period=3.0)
        clock = VirtualClock()
        listener, client, server = await virtual_pair(clock, cfg)
        async with listener:
            client.write(b"hello")
            assert await clock.run(server.readexactly(5), timeout=5) == b"hello"
            # the server moves to a new port (its new socket runs on the same clock)
            local, _ = await clock.run(server.migrate(local_addr=0), timeout=10)
            assert local[1] != listener.local_addr[1]
            new_endpoint = server._endpoint
            server.write(b"moved")
            assert await clock.run(client.readexactly(5), timeout=5) == b"moved"
            assert client.remote_addr[1] == local[1]  # the client followed the server
            client.close()
            server.close()
            await clock.run(asyncio.gather(server.wait_closed(), client.wait_closed()), 15)
            # after the draining period (Config.draining_period), not before
            closed_at = clock.now()
            await clock.run(new_endpoint.wait_closed(), timeout=10)  # not leaked
            assert new_endpoint.is_closing and clock.now() - closed_at <= 3.0 + 0.1
            assert not listener.endpoint.is_closing  # the listener still listens

    run(main(), 60)


def test_two_concurrent_migrations_leave_one_socket() -> None:
    async def main() -> None:
        cfg = roamlink.Config(draining_period=0.3)
        async with await roamlink.listen("127.0.0.1", 0, config=cfg) as listener:
            server = asyncio.create_task(_sink(listener))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=cfg)
            first = stream._endpoint
            payload = os.urandom(2 * 1024 * 1024)
            stream.write(payload[:1024 * 1024])
            results = await asyncio.gather(stream.migrate(local_addr=0),
                                           stream.migrate(local_addr=0),
                                           return_exceptions=True)
            conn = stream._conn
            assert stream._endpoint.socket_id == conn.paths.socket_id  # the socket in use
            assert stream.local_addr == results[-1][0] or stream.local_addr == results[0][0]
            live = list(first.driver.sockets.values())  # the sockets of this connection
            assert live == [stream._endpoint], live  # the others are closed
            assert first.is_closing
            stream.write(payload[1024 * 1024:])
            stream.write_eof()
            assert await stream.read() == b"ok"
            assert await server == hashlib.sha256(payload).digest()

    run(main(), 60)


def test_the_same_migration_requested_twice_completes_both_calls() -> None:
    async def main() -> None:
        try:
            listener = await roamlink.listen(["127.0.0.1", "127.0.0.2"], 0)
        except OSError as exc:
            import pytest

            pytest.skip(f"no 127.0.0.2 on this machine: {exc}")
        async with listener:
            server = asyncio.create_task(_sink(listener))
            port = listener.local_addr[1]
            stream = await roamlink.connect("127.0.0.1", port)
            stream.write(b"x" * 100_000)
            cfg_timeout = 2.0
            results = await asyncio.wait_for(asyncio.gather(
                stream.migrate(("127.0.0.2", port), timeout=cfg_timeout),
                stream.migrate(("127.0.0.2", port), timeout=cfg_timeout)), cfg_timeout + 1)
            assert results[0] == results[1] and results[0][1] == ("127.0.0.2", port)
            stream.write_eof()
            assert await stream.read() == b"ok"
            assert await server == hashlib.sha256(b"x" * 100_000).digest()

    run(main(), 60)

