"""Packet protection, mac1, the 0-RTT replay cache and stateless-reset tokens (unit level)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from roamlink.crypto import mac1, noise, reset
from roamlink.crypto.packet_protection import TAG_LENGTH, PacketProtection
from roamlink.crypto.replay import ReplayCache, ReplayVerdict

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def _pair() -> tuple[PacketProtection, PacketProtection]:
    """A sender and the matching receiver (the peer's keys are ours swapped)."""
    return PacketProtection(K1, K2), PacketProtection(K2, K1)


headers = st.binary(min_size=1, max_size=40)
payloads = st.binary(min_size=0, max_size=1400)
pns = st.integers(min_value=0, max_value=(1 << 62) - 1)


@settings(max_examples=200, deadline=None)
@given(header=headers, payload=payloads, pn=pns)
def test_seal_open_round_trip(header: bytes, payload: bytes, pn: int) -> None:
    a, b = _pair()
    packet = a.seal(header, pn, payload)
    assert packet.startswith(header)
    assert len(packet) == len(header) + len(payload) + TAG_LENGTH
    assert b.open(packet, len(header), pn, 0, 0.0) == payload
    # memoryview input works the same
    assert b.open(memoryview(packet), len(header), pn, 0, 0.0) == payload


@settings(max_examples=100, deadline=None)
@given(header=headers, payload=payloads, pn=pns, data=st.data())
def test_any_changed_byte_fails(header: bytes, payload: bytes, pn: int,
                                data: st.DataObject) -> None:
    a, b = _pair()
    packet = bytearray(a.seal(header, pn, payload))
    index = data.draw(st.integers(min_value=0, max_value=len(packet) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    packet[index] ^= 1 << bit
    assert b.open(bytes(packet), len(header), pn, 0, 0.0) is None


@settings(max_examples=100, deadline=None)
@given(header=headers, payload=payloads, pn=pns, other=pns)
def test_wrong_packet_number_or_key_fails(header: bytes, payload: bytes, pn: int,
                                          other: int) -> None:
    a, b = _pair()
    packet = a.seal(header, pn, payload)
    if other != pn:
        assert b.open(packet, len(header), other, 0, 0.0) is None
    # the sender's own receive key is the other direction's: it cannot open its own packets
    assert a.open(packet, len(header), pn, 0, 0.0) is None
    # truncated packets never open
    assert b.open(packet[: len(header) + TAG_LENGTH - 1], len(header), pn, 0, 0.0) is None


def test_key_update_rotates_receiver_and_keeps_previous_key_for_retention() -> None:
    a, b = _pair()
    b.retention = 1.0
    header = b"\x40hdr"
    old = [a.seal(header, pn, b"old%d" % pn) for pn in range(5)]
    assert b.open(old[0], len(header), 0, 0, 0.0) == b"old0"
    a.update_send_key(next_pn=5)
    assert a.send_phase == 1
    new = a.seal(header, 5, b"new5")
    # the new phase opens with the next key and rotates the receiver
    assert b.open(new, len(header), 5, 1, 10.0) == b"new5"
    assert b.recv_generation == 1 and b.recv_phase == 1
    # a reordered packet of the old phase still opens within the retention time ...
    assert b.open(old[3], len(header), 3, 0, 10.5) == b"old3"
    # ... and no longer after it
    assert b.open(old[4], len(header), 4, 0, 11.5) is None
    assert not b.has_previous_receive_key
    # a second update follows the chain
    a.update_send_key(next_pn=6)
    assert b.open(a.seal(header, 6, b"x"), len(header), 6, 0, 12.0) == b"x"
    assert b.recv_generation == 2


def test_key_update_chain_matches_noise_rekey() -> None:
    a = PacketProtection(K1, K2)
    a.update_send_key(0)
    a.update_send_key(0)
    c = PacketProtection(noise.rekey(noise.rekey(K1)), K2)
    assert a.seal(b"h", 7, b"payload") == c.seal(b"h", 7, b"payload")


def test_forged_other_phase_does_not_rotate() -> None:
    _, b = _pair()
    forged = b"\x41hdr" + os.urandom(40)
    assert b.open(forged, 4, 100, 1, 0.0) is None
    assert b.recv_generation == 0


def test_mac1_accepts_only_the_right_key() -> None:
    key = mac1.mac1_key(b"\x01" * 32)
    other = mac1.mac1_key(b"\x02" * 32)
    packet = mac1.append_mac1(key, b"syn body")
    assert mac1.check_mac1(key, packet)
    assert mac1.check_mac1(key, memoryview(packet))
    assert not mac1.check_mac1(other, packet)
    for i in range(len(packet)):
        broken = bytearray(packet)
        broken[i] ^= 0x80
        assert not mac1.check_mac1(key, bytes(broken))
    assert not mac1.check_mac1(key, b"short")


def test_replay_cache_delivers_once_within_window() -> None:
    cache = ReplayCache(window=60.0)
    e1, e2 = os.urandom(32), os.urandom(32)
    assert cache.check(e1, 1000.0, 1000.5) is ReplayVerdict.FRESH
    assert cache.check(e1, 1000.0, 1001.0) is ReplayVerdict.REPLAY
    assert cache.check(e2, 900.0, 1001.0) is ReplayVerdict.STALE      # too old
    assert cache.check(e2, 1100.0, 1001.0) is ReplayVerdict.STALE     # from the future
    # the entry is kept until its timestamp can no longer pass the window check
    assert cache.check(e1, 1000.0, 1119.0) is ReplayVerdict.REPLAY
    assert cache.check(e1, 1000.0, 1125.0) is ReplayVerdict.STALE
    assert len(cache) == 0


def test_replay_cache_bounded() -> None:
    cache = ReplayCache(window=10.0, max_entries=3)
    for _ in range(3):
        assert cache.check(os.urandom(32), 0.0, 0.0) is ReplayVerdict.FRESH
    assert cache.check(os.urandom(32), 0.0, 0.0) is ReplayVerdict.STALE
    assert cache.check(os.urandom(32), 25.0, 25.0) is ReplayVerdict.FRESH   # old ones expired


def test_stateless_reset_token_and_packet() -> None:
    key = reset.reset_key_from_static(b"\x07" * 32)
    assert key == reset.reset_key_from_static(b"\x07" * 32)      # survives a restart
    assert key != reset.reset_key_from_static(b"\x08" * 32)
    cid = os.urandom(8)
    token = reset.reset_token(key, cid)
    assert len(token) == reset.RESET_TOKEN_LENGTH
    assert token != reset.reset_token(key, os.urandom(8))
    for trigger in (22, 40, 100, 1200):
        packet = reset.build_stateless_reset(token, trigger)
        assert packet is not None
        assert len(packet) < trigger
        assert packet[0] & 0xC0 == 0x40           # looks like a short header (fixed bit set)
        assert reset.matches_reset(packet, [os.urandom(16), token])
        assert not reset.matches_reset(packet, [os.urandom(16)])
    assert reset.build_stateless_reset(token, reset.MIN_RESET_LENGTH) is None


def test_reset_rate_limiter() -> None:
    limiter = reset.ResetRateLimiter(rate=10.0, burst=5.0)
    allowed = sum(limiter.allow(100.0) for _ in range(50))
    assert allowed == 5
    assert limiter.allow(100.2)          # two tokens refilled
    assert limiter.allow(100.2)
    assert not limiter.allow(100.2)


@settings(max_examples=100, deadline=None)
@given(cid=st.binary(min_size=8, max_size=8), pn=pns, phase=st.integers(0, 1),
       frames=st.lists(st.binary(min_size=0, max_size=300), max_size=5))
def test_sealed_short_packet_codec(cid: bytes, pn: int, phase: int, frames: list[bytes]) -> None:
    """The whole sealed packet as the packet builder makes it: clear header (type with the key
    phase, CID from byte 1, packet number), then the sealed frames; the receiver parses the
    header, opens with that phase and gets the frames back."""
    from roamlink.core import wire

    a, b = _pair()
    header = wire.encode_short_header(cid, pn, phase)
    body = b"".join(frames)
    packet = a.seal(header, pn, body)
    assert wire.is_short_header(packet[0]) and packet[1:9] == cid
    dcid, got_pn, offset = wire.decode_short_header(packet, 8)
    assert (dcid, got_pn, offset) == (cid, pn, 17)
    if phase == 0:
        assert b.open(packet, offset, got_pn, packet[0] & wire.KEY_PHASE and 1, 0.0) == body
    else:  # phase 1 under generation 0 keys: the receiver tries the next key, which fails
        assert b.open(packet, offset, got_pn, 1, 0.0) is None
        assert b.recv_generation == 0
