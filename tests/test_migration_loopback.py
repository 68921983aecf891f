"""Active migration over real loopback sockets, mid-transfer, hash-exact."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

import roamlink
from roamlink import Config, MigrationError, MigrationTimeout, PathChanged

from .conftest import run


async def _sink(listener: roamlink.Listener) -> tuple[bytes, roamlink.Stream]:
    stream = await listener.accept()
    digest = hashlib.sha256()
    while chunk := await stream.read(1 << 20):
        digest.update(chunk)
    stream.write(b"ok")
    stream.write_eof()
    return digest.digest(), stream


def test_migrate_to_new_local_port_mid_transfer() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            server = asyncio.create_task(_sink(listener))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            events = stream.path_events()
            payload = os.urandom(8 * 1024 * 1024)
            old_local = stream.local_addr
            half = len(payload) // 2
            stream.write(payload[:half])
            await stream.drain()
            local, remote = await stream.migrate(local_addr=0)  # a new local port
            assert local[1] != old_local[1] and local == stream.local_addr
            assert remote == listener.local_addr
            stream.write(payload[half:])
            stream.write_eof()
            assert await stream.read() == b"ok"
            digest, server_stream = await server
            assert digest == hashlib.sha256(payload).digest()
            assert server_stream.remote_addr[1] == local[1]  # the server followed
            event = await asyncio.wait_for(events.__anext__(), 5)
            assert isinstance(event, PathChanged) and event.reason == "active"
            assert stream.stats().path_changes == 1
            await stream.wait_closed()

    run(main(), 60)


def test_migrate_to_another_server_address() -> None:
    async def main() -> None:
        try:
            listener = await roamlink.listen(["127.0.0.1", "127.0.0.2"], 0)
        except OSError as exc:
            pytest.skip(f"no 127.0.0.2 on this machine: {exc}")
        async with listener:
            server = asyncio.create_task(_sink(listener))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            stream.write(b"a" * 100_000)
            await stream.drain()
            port = listener.local_addr[1]
            local, remote = await stream.migrate(f"127.0.0.2:{port}")
            assert remote == ("127.0.0.2", port)
            stream.write(b"b" * 100_000)
            stream.write_eof()
            assert await stream.read() == b"ok"
            digest, _ = await server
            assert digest == hashlib.sha256(b"a" * 100_000 + b"b" * 100_000).digest()

    run(main(), 60)


def test_failed_migration_keeps_the_old_path() -> None:
    async def main() -> None:
        cfg = Config(path_validation_timeout=0.5)
        async with await roamlink.listen("127.0.0.1", 0, config=cfg) as listener:
            server = asyncio.create_task(_sink(listener))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=cfg)
            silent = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            nobody = silent[0].get_extra_info("sockname")
            with pytest.raises(MigrationTimeout):
                await stream.migrate(nobody)  # a bound port that never answers
            silent[0].close()
            assert stream.remote_addr == listener.local_addr
            with pytest.raises(MigrationError):
                await stream.migrate(stream.remote_addr)  # already there
            stream.write(b"still here")
            stream.write_eof()
            assert await stream.read() == b"ok"
            digest, _ = await server
            assert digest == hashlib.sha256(b"still here").digest()

    run(main(), 60)


def test_icmp_errors_never_close_anything() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            server = asyncio.create_task(_sink(listener))
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            stream.write(b"x" * 200_000)
            # what a socket reports when a stale NAT mapping draws ICMP port unreachable
            for _ in range(50):
                listener.endpoint.udp.error_received(ConnectionRefusedError(111, "refused"))
            stream.write(b"y" * 200_000)
            stream.write_eof()
            assert await stream.read() == b"ok"
            digest, _ = await server
            assert digest == hashlib.sha256(b"x" * 200_000 + b"y" * 200_000).digest()
            assert listener.endpoint.udp.errors == 50

    run(main(), 60)
