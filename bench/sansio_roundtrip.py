"""CPU per 64-byte request/response round trip in the core alone (no sockets, no event loop).

Two ``Dispatcher``s hand each other the datagrams: the client sends, the server reads and
replies, the client reads, then both make their ACK passes. Measures ``time.thread_time()``
per round trip for both sides together; ``--profile`` adds a cProfile table (meaningful on
the pure variant: compiled functions are invisible to cProfile).

Usage: python bench/sansio_roundtrip.py [--count 20000] [--profile] [--plain]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import roamlink  # noqa: E402
from roamlink import Config  # noqa: E402
from roamlink.testing.packets import keyed_pair  # noqa: E402

A = ("10.0.0.2", 5000)
B = ("10.0.0.1", 4433)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--plain", action="store_true", help="insecure_plaintext on both ends")
    args = parser.parse_args()
    cfg = Config(insecure_plaintext=args.plain)
    client, server, connect = keyed_pair(cfg)
    conn = connect(B, 0.0)  # type: ignore[operator]
    for data, _ in conn.datagrams_to_send(0.0):
        server.datagram_received(data, A, 0.0)
    peer = server.accept_queue.popleft()
    for data, _ in peer.datagrams_to_send(0.0):
        client.datagram_received(data, B, 0.0)
    msg = b"x" * 64

    def round_trip(now: float) -> None:
        conn.send(msg)
        for data, _ in conn.datagrams_to_send(now):
            server.datagram_received(data, A, now)
        assert peer.read() == msg
        peer.send(msg)
        for data, _ in peer.datagrams_to_send(now):
            client.datagram_received(data, B, now)
        assert conn.read() == msg
        for data, _ in conn.datagrams_to_send(now):
            server.datagram_received(data, A, now)
        for data, _ in peer.datagrams_to_send(now):
            client.datagram_received(data, B, now)

    now = 0.01
    for _ in range(500):
        now += 0.0002
        round_trip(now)
    start = time.thread_time()
    for _ in range(args.count):
        now += 0.0002
        round_trip(now)
    per_rt = (time.thread_time() - start) / args.count
    print(f"compiled={roamlink.compiled} cpu_us_per_round_trip={per_rt * 1e6:.1f}")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            now += 0.0002
            round_trip(now)
        prof.disable()
        stats = pstats.Stats(prof)
        print(f"calls_per_round_trip={stats.total_calls / 2000:.0f}")  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
