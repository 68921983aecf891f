"""What one AEAD call costs when the CPU caches are cold, as after a wake-up.

A round trip makes four ChaCha20-Poly1305 calls, and ``timeit`` says each costs about 1.3 µs.
But a process that has just been woken on a virtual machine (or has just had the CPU back from
another process) meets its code and data evicted from the caches, and then the first call walks
``cryptography``'s and OpenSSL's call path from memory. This script times that. Before each
sample it does one of: nothing ("warm"); sleeps 100 µs, so that the process is woken up as a
server is by its next request ("woken"); reads ``--kib`` KiB ("read"); writes ``--kib`` KiB
("written", the lines then also have to be written back). Then it times the first call and,
separately, the three calls after it. AES-GCM is measured beside ChaCha20-Poly1305 to
show that the cost is the call path's, not the cipher's (docs/profile.md, "Cold caches").

Usage: python bench/aead_cold.py [--samples 3000] [--kib 8192] [--size 64]
Prints one JSON line per (algorithm, condition) and a summary line.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import zlib
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, machine_info, percentile, rnd  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402


def sample(call: Callable[[], object], before: Callable[[], object] | None,
           samples: int) -> tuple[float, float]:
    """p50 µs of the first call after ``before()``, and of each of the three calls after it."""
    first: list[float] = []
    then: list[float] = []
    clock = time.perf_counter
    for _ in range(samples):
        if before is not None:
            before()
        t0 = clock()
        call()
        t1 = clock()
        call()
        call()
        call()
        t2 = clock()
        first.append(t1 - t0)
        then.append((t2 - t1) / 3)
    return percentile(sorted(first), 50) * 1e6, percentile(sorted(then), 50) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--kib", type=int, default=8192, help="KiB read or written")
    parser.add_argument("--size", type=int, default=64, help="plaintext bytes")
    args = parser.parse_args(argv)
    nonce, aad, plain = bytes(12), bytes(13), os.urandom(args.size)
    summary: dict[str, object] = {"bench": "aead_cold", "summary": "aead_cold",
                                  "samples": args.samples, "size": args.size,
                                  "kib": args.kib,
                                  **machine_info()}
    readable = bytes(args.kib * 1024)
    writable = bytearray(args.kib * 1024)
    line_bytes = bytes(len(writable[::64]))  # one byte per 64-byte cache line
    conditions: dict[str, Callable[[], object] | None] = {
        "warm": None,
        "woken": functools.partial(time.sleep, 1e-4),
        "read": functools.partial(zlib.crc32, readable),
        "written": functools.partial(writable.__setitem__, slice(None, None, 64), line_bytes),
    }
    for name, cls in (("chacha20-poly1305", ChaCha20Poly1305), ("aes-128-gcm", AESGCM)):
        aead = cls(bytes(32) if cls is ChaCha20Poly1305 else bytes(16))
        sealed = aead.encrypt(nonce, plain, aad)
        opener = functools.partial(aead.decrypt, nonce, sealed, aad)
        for condition, before in conditions.items():
            first, then = sample(opener, before, args.samples)
            emit({"bench": "aead_cold", "aead": name, "before": condition,
                  "first_call_us": rnd(first, 2), "next_calls_us": rnd(then, 2)})
            summary[f"{name}_{condition}_first_call_us"] = rnd(first, 2)
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
