"""Back-pressure on real sockets: write() beyond the send buffer makes drain() wait until the
peer's application reads; the receiver never buffers more than its window."""

from __future__ import annotations

import asyncio

import roamlink

from .conftest import run


async def _scenario() -> tuple[bool, int, int, bytes, bytes]:
    config = roamlink.Config(receive_window=128 * 1024, send_buffer_size=64 * 1024)
    listener = await roamlink.listen("127.0.0.1", 0, config=config)
    payload = bytes(range(256)) * 4096  # 1 MiB
    try:
        client = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=config)
        server = await listener.accept()
        client.write(payload)
        client.write_eof()
        drain = asyncio.ensure_future(client.drain())
        await asyncio.sleep(0.3)  # the server application reads nothing meanwhile
        blocked = not drain.done()
        peer_buffered = server.stats().recv_buffered
        sender_buffered = client.stats().send_buffered
        got = bytearray()
        while data := await server.read(8192):
            got.extend(data)
        await drain
        server.write(b"bye")
        server.write_eof()
        reply = await client.read()
        return blocked, peer_buffered, sender_buffered, bytes(got), reply
    finally:
        listener.close()


def test_drain_waits_while_the_peer_does_not_read() -> None:
    blocked, peer_buffered, sender_buffered, got, reply = run(_scenario(), timeout=60)
    assert blocked  # drain() cannot finish: the peer's window holds 128 KiB of the 1 MiB
    assert peer_buffered <= 128 * 1024 + 1200  # a peer cannot make us buffer beyond the window
    assert sender_buffered >= 1024 * 1024 - 128 * 1024 - 1200
    assert got == bytes(range(256)) * 4096 and reply == b"bye"
