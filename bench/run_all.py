"""Run every benchmark (compare, bulk, latency, many) and print their JSON lines.

Each script runs as its own subprocess with a timeout; a script that fails or times out
yields a JSON line with an "error" field and the others still run.

Usage: python bench/run_all.py [--quick] [--uvloop] [--only compare,bulk,latency,many]
       [--timeout s]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import BENCH_DIR, SRC, emit, machine_info

SCRIPTS = ("compare", "bulk", "latency", "many")


def run_script(name: str, extra: list[str], timeout: float) -> bool:
    """Run one script, relay its JSON lines; False if it failed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.join(BENCH_DIR, f"{name}.py"), *extra]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        # subprocess.run killed the script; its children die with it (PR_SET_PDEATHSIG).
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        for line in out.splitlines():
            _relay(name, line)
        emit({"bench": name, "error": f"timed out after {timeout:g} s"})
        return False
    for line in proc.stdout.splitlines():
        _relay(name, line)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        emit({"bench": name, "error": f"exit code {proc.returncode}: {tail}"})
        return False
    emit({"bench": name, "finished": True, "seconds": round(time.monotonic() - start, 2)})
    return True


def _relay(name: str, line: str) -> None:
    if not line.strip():
        return
    try:
        json.loads(line)
    except ValueError:
        emit({"bench": name, "error": "non-JSON output", "line": line[:200]})
        return
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a few seconds each")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--only", default=",".join(SCRIPTS))
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per script (quick: 120, else 1800)")
    args = parser.parse_args(argv)
    timeout = args.timeout or (120.0 if args.quick else 1800.0)
    extra = [*(["--quick"] if args.quick else []), *(["--uvloop"] if args.uvloop else [])]
    emit({"bench": "run_all", "quick": args.quick, "loop": "uvloop" if args.uvloop else "asyncio",
          **machine_info()})
    ok = True
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        if name not in SCRIPTS:
            emit({"bench": name, "error": "unknown benchmark"})
            ok = False
            continue
        ok = run_script(name, extra, timeout) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
