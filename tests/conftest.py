"""Shared test helpers, and the test tiers.

Tiers are pytest markers given here by file name (no test file names its own tier, so new
files from parallel work never conflict): ``unit`` (one module, no network), ``sim`` (the
simulated network, virtual clock), ``loopback`` (real sockets on 127.0.0.1 or ::1), ``cli``
(the command line, as subprocesses), ``netns`` (network namespaces, root only); ``slow``
marks what the inner loop skips: ``pytest -m "not slow"`` runs in under 30 s on an idle
machine, CI runs everything. See ``TIERS`` and ``SLOW`` below.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import roamlink
from roamlink.api.listener import Listener
from roamlink.io.endpoint import Endpoint
from roamlink.testing.clock import VirtualClock

T = TypeVar("T")

# The CLI keeps its server key and known_hosts in ROAMLINK_CONFIG_DIR. Point every test, and
# every `roamlink` subprocess (they inherit the environment), at a private directory, so that
# no test reads or writes the real ~/.config/roamlink of whoever runs the suite.
_CONFIG_DIR = tempfile.mkdtemp(prefix="roamlink-test-config-")
os.environ["ROAMLINK_CONFIG_DIR"] = _CONFIG_DIR
atexit.register(shutil.rmtree, _CONFIG_DIR, ignore_errors=True)

#: Each test file's tier. A file not listed gets one from its name (``netns``, ``cli``,
#: ``sim``, ``loopback`` in it), or from its fixtures (a netns topology), else ``unit``.
TIERS: dict[str, str] = {
    "test_buffers.py": "unit",
    "test_idle_sessions.py": "sim",
    "test_forward_bridge.py": "loopback",
    "test_config.py": "unit",
    "test_congestion_vegas.py": "unit",
    "test_recovery_rack.py": "unit",
    "test_hostile_input.py": "unit",
    "test_hot_path.py": "unit",
    "test_keys.py": "unit",
    "test_migration_cids.py": "unit",
    "test_migration_pending_pns.py": "unit",
    "test_crypto_handshake.py": "unit",
    "test_crypto_noise.py": "unit",
    "test_crypto_protection.py": "unit",
    "test_fuzz_slice.py": "unit",
    "test_retry_token.py": "unit",
    "test_states.py": "unit",
    "test_timers.py": "unit",
    "test_wire.py": "unit",
    "test_congestion_bbr.py": "sim",
    "test_congestion_figures.py": "sim",
    "test_congestion_jitter.py": "sim",
    "test_logging.py": "sim",
    "test_resource_bounds.py": "sim",
    "test_retry.py": "sim",
    "test_review_defects.py": "sim",
    "test_migration_sim.py": "sim",
    "test_migration_sim_adversarial.py": "sim",
    "test_recovery_close.py": "sim",
    "test_recovery_flow_control.py": "sim",
    "test_recovery_timers.py": "sim",
    "test_sim_lifecycle.py": "sim",
    "test_sim_transfer.py": "sim",
    "test_bench_bulk_smoke.py": "loopback",
    "test_bench_smoke.py": "loopback",
    "test_flood.py": "loopback",
    "test_io_batching.py": "loopback",
    "test_loopback.py": "loopback",
    "test_migration_cancel.py": "loopback",
    "test_migration_loopback.py": "loopback",
    "test_recovery_backpressure.py": "loopback",
    "test_recovery_relay.py": "loopback",
    "test_relay.py": "loopback",
    "test_steering.py": "loopback",
    "test_stream_waiters.py": "loopback",
    "test_virtual_clock.py": "loopback",
    "test_workers.py": "loopback",
    "test_cli.py": "cli",
    "test_cli_keys.py": "cli",
    "test_forward_cli.py": "cli",
    "test_forward_netns.py": "netns",  # and 50 clients on loopback: slow either way
    "test_migration_netns.py": "netns",
    "test_netns_bottleneck_smoke.py": "netns",
    "test_netns_fixture.py": "netns",
    "test_scaling_netns.py": "netns",
}

#: What ``-m "not slow"`` skips: whole files, or single tests (``file::name``, every
#: parametrisation of it); every cli and netns test too (subprocesses, namespaces: seconds
#: each). Measured with ``--durations``: each entry takes seconds; the rest together stays
#: under 30 s on an idle machine.
SLOW: set[str] = {
    "test_bench_bulk_smoke.py",
    "test_bench_smoke.py",
    "test_congestion_figures.py",
    "test_congestion_jitter.py",
    "test_congestion_bbr.py::test_bbr_probes_the_rtt_when_its_minimum_is_stale",
    "test_migration_sim.py::test_randomized_transfers_with_rebindings_are_hash_exact",
    "test_migration_sim_adversarial.py::"
    "test_1000_transfers_sharing_server_sockets_with_random_rebindings",
    "test_sim_transfer.py::test_8mib_each_way_with_loss_reordering_and_duplication",
    "test_recovery_timers.py::test_rtt_estimate_with_delayed_acks_and_jitter",
    "test_recovery_timers.py::test_reordering_beyond_the_thresholds_is_counted_as_spurious",
    "test_recovery_flow_control.py::test_memory_stays_bounded_during_a_long_lossy_transfer",
    "test_recovery_timers.py::test_slow_start_again_after_idle",
    "test_sim_transfer.py::test_many_connections_on_one_server_socket",
    "test_workers.py",  # worker processes: a server process per test
    "test_flood.py",  # seconds of forged SYNs by design
    "test_forward_bridge.py::test_slow_tcp_reader_bounds_the_buffers_of_both_sides",
    "test_forward_bridge.py::test_vanished_client_releases_the_target_after_the_idle_timeout",
}
_SLOW_TIERS = frozenset({"cli", "netns"})

_NETNS_FIXTURES = frozenset({"nat_topology", "nat_topology_rtt20", "bottleneck_topology",
                             "bottleneck_topology_delayed", "balanced_topology"})


def tier_of(filename: str, fixtures: set[str] | frozenset[str] = frozenset()) -> str:
    """The tier of a test in ``filename`` (see TIERS) that uses ``fixtures``."""
    if filename in TIERS:
        return TIERS[filename]
    if "netns" in filename or fixtures & _NETNS_FIXTURES:
        return "netns"
    for tier in ("cli", "sim", "loopback"):
        if tier in filename:
            return tier
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        filename = Path(str(item.fspath)).name
        fixtures = set(getattr(item, "fixturenames", ()))
        tier = tier_of(filename, fixtures)
        item.add_marker(getattr(pytest.mark, tier))
        name = item.name.split("[", 1)[0]
        if tier in _SLOW_TIERS or filename in SLOW or f"{filename}::{name}" in SLOW:
            item.add_marker(pytest.mark.slow)


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
    balanced_topology,
    bottleneck_topology,
    bottleneck_topology_delayed,
    nat_topology,
    nat_topology_rtt20,
)
