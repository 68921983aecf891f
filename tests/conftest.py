"""Shared test helpers."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# The CLI keeps its server key and known_hosts in ROAMLINK_CONFIG_DIR. Point every test, and
# every `roamlink` subprocess (they inherit the environment), at a private directory, so that
# no test reads or writes the real ~/.config/roamlink of whoever runs the suite.
_CONFIG_DIR = tempfile.mkdtemp(prefix="roamlink-test-config-")
os.environ["ROAMLINK_CONFIG_DIR"] = _CONFIG_DIR
atexit.register(shutil.rmtree, _CONFIG_DIR, ignore_errors=True)


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
