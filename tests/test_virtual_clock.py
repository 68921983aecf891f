"""The real socket layer on a virtual clock: real datagrams through the kernel, timeouts that
take no wall time (roamlink.testing.clock.VirtualClock injected as the endpoint's scheduler)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import roamlink
from roamlink import Config
from roamlink.errors import IdleTimeout
from roamlink.io.endpoint import Endpoint
from roamlink.testing.clock import VirtualClock

from .conftest import run, virtual_pair

LOOPBACK = ("127.0.0.1", 0)


def test_connect_timeout_over_a_real_socket_takes_no_wall_time() -> None:
    """Nobody answers: ConnectTimeout when the virtual clock reaches connect_timeout."""
    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never reads
        silent.bind(LOOPBACK)
        clock = VirtualClock(1000.0)
        cfg = Config(connect_timeout=10.0)
        endpoint = await Endpoint.create(cfg, LOOPBACK, scheduler=clock)
        started = time.monotonic()
        try:
            with pytest.raises(roamlink.ConnectTimeout):
                await clock.run(roamlink.connect(*silent.getsockname(), config=cfg,
                                                 endpoint=endpoint), timeout=60)
        finally:
            endpoint.close()
            silent.close()
        assert 10.0 <= clock.now() - 1000.0 < 11.0  # the connect timeout, on the virtual clock
        assert time.monotonic() - started < 5.0  # ...not on the wall clock (typically ~50 ms)
        assert endpoint.udp.io.datagrams_out >= 3  # the SYN went out, and was retransmitted

    run(main(), 30)


def test_idle_timeout_when_the_peer_falls_silent() -> None:
    """The server's socket vanishes (a crash: no CLOSE sent): the client's keepalives go
    unanswered and the connection ends with IdleTimeout after idle_timeout virtual seconds,
    in milliseconds of wall time."""
    async def main() -> None:
        clock = VirtualClock()
        cfg = Config(idle_timeout=30.0, keepalive_interval=10.0)
        listener, client, server = await virtual_pair(clock, cfg)
        client.write(b"hello")
        assert await clock.run(server.readexactly(5), timeout=5) == b"hello"
        silent_from = clock.now()
        listener.endpoint.close()
        started = time.monotonic()
        with pytest.raises(IdleTimeout):
            await clock.run(client.read(), timeout=120)
        idle = clock.now() - silent_from
        assert 30.0 <= idle < 30.5, idle  # idle_timeout after the last packet heard
        assert time.monotonic() - started < 5.0
        assert client.stats().packets_sent > 3  # keepalives were sent meanwhile
        await listener.endpoint.wait_closed()

    run(main(), 30)


def test_data_flows_and_closes_in_order_on_the_virtual_clock() -> None:
    """A transfer and an orderly close (FIN/ACK each way, draining) under the virtual clock."""
    async def main() -> None:
        clock = VirtualClock()
        cfg = Config(draining_period=3.0)
        listener, client, server = await virtual_pair(clock, cfg)
        payload = bytes(range(256)) * 1024
        client.write(payload)
        client.write_eof()
        assert await clock.run(server.read(), timeout=30) == payload
        server.close()
        await clock.run(asyncio.gather(server.wait_closed(), client.wait_closed()), timeout=30)
        assert client.error is None and server.error is None
        # the client's own socket closes when its last connection has drained
        await clock.run(client_socket_closed(client), timeout=10)
        await clock.run(listener.wait_closed(), timeout=30)

    async def client_socket_closed(stream: roamlink.Stream) -> None:
        endpoint = stream._endpoint  # noqa: SLF001 - which socket is not public
        await endpoint.wait_closed()

    run(main(), 30)
