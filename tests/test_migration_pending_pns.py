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


def test_a_small_challenge_is_retried_on_time() -> None:
    """An address that sent us a small packet may only get small challenges (3x what it
    sent). Their retries must be timed too: the path timer used to wait for the deadline
    (3 s) unless the budget allowed a padded one, so a lost small challenge was retried only
    when some other event happened to wake the connection."""
    paths = PathManager(("10.0.0.2", 50000), random_bytes=lambda n: bytes(n))
    new = ("10.0.0.2", 61000)
    cand = paths.on_packet(0, new, 60, 1000, True, 0.0, 0.1)  # budget 180 bytes
    assert cand is not None
    [(_, _, size)] = paths.due_challenges(0, 0.0, 42)
    assert size == 42  # small: a padded one is not within the budget
    assert paths.timer() == cand.next_send == 0.1  # the retry, long before the deadline
    [(_, _, size)] = paths.due_challenges(0, 0.1, 42)
    assert size == 42 and cand.next_send > 0.1
    # without budget for even a small one, only the deadline (or a packet) can act
    cand.bytes_sent = cand.bytes_received * 3
    assert paths.timer() == cand.deadline
