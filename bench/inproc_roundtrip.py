"""Both ends of bench/latency.py's 64-byte round trip in ONE process and event loop: the CPU
per round trip (both sides together), without the wake-ups of two processes.

docs/profile.md's instruction counts run this under ``valgrind --tool=callgrind`` with
``--slow 200``: valgrind makes time pass ~50-200x slower, so the connections' clock and timer
delays are slowed by the same factor, or the ACK-delay and probe timers would fire on every
round trip and swamp the figure.

``--evict KIB`` reads a KIB-kibibyte buffer (``zlib.crc32``) before every wake-up of a
socket reader, so that each end meets its code and data evicted from the CPU caches, as it does
after a wake-up on another CPU or a context switch (docs/profile.md, "Cold caches"); the time
spent evicting is measured and left out of ``cold_us_per_rt``, and under callgrind's cache
simulation the misses inside ``crc32_z`` are the eviction's own. The hook wraps the loop's
reader callbacks, so it reaches TCP only on asyncio's own loop (uvloop reads TCP in libuv).

Usage: python bench/inproc_roundtrip.py [count] [--tcp] [--uvloop] [--profile] [--slow K]
       [--evict KIB]
Prints one line: ``<kind> compiled=<bool> cpu_us_per_rt=... wall_us=...`` (and
``cold_us_per_rt=... evictions_per_rt=...`` with ``--evict``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import zlib
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

import _common  # noqa: E402

import roamlink  # noqa: E402


def _slow_clock(k: float) -> None:
    """Run the connections' clock and timers ``k`` times slower (for valgrind)."""
    import roamlink.io.clock as clock

    t0 = time.monotonic()
    mono = time.monotonic
    clock.LoopScheduler.now = staticmethod(lambda: t0 + (mono() - t0) / k)  # type: ignore[method-assign]
    orig_init = clock.LoopScheduler.__init__

    def init(self: Any, loop: asyncio.AbstractEventLoop) -> None:
        orig_init(self, loop)
        self.call_later = lambda d, cb: loop.call_later(d * k, cb)

    clock.LoopScheduler.__init__ = init  # type: ignore[method-assign]


class _Evictor:
    """Evicts the CPU caches before every reader callback of the running loop."""

    def __init__(self, kib: int) -> None:
        self.buf = bytes(kib * 1024)
        self.seconds = 0.0
        self.count = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        # (a selector loop's transports register through _add_reader, roamlink through
        # add_reader, which calls it; uvloop has only add_reader)
        name = "_add_reader" if hasattr(loop, "_add_reader") else "add_reader"
        register = getattr(loop, name)

        def add_reader(fd: Any, callback: Any, *args: Any) -> Any:
            def evict_then_run(*cb_args: Any) -> None:
                t = time.perf_counter()
                zlib.crc32(self.buf)
                self.seconds += time.perf_counter() - t
                self.count += 1
                callback(*cb_args)
            return register(fd, evict_then_run, *args)

        setattr(loop, name, add_reader)


async def main(kind: str, count: int, profile: bool, evictor: _Evictor | None = None) -> None:
    if evictor is not None:
        evictor.install(asyncio.get_running_loop())
    async def echo(stream: Any) -> None:
        try:
            while True:
                msg = await stream.readexactly(64)
                stream.write(msg)
                await stream.drain()
        except Exception:  # end of stream
            pass
        finally:
            stream.close()

    port, close = await _common.stream_server(kind, echo)
    stream = await _common.stream_connect(kind, port)
    msg = os.urandom(64)

    async def rounds(n: int) -> None:
        for _ in range(n):
            stream.write(msg)
            await stream.drain()
            await stream.readexactly(64)

    await rounds(int(os.environ.get("WARM", "1000")))
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        await rounds(count)
        prof.disable()
        stats = pstats.Stats(prof)
        print("calls per round trip", stats.total_calls / count)  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(40)
    evicting = evictor.seconds if evictor is not None else 0.0
    evictions = evictor.count if evictor is not None else 0
    cpu, wall = time.thread_time(), time.perf_counter()
    await rounds(count)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    line = (f"{kind} compiled={roamlink.compiled} cpu_us_per_rt={cpu / count * 1e6:.1f} "
            f"wall_us={wall / count * 1e6:.1f}")
    if evictor is not None:
        cold = wall - (evictor.seconds - evicting)
        line += (f" cold_us_per_rt={cold / count * 1e6:.1f}"
                 f" evictions_per_rt={(evictor.count - evictions) / count:.1f}")
    print(line)
    stream.write_eof()
    stream.close()
    await close()


def _take_option(argv: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` from ``argv``; the value, or None when absent."""
    if name not in argv:
        return None
    at = argv.index(name)
    value = argv[at + 1]
    del argv[at:at + 2]
    return value


if __name__ == "__main__":
    argv = sys.argv[1:]
    slow = _take_option(argv, "--slow")
    if slow is not None:
        _slow_clock(float(slow))
    evict = _take_option(argv, "--evict")
    evictor = _Evictor(int(evict)) if evict is not None else None
    n = next((int(a) for a in argv if a.isdigit()), 20000)
    _common.run_loop(main("tcp" if "--tcp" in argv else "roamlink", n, "--profile" in argv,
                          evictor), "--uvloop" in argv)
