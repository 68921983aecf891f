"""bench/run_all.py --quick keeps working: every line is JSON, every transport moves data.

No timing asserts: only that each transport delivered verified bytes at a positive rate,
that the scripts finished, and that no benchmark child process is left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def _bench_children() -> list[str]:
    """Command lines of live benchmark child processes started from this checkout."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if BENCH in cmd and "--role" in cmd:
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run_all.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    parsed = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, (proc.stderr[-2000:], [p for p in parsed if "error" in p])
    return parsed


def _summary(lines: list[dict[str, Any]], bench: str) -> dict[str, Any]:
    found = [ln for ln in lines if ln.get("summary") == bench]
    assert len(found) == 1, (bench, lines)
    return found[0]


# The QUIC stacks are benchmark-only dependencies (the `bench` extra); without them their
# runs must yield error lines, and everything else must still work.
MISSING = {m for m in ("aioquic", "qh3") if importlib.util.find_spec(m) is None}


def test_every_script_finished_without_errors(lines: list[dict[str, Any]]) -> None:
    finished = {ln["bench"] for ln in lines if ln.get("finished")}
    assert finished == {"compare", "bulk", "latency", "many"}
    errors = [ln for ln in lines if "error" in ln]
    assert all(ln.get("transport") in MISSING for ln in errors), errors
    for name in MISSING:
        assert any(ln.get("transport") == name for ln in errors), name


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_no_child_process_left_behind(lines: list[dict[str, Any]]) -> None:
    assert _bench_children() == []


def test_compare_every_transport_positive(lines: list[dict[str, Any]]) -> None:
    rates = _summary(lines, "compare")["mb_per_s"]
    expected = ["roamlink", "tcp", "raw_udp", *sorted({"aioquic", "qh3"} - MISSING)]
    for name in expected:
        assert rates[name] is not None and rates[name] > 0, (name, rates)
    runs = [ln for ln in lines if ln.get("bench") == "compare" and "run" in ln
            and ln["transport"] not in MISSING]
    assert runs and all(r["ok"] for r in runs)
    ratios = _summary(lines, "compare")["ratios"]
    assert ratios["roamlink/tcp"] > 0


def test_bulk_both_positive(lines: list[dict[str, Any]]) -> None:
    summary = _summary(lines, "bulk")
    assert summary["mb_per_s"]["roamlink"] > 0 and summary["mb_per_s"]["tcp"] > 0
    assert summary["ratio_roamlink_to_tcp"] > 0


def test_latency_percentiles(lines: list[dict[str, Any]]) -> None:
    for kind in ("roamlink", "tcp", "udp", "udp-sealed"):
        [line] = [ln for ln in lines if ln.get("bench") == "latency"
                  and ln.get("transport") == kind]
        assert line["ok"] and 0 < line["p50_us"] <= line["p99_us"] <= line["max_us"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="--pin needs Linux's affinity")
def test_latency_pinned_runs_both_ends_on_one_cpu() -> None:
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "latency.py"), "--quick",
                           "--strict", "--pin", str(cpu), "--only", "roamlink,udp"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    runs = [ln for ln in lines if ln.get("transport") in ("roamlink", "udp")]
    assert len(runs) == 2 and all(r["ok"] and r["client_cpus"] == [cpu] for r in runs), runs
    assert lines[-1]["pinned_cpu"] == cpu and lines[-1]["p50_us"]["roamlink"] > 0


def test_aead_cold_times_every_condition() -> None:
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "aead_cold.py"),
                           "--samples", "20", "--kib", "256"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    runs = {(ln["aead"], ln["before"]): ln for ln in lines if "aead" in ln}
    assert set(runs) == {(a, c) for a in ("chacha20-poly1305", "aes-128-gcm")
                         for c in ("warm", "woken", "read", "written")}
    assert all(r["first_call_us"] > 0 and r["next_calls_us"] > 0 for r in runs.values())
    assert lines[-1]["summary"] == "aead_cold" and lines[-1]["kib"] == 256


def test_inproc_roundtrip_evicting_reports_cold_time() -> None:
    """--evict reaches the readers of both transports on asyncio's loop (a cold figure is
    printed and the eviction's own time is left out of it)."""
    for extra in ([], ["--tcp"]):
        proc = subprocess.run([sys.executable, os.path.join(BENCH, "inproc_roundtrip.py"),
                               "30", "--evict", "64", *extra],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "WARM": "5"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        fields = dict(f.split("=") for f in proc.stdout.split()[1:])
        assert 0 < float(fields["cold_us_per_rt"]) <= float(fields["wall_us"]), fields
        assert float(fields["evictions_per_rt"]) >= 2, fields  # each end woke, evicted


def test_many_connections_all_echoed(lines: list[dict[str, Any]]) -> None:
    for kind in ("roamlink", "tcp"):
        [line] = [ln for ln in lines if ln.get("bench") == "many"
                  and ln.get("transport") == kind]
        assert line["ok"], line
        assert line["server_echoed_bytes"] == line["connections"] * line["echo_bytes_each"]
        assert line["kib_per_idle_connection"] is not None


def test_failures_become_error_lines_and_leave_no_process() -> None:
    """An unknown transport and a run killed by its timeout are reported, not fatal."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "compare.py"),
                           "--only", "nosuch,roamlink,tcp", "--size-mib", "256",
                           "--repeat", "1", "--timeout", "1"],
                          capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    runs = {ln["transport"]: ln for ln in lines if "run" in ln}
    assert "unknown transport" in runs["nosuch"]["error"]
    assert "error" in runs["roamlink"]  # 256 MiB cannot arrive within the 1 s timeout
    summary = lines[-1]
    assert summary["summary"] == "compare" and summary["mb_per_s"]["nosuch"] is None
    assert summary["ratios"]["roamlink/tcp"] is None
    assert _bench_children() == []
