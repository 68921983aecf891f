"""Packets that arrive over a candidate path are all acknowledged once it is proven."""

from __future__ import annotations

from roamlink.core.paths import PathManager


def test_thousands_of_candidate_packets_are_remembered_as_ranges() -> None:
    paths = PathManager(("10.0.0.2", 50000), random_bytes=lambda n: bytes(n))
    new = ("10.0.0.2", 61000)
    cand = paths.on_packet(0, new, 1200, 1000, True, 0.0, 0.1)
    assert cand is not None
    for pn in range(1001, 4000):  # a fast sender during one validation round trip
        if pn % 500 != 0:  # a few lost on the way
            paths.on_packet(0, new, 1200, pn, False, 0.001, 0.1)
    covered = sum(hi - lo for lo, hi in cand.pns)
    assert covered == 3000 - 5  # every packet that arrived will be acknowledged
    assert len(cand.pns) <= 32  # bounded: ranges, not numbers
