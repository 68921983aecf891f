"""Codec round trips and hostile input: decoding raises MalformedPacket and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roamlink.core import wire

varints = st.integers(min_value=0, max_value=wire.VARINT_MAX)
cids = st.binary(min_size=1, max_size=20)


@given(varints)
def test_varint_round_trip(value: int) -> None:
    encoded = wire.encode_varint(value)
    assert len(encoded) == wire.varint_size(value)
    assert wire.decode_varint(encoded, 0) == (value, len(encoded))


def test_varint_rejects_too_large() -> None:
    with pytest.raises(ValueError):
        wire.encode_varint(wire.VARINT_MAX + 1)


@st.composite
def ack_frames(draw: st.DrawFn) -> wire.AckFrame:
    n = draw(st.integers(min_value=1, max_value=wire.MAX_ACK_RANGES))
    hi = draw(st.integers(min_value=10 * n, max_value=10**9))
    ranges = []
    for _ in range(n):
        length = draw(st.integers(min_value=0, max_value=3))
        lo = hi - length
        if lo < 0:
            break
        ranges.append((lo, hi))
        hi = lo - draw(st.integers(min_value=2, max_value=5))
        if hi < 0:
            break
    return wire.AckFrame(tuple(ranges), draw(st.integers(min_value=0, max_value=10**6)))


frames = st.one_of(
    st.builds(wire.PushFrame, st.integers(0, 2**40), st.binary(max_size=300), st.booleans()),
    ack_frames(),
    st.just(wire.PingFrame()),
    st.builds(wire.PathChallengeFrame, st.binary(min_size=8, max_size=8)),
    st.builds(wire.PathResponseFrame, st.binary(min_size=8, max_size=8)),
    st.builds(wire.CloseFrame, varints, st.text(max_size=50)),
    st.builds(wire.MaxDataFrame, varints),
    st.builds(wire.DataBlockedFrame, varints),
    st.integers(0, 1000).flatmap(lambda seq: st.builds(
        wire.NewConnectionIdFrame, st.just(seq), st.integers(0, seq), cids,
        st.binary(min_size=16, max_size=16))),
    st.builds(wire.RetireConnectionIdFrame, varints),
)


@given(st.lists(frames, max_size=8))
def test_frames_round_trip(items: list[wire.Frame]) -> None:
    payload = b"".join(wire.encode_frame(f) for f in items)
    assert wire.decode_frames(payload) == items


@given(st.integers(0, 1000), st.binary(min_size=8, max_size=8))
def test_padding_is_coalesced(n: int, data: bytes) -> None:
    payload = wire.encode_frame(wire.PingFrame()) + bytes(n) + wire.encode_frame(
        wire.PathChallengeFrame(data))
    decoded = wire.decode_frames(payload)
    assert decoded[0] == wire.PingFrame()
    assert decoded[-1] == wire.PathChallengeFrame(data)
    assert sum(f.length for f in decoded if isinstance(f, wire.PaddingFrame)) == n


@given(st.sampled_from(sorted(wire.LONG_TYPES)), st.integers(1, 2**32 - 1),
       st.binary(max_size=20), st.binary(max_size=20))
def test_long_header_round_trip(ptype: int, version: int, dcid: bytes, scid: bytes) -> None:
    data = wire.encode_long_header(ptype, version, dcid, scid) + b"\x01"
    assert wire.is_long_header(data[0]) and not wire.is_short_header(data[0])
    assert data[0] & 0x40  # the fixed bit
    assert data[1:5] == version.to_bytes(4, "big") and data[5] == len(dcid)  # RFC 8999
    hdr = wire.decode_long_header(data)
    assert (hdr.packet_type, hdr.version, hdr.dcid, hdr.scid) == (ptype, version, dcid, scid)
    assert data[hdr.payload_offset:] == b"\x01"


@given(st.binary(min_size=8, max_size=8), st.integers(0, 2**64 - 1))
def test_short_header_round_trip(cid: bytes, pn: int) -> None:
    for phase in (0, 1):
        data = wire.encode_short_header(cid, pn, phase)
        assert wire.is_short_header(data[0]) and data[1:9] == cid  # CID from byte 1
        assert wire.decode_short_header(data, 8) == (cid, pn, len(data))
        assert bool(data[0] & wire.KEY_PHASE) == bool(phase)


def test_version_negotiation_round_trip() -> None:
    data = wire.encode_version_negotiation(b"abcdefgh", b"", (1, 7))
    hdr = wire.decode_long_header(data)
    assert hdr.packet_type == wire.VERSION_NEGOTIATION and hdr.version == 0
    assert wire.decode_versions(data, hdr.payload_offset) == (1, 7)


def test_legacy_version_negotiation_has_version_one_layout() -> None:
    data = wire.encode_legacy_version_negotiation(b"abcdefgh", (2,))
    # version 1: type 0x05, version 0, dcid, empty scid, versions
    assert data == b"\x05" + bytes(4) + b"\x08abcdefgh" + b"\x00" + (2).to_bytes(4, "big")


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_malformed(data: bytes) -> None:
    for decode in (wire.decode_frames, wire.decode_long_header,
                   lambda d: wire.decode_short_header(d, 8)):
        with contextlib.suppress(wire.MalformedPacket):
            decode(data)


@given(st.lists(frames, min_size=1, max_size=4), st.integers(0, 10_000))
def test_truncated_frames_are_malformed_or_a_prefix(items: list[wire.Frame], cut: int) -> None:
    payload = b"".join(wire.encode_frame(f) for f in items)
    truncated = payload[: cut % (len(payload) + 1)]
    try:
        decoded = wire.decode_frames(truncated)
    except wire.MalformedPacket:
        return
    assert len(decoded) <= len(items) + 1  # padding bytes may decode as padding


def test_push_and_ack_frames_compare_by_value_like_the_dataclasses_they_were() -> None:
    push = wire.PushFrame(5, b"ab", True)
    assert push == wire.PushFrame(5, b"ab", True)
    assert push != wire.PushFrame(6, b"ab", True)
    assert push != wire.PushFrame(5, b"ac", True)
    assert push != wire.PushFrame(5, b"ab")
    assert push != wire.AckFrame(((5, 5),))
    assert repr(push) == "PushFrame(offset=5, data=b'ab', fin=True)"
    ack = wire.AckFrame(((7, 9), (1, 3)), 25)
    assert ack == wire.AckFrame(((7, 9), (1, 3)), 25)
    assert hash(ack) == hash(wire.AckFrame(((7, 9), (1, 3)), 25))
    assert ack != wire.AckFrame(((7, 9), (1, 3)), 26)
    assert ack != wire.AckFrame(((7, 9),), 25)
    assert ack.largest == 9 and wire.AckFrame(((0, 0),)).ack_delay_us == 0
    assert repr(ack) == "AckFrame(ranges=((7, 9), (1, 3)), ack_delay_us=25)"
