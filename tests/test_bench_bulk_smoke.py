"""bench/bulk.py keeps working: a tiny run, parsed as JSON (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bulk_benchmark_smoke() -> None:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bulk.py"),
                           "--size-mib", "1", "--timeout", "60"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    runs = [r for r in lines if "transport" in r]
    assert {r["transport"] for r in runs} == {"roamlink", "tcp"}
    assert all(r.get("ok") for r in runs), runs
    summary = lines[-1]
    assert summary["mb_per_s"]["roamlink"] > 0 and summary["ratio_roamlink_to_tcp"] > 0
