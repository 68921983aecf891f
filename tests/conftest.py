"""Shared test helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine on a fresh event loop, failing (not hanging) after ``timeout``."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# network-namespace fixtures (nat_topology, nat_topology_rtt20, bottleneck_topology, ...)
from .netns_fixtures import (  # noqa: E402,F401
    balanced_topology,
    bottleneck_topology,
    bottleneck_topology_delayed,
    nat_topology,
    nat_topology_rtt20,
)
