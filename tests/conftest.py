"""Shared test helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import roamlink
from roamlink.api.listener import Listener
from roamlink.io.endpoint import Endpoint
from roamlink.testing.clock import VirtualClock

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine on a fresh event loop, failing (not hanging) after ``timeout``."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def virtual_pair(clock: VirtualClock, config: roamlink.Config
                       ) -> tuple[Listener, roamlink.Stream, roamlink.Stream]:
    """A listener on 127.0.0.1 and a connected client, both on ``clock`` (real sockets);
    returns (listener, client stream, server stream)."""
    loopback = ("127.0.0.1", 0)
    listener = Listener(await Endpoint.create(config, loopback, accept_new=True,
                                              scheduler=clock))
    client_ep = await Endpoint.create(config, loopback, scheduler=clock)
    client_ep.owns_lifetime = True  # as connect() does with the socket it opens
    accepted = asyncio.ensure_future(listener.accept())
    client = await clock.run(roamlink.connect(*listener.local_addr, config=config,
                                              endpoint=client_ep), timeout=10)
    server = await clock.run(accepted, timeout=10)
    return listener, client, server


# network-namespace fixtures (nat_topology, nat_topology_rtt20, bottleneck_topology, ...)
from .netns_fixtures import (  # noqa: E402,F401
    bottleneck_topology,
    bottleneck_topology_delayed,
    nat_topology,
    nat_topology_rtt20,
)
