"""Real sockets: a SYN flood (2,000 forged SYNs a second from 16 ports) does not keep a
genuine client out (bench/flood.py, shortened)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "flood.py"), "--flood", "5",
         "--repeat", "1", "--transfer", "1.0"],
        capture_output=True, timeout=120, check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith(b"{")]
    assert lines, proc.stderr.decode(errors="replace")[-2000:]
    result: dict[str, Any] = lines[-1]
    return result


def test_genuine_client_connects_and_moves_data_during_a_syn_flood() -> None:
    """The flood's figures (goodput during the flood >= 0.5 of the baseline, connect < 1 s)
    are bench/flood.py's to measure on a quiet machine; here, beside other test processes on
    two cores, the test holds what must not depend on timing: every transfer arrives intact,
    the client gets in and moves data while the flood runs, and the listener's state and
    memory stay bounded."""
    result = _run()
    assert result["forged_syns"] >= 9000
    assert result["all_exact"]
    # connected during the flood, well inside the handshake's own timeout (10 s)
    assert result["connect_during_flood_max_s"] < 5.0, result
    # not starved: a tenth of the baseline is far below the benchmark's 0.5 target, and a
    # listener that let the flood in would move nothing at all
    assert result["flooded_ratio"] >= 0.1, result
    assert result["server_rss_growth_mib"] <= 64
    # the listener kept no state for the flood beyond its RETRY threshold, and none after
    assert result["half_open_max"] <= 64 + 4 and result["half_open_after"] == 0
    assert result["retries_sent"] >= 8000
