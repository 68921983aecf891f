"""Real sockets through the impairment relay: 10 ms each way and 1% loss each way, the
transfer completes byte-exact with the loss repaired (issue 7)."""

from __future__ import annotations

import asyncio
import hashlib
import random

import roamlink
from roamlink.tools.relay import Impairment, start_relay

from .conftest import run


async def _transfer(size: int, cc: str) -> tuple[bytes, bytes, roamlink.ConnectionStats]:
    config = roamlink.Config(congestion_control=cc)
    listener = await roamlink.listen("127.0.0.1", 0, config=config)
    relay = await start_relay(("127.0.0.1", 0), listener.local_addr[:2],
                              impairment=Impairment(delay=0.010, loss=0.01, seed=11))
    payload = random.Random(3).randbytes(size)
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        stream = await listener.accept()
        h = hashlib.sha256()
        while data := await stream.read(1 << 20):
            h.update(data)
        got.set_result(h.digest())
        stream.write(b"done")
        stream.write_eof()
        await stream.drain()

    server = asyncio.create_task(serve())
    try:
        stream = await roamlink.connect(*relay.local_addr, config=config)
        for i in range(0, size, 128 * 1024):
            stream.write(payload[i:i + 128 * 1024])
            await stream.drain()
        stream.write_eof()
        digest = await got
        assert await stream.read() == b"done"
        stats = stream.stats()
        await server
        return digest, hashlib.sha256(payload).digest(), stats
    finally:
        server.cancel()
        listener.close()
        relay.close()
        await relay.wait_closed()


def test_transfer_through_a_lossy_delayed_relay_is_byte_exact() -> None:
    received, sent, stats = run(_transfer(2 * 1024 * 1024, "vegas"), timeout=90)
    assert received == sent
    assert stats.packets_lost >= 1 and stats.retransmissions >= 1
    assert stats.min_rtt >= 0.020  # the relay's 10 ms each way
    assert stats.congestion_controller == "vegas"
