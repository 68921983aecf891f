"""Smoke test of bench/netns_bottleneck.py: real sockets through a tbf bottleneck between two
network namespaces, both controllers, transfers byte-exact. Root only (CI is root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import netns
from tests.support.paths import PACKAGE_PARENT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vegas_and_newreno_through_a_tbf_bottleneck_are_byte_exact() -> None:
    ok, reason = netns.ensure_tools()
    if not ok:
        pytest.skip(f"needs network namespaces: {reason}")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "netns_bottleneck.py"),
                          "--mib", "2", "--rate-mbit", "20"],
                         capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT))
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["cc"] for r in results] == ["vegas", "newreno"]
    for r in results:
        assert r["exact"], r
        assert r["goodput_MBps"] > 0 and r["min_rtt_ms"] > 0
