"""A cancelled migrate() leaves the Stream consistent with the path the connection uses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import roamlink

from .conftest import run


async def _sink(listener: roamlink.Listener) -> bytes:
    stream = await listener.accept()
    digest = hashlib.sha256()
    while chunk := await stream.read(1 << 20):
        digest.update(chunk)
    stream.write(b"ok")
    stream.write_eof()
    return digest.digest()


def test_cancelled_migrate_leaves_a_consistent_stream() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            server = asyncio.create_task(_sink(listener))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
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
            await asyncio.sleep(0.5)  # whatever validation was under way has ended
            # the socket the stream reports is the one the connection sends from
            assert stream._endpoint.local_id == conn.paths.socket_id
            assert not conn.paths.candidates and stream.local_addr[1] > 0
            stream.write(payload[half:])
            stream.write_eof()
            assert await stream.read() == b"ok"
            assert await server == hashlib.sha256(payload).digest()
            await stream.wait_closed()

    run(main(), 60)


def test_server_side_migration_socket_closes_with_its_connection() -> None:
    """A socket that migrate(local_addr=...) opened serves that one connection only: it is
    closed when the connection ends, also on a server (whose listener socket stays open)."""
    async def main() -> None:
        cfg = roamlink.Config(draining_period=0.3)
        async with await roamlink.listen("127.0.0.1", 0, config=cfg) as listener:
            accepted = asyncio.create_task(listener.accept())
            client = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=cfg)
            client.write(b"hello")
            server = await accepted
            assert await server.readexactly(5) == b"hello"
            local, _ = await server.migrate(local_addr=0)  # the server moves to a new port
            assert local[1] != listener.local_addr[1]
            new_endpoint = server._endpoint
            server.write(b"moved")
            assert await client.readexactly(5) == b"moved"
            assert client.remote_addr[1] == local[1]  # the client followed the server
            client.close()
            server.close()
            await asyncio.wait_for(server.wait_closed(), 15)
            await asyncio.wait_for(client.wait_closed(), 15)
            for _ in range(1000):  # after the draining period (Config.draining_period)
                if new_endpoint._closing:
                    break
                await asyncio.sleep(0.01)
            assert new_endpoint._closing  # not leaked
            assert not listener.endpoint._closing  # the listener still listens

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
            assert stream._endpoint.local_id == conn.paths.socket_id  # the socket in use
            assert stream.local_addr == results[-1][0] or stream.local_addr == results[0][0]
            live = [ep for ep in (first, *_endpoints_of(conn)) if not ep._closing]
            assert live == [stream._endpoint], live  # the others are closed
            stream.write(payload[1024 * 1024:])
            stream.write_eof()
            assert await stream.read() == b"ok"
            assert await server == hashlib.sha256(payload).digest()

    run(main(), 60)


def _endpoints_of(conn: object) -> list:  # type: ignore[type-arg]
    from roamlink.io import endpoint

    return [ep for ep in list(endpoint._ENDPOINTS.values()) if conn in ep.observers]


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
