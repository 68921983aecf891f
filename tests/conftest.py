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


# --------------------------------------------------------------------- network namespaces
import pytest  # noqa: E402

from roamlink.testing import netns  # noqa: E402


def _require_netns() -> None:
    ok, reason = netns.ensure_tools()
    if not ok:
        pytest.skip(f"needs network namespaces: {reason}")


@pytest.fixture
def nat_topology():  # type: ignore[no-untyped-def]
    """client ns -- NAT router ns -- server ns, removed afterwards (also on failure)."""
    _require_netns()
    with netns.NatTopology() as topo:
        yield topo


@pytest.fixture
def bottleneck_topology():  # type: ignore[no-untyped-def]
    """Two namespaces joined by a veth whose a->b direction is shaped to 50 Mbit/s."""
    _require_netns()
    with netns.BottleneckTopology(rate="50mbit", queue_packets=100) as topo:
        yield topo
