"""pytest fixtures for network-namespace tests (root only; skip with a reason elsewhere).

Wire into a conftest with either
    pytest_plugins = ["netns_fixtures"]          # in the rootdir-level conftest.py
or
    from netns_fixtures import bottleneck_topology, nat_topology  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.balancer import BalancedTopology, ensure_nft
from tests.support.netns import BottleneckTopology, NatTopology, cleanup_stale, ensure_tools


def _require_netns() -> None:
    ok, reason = ensure_tools()
    if not ok:
        pytest.skip(f"netns unavailable: {reason}")
    cleanup_stale()


@pytest.fixture
def nat_topology() -> Iterator[NatTopology]:
    """client ns -> NAT router ns (SNAT --random-fully) -> server ns."""
    _require_netns()
    with NatTopology() as topo:
        yield topo


@pytest.fixture
def bottleneck_topology() -> Iterator[BottleneckTopology]:
    """Two namespaces joined by a 50 Mbit/s tbf-shaped veth (both directions, ~100 pkt queue)."""
    _require_netns()
    with BottleneckTopology(rate="50mbit", limit_packets=100) as topo:
        yield topo


@pytest.fixture
def nat_topology_rtt20() -> Iterator[NatTopology]:
    """Like nat_topology, with a 10 ms one-way TUN delay line router<->server (RTT ~20 ms)."""
    _require_netns()
    with NatTopology(link_delay_ms=10.0) as topo:
        yield topo


@pytest.fixture
def bottleneck_topology_delayed() -> Iterator[BottleneckTopology]:
    """50 Mbit/s tbf both ways over a 10 ms one-way delay line (RTT ~20 ms, BDP ~125 kB)."""
    _require_netns()
    with BottleneckTopology(rate="50mbit", limit_packets=100, link_delay_ms=10.0) as topo:
        yield topo


@pytest.fixture
def balanced_topology() -> Iterator[BalancedTopology]:
    """client ns -> NAT router ns -> nftables CID-routing balancer ns -> server A / B ns."""
    _require_netns()
    ok, reason = ensure_nft()
    if not ok:
        pytest.skip(f"nftables unavailable: {reason}")
    with BalancedTopology() as topo:
        yield topo
