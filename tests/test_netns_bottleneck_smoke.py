"""Smoke test of bench/netns_bottleneck.py: real sockets through a tbf bottleneck between two
network namespaces, both controllers, transfers byte-exact. Root only (CI is root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0
                    or shutil.which("ip") is None or shutil.which("tc") is None,
                    reason="needs root and iproute2 to create network namespaces")
def test_vegas_and_newreno_through_a_tbf_bottleneck_are_byte_exact() -> None:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "netns_bottleneck.py"),
                          "--mib", "2", "--rate-mbit", "20"],
                         capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["cc"] for r in results] == ["vegas", "newreno"]
    for r in results:
        assert r["exact"], r
        assert r["goodput_MBps"] > 0 and r["min_rtt_ms"] > 0
