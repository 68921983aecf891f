"""Back-pressure on real sockets: write() beyond the send buffer makes drain() wait until the
peer's application reads; the receiver never buffers more than its window."""

from __future__ import annotations

import asyncio

import roamlink
from roamlink.testing.clock import VirtualClock

from .conftest import run, virtual_pair


async def _read_all(stream: roamlink.Stream) -> bytes:
    got = bytearray()
    while data := await stream.read(8192):
        got.extend(data)
    return bytes(got)


async def _scenario() -> tuple[bool, int, int, bytes, bytes]:
    config = roamlink.Config(receive_window=128 * 1024, send_buffer_size=64 * 1024)
    clock = VirtualClock()  # real sockets, virtual time: the wait below costs no wall time
    listener, client, server = await virtual_pair(clock, config)
    payload = bytes(range(256)) * 4096  # 1 MiB
    try:
        client.write(payload)
        client.write_eof()
        drain = asyncio.ensure_future(client.drain())
        await clock.sleep(0.3)  # the server application reads nothing meanwhile
        blocked = not drain.done()
        peer_buffered = server.stats().recv_buffered
        sender_buffered = client.stats().send_buffered
        got = await clock.run(_read_all(server), timeout=30)
        await clock.run(drain, timeout=30)
        server.write(b"bye")
        server.write_eof()
        reply = await clock.run(client.read(), timeout=30)
        return blocked, peer_buffered, sender_buffered, got, reply
    finally:
        listener.close()


def test_drain_waits_while_the_peer_does_not_read() -> None:
    blocked, peer_buffered, sender_buffered, got, reply = run(_scenario(), timeout=60)
    assert blocked  # drain() cannot finish: the peer's window holds 128 KiB of the 1 MiB
    assert peer_buffered <= 128 * 1024 + 1200  # a peer cannot make us buffer beyond the window
    assert sender_buffered >= 1024 * 1024 - 128 * 1024 - 1200
    assert got == bytes(range(256)) * 4096 and reply == b"bye"
