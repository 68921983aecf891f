"""Real UDP sockets on loopback: the asyncio API end to end (few, bounded, tolerant)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

import roamlink
from roamlink import Config
from roamlink.errors import (
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    IdleTimeout,
    IncompleteRead,
    VersionMismatch,
)

from .conftest import run


async def _echo_server(listener: roamlink.Listener) -> None:
    async def handle(stream: roamlink.Stream) -> None:
        async with stream:
            while data := await stream.read(65536):
                stream.write(data)
                await stream.drain()
            stream.write_eof()

    async for stream in listener:
        asyncio.get_running_loop().create_task(handle(stream))


def test_echo_and_stats() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            server = asyncio.create_task(_echo_server(listener))
            payload = os.urandom(2 * 1024 * 1024)
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            assert stream.remote_addr == listener.local_addr
            reader = asyncio.create_task(stream.readexactly(len(payload)))
            stream.write(payload)
            await stream.drain()
            echoed = await reader
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            stats = stream.stats()
            assert stats.stream_bytes_sent == len(payload)
            assert stats.stream_bytes_received == len(payload)
            assert stats.packets_sent > 0 and stats.smoothed_rtt > 0 and stats.cwnd > 0
            stream.close()
            await stream.wait_closed()
            server.cancel()

    run(main(), 60)


def test_echo_over_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")

    async def main() -> None:
        try:
            listener = await roamlink.listen("::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        async with listener:
            server = asyncio.create_task(_echo_server(listener))
            stream = await roamlink.connect("::1", listener.local_addr[1])
            stream.write(b"hello over v6")
            stream.write_eof()
            assert await stream.read() == b"hello over v6"
            await stream.wait_closed()
            server.cancel()

    run(main(), 30)


def test_100_concurrent_connections_on_one_listener() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            server = asyncio.create_task(_echo_server(listener))
            port = listener.local_addr[1]

            async def client(i: int) -> bool:
                stream = await roamlink.connect("127.0.0.1", port)
                msg = f"client {i} ".encode() * 500
                stream.write(msg)
                stream.write_eof()
                got = await stream.read()
                await stream.wait_closed()
                return got == msg

            results = await asyncio.gather(*(client(i) for i in range(100)))
            assert all(results)
            assert listener.endpoint.dispatcher.stats.connections_accepted == 100
            server.cancel()

    run(main(), 120)


def test_half_close_and_early_data() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            async def server() -> None:
                stream = await listener.accept()
                request = await stream.read()  # until the client's FIN
                stream.write(b"got " + request)
                stream.write_eof()
                await stream.wait_closed()

            task = asyncio.create_task(server())
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1],
                                            early_data=b"early ")
            stream.write(b"and late")
            stream.write_eof()
            with pytest.raises(ConnectionClosed):
                stream.write(b"after eof")
            assert await stream.read() == b"got early and late"
            assert await stream.read() == b""
            with pytest.raises(IncompleteRead):
                await stream.readexactly(1)
            await stream.wait_closed()
            await task

    run(main(), 30)


def test_abort_raises_connection_reset_on_peer() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            server_side = await listener.accept()
            stream.abort(0x777, "testing abort")
            with pytest.raises(ConnectionReset) as info:
                await server_side.read()
            assert info.value.code == 0x777
            await stream.wait_closed()

    run(main(), 30)


def test_idle_timeout() -> None:
    async def main() -> None:
        cfg = Config(idle_timeout=0.5)
        async with await roamlink.listen("127.0.0.1", 0, config=cfg) as listener:
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=cfg)
            server_side = await listener.accept()
            listener.endpoint.pause_reading()
            # the server goes deaf: the client hears nothing and gives up
            with pytest.raises(IdleTimeout):
                await stream.read()
            listener.endpoint.resume_reading()
            server_side.abort()

    run(main(), 30)


def test_version_mismatch() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            with pytest.raises(VersionMismatch) as info:
                await roamlink.connect("127.0.0.1", listener.local_addr[1],
                                       config=Config(versions=(0x0A0A0A0A,)))
            assert info.value.supported == (roamlink.PROTOCOL_VERSION,)

    run(main(), 30)


def test_connect_timeout_to_silent_port() -> None:
    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        try:
            with pytest.raises(ConnectTimeout):
                await roamlink.connect("127.0.0.1", silent.getsockname()[1],
                                       config=Config(connect_timeout=0.5))
        finally:
            silent.close()

    run(main(), 30)


def test_close_semantics() -> None:
    async def main() -> None:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            stream = await roamlink.connect("127.0.0.1", listener.local_addr[1])
            server_side = await listener.accept()
            stream.write(b"last words")
            stream.close()
            assert await server_side.read() == b"last words"
            assert await server_side.read() == b""  # the FIN arrived after the data
            server_side.close()
            await asyncio.gather(stream.wait_closed(), server_side.wait_closed())
            assert stream.error is None and server_side.error is None
            with pytest.raises(ConnectionClosed):
                stream.write(b"too late")

    run(main(), 30)
