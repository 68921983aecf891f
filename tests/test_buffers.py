"""RangeSet, SendBuffer and RecvBuffer against simple models."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from roamlink.core.buffers import RecvBuffer, SendBuffer
from roamlink.core.ranges import RangeSet


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30))))
def test_rangeset_matches_a_set(adds: list[tuple[int, int]]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for start, length in adds:
        rs.add(start, start + length)
        model.update(range(start, start + length))
    assert {v for s, e in rs for v in range(s, e)} == model
    ranges = list(rs)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # merged
    for v in range(0, 240):
        assert rs.contains(v) == (v in model)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.integers(0, 30))))
def test_rangeset_shift_until_and_first_range_match_a_set(
        ops: list[tuple[bool, int, int]]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for shift, start, length in ops:
        if shift:
            rs.shift_until(start)
            model = {v for v in model if v >= start}
        else:
            rs.add(start, start + length)
            model.update(range(start, start + length))
        assert {v for s, e in rs for v in range(s, e)} == model
        ranges = list(rs)
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        for v in (start, start + length, 0, 100):
            covered = bool(ranges) and ranges[0][0] <= v < ranges[0][1]
            assert rs.end_of_first_covering(v) == (ranges[0][1] if covered else -1)


@given(st.binary(min_size=1, max_size=5000), st.integers(0, 2**32), st.integers(1, 700))
def test_recv_buffer_reassembles_any_order(data: bytes, seed: int, seg: int) -> None:
    rng = random.Random(seed)
    pieces = [(off, data[off:off + seg]) for off in range(0, len(data), seg)]
    pieces += rng.sample(pieces, k=min(3, len(pieces)))  # duplicates
    rng.shuffle(pieces)
    buf = RecvBuffer()
    out = []
    for off, piece in pieces:
        buf.receive(off, piece, off + len(piece) == len(data))
        out.append(buf.read(rng.choice([-1, 1, 100])))
    out.append(buf.read())
    assert b"".join(out) == data
    assert buf.at_eof


def test_recv_buffer_overlapping_segments() -> None:
    buf = RecvBuffer()
    buf.receive(5, b"56789", False)
    buf.receive(3, b"3456", False)
    buf.receive(0, b"0123", False)
    assert buf.read() == b"0123456789"


def test_send_buffer_loss_and_ack_cycle() -> None:
    sb = SendBuffer()
    data = bytes(range(256)) * 40
    sb.write(data[:5000])
    sb.write(data[5000:])
    sb.write_eof()
    sent = []
    while (r := sb.next_range(1000, 10**9)) is not None:
        sent.append(r)
    assert b"".join(d for _, d, _ in sent) == data and sent[-1][2] is True
    # lose the second and last, ack the others
    for i, (off, d, fin) in enumerate(sent):
        if i in (1, len(sent) - 1):
            sb.on_lost(off, len(d), fin)
        else:
            sb.on_acked(off, len(d), fin)
    resent = []
    while (r := sb.next_range(1000, 10**9)) is not None:
        resent.append(r)
    assert [(o, d) for o, d, _ in resent] == [(sent[1][0], sent[1][1]),
                                              (sent[-1][0], sent[-1][1])]
    assert resent[-1][2] is True  # the FIN goes again with the last bytes
    for off, d, fin in resent:
        sb.on_acked(off, len(d), fin)
    assert sb.all_acked and sb.buffered == 0


def test_send_buffer_respects_flow_control_limit() -> None:
    sb = SendBuffer()
    sb.write(b"x" * 10_000)
    r = sb.next_range(4000, 2500)
    assert r is not None and r[0] == 0 and len(r[1]) == 2500
    assert sb.next_range(4000, 2500) is None
    r = sb.next_range(4000, 6000)
    assert r is not None and r[0] == 2500 and len(r[1]) == 3500


def test_lost_range_acknowledged_late_is_not_resent_from_released_memory() -> None:
    """A range declared lost and then acknowledged after all (a late ACK of its first copy:
    reordering, or a migration's requeue) was still popped for retransmission, from chunks
    already released: an empty or wrong frame, or IndexError in the send path (found by
    bench/soak.py)."""
    from roamlink.core.buffers import SendBuffer

    for compact in (False, True):
        buf = SendBuffer()
        chunks = [bytes([i]) * 500 for i in range(200 if compact else 2)]
        for chunk in chunks:
            buf.write(chunk)
        first = buf.next_range(500, 1 << 30)
        assert first is not None and first[0] == 0
        sent = [buf.next_range(500, 1 << 30) for _ in range(len(chunks) - 1)]
        buf.on_lost(0, 500, False)  # declared lost ...
        for rng in sent[:-1] if compact else []:
            assert rng is not None
            buf.on_acked(rng[0], len(rng[1]), False)
        buf.on_acked(0, 500, False)  # ... and acknowledged late: released
        got = buf.next_range(500, 1 << 30)
        # nothing of [0, 500) comes again; whatever comes is the right bytes
        assert got is None or (got[0] >= 500 and got[1] == b"".join(chunks)[got[0]:got[0]
                                                                         + len(got[1])])
