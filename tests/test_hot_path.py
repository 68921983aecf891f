"""The per-packet fast paths of the core keep the codec's and the connection's semantics."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roamlink import Config
from roamlink.core import wire
from roamlink.core.connection import Connection
from roamlink.io.dispatcher import Dispatcher
from roamlink.testing.packets import frames_of, keyed_pair

A = ("10.0.0.2", 5000)
B = ("10.0.0.1", 4433)


@given(st.integers(0, wire.VARINT_MAX - 70000), st.integers(0, 65000), st.booleans())
def test_fast_push_header_is_the_codec_s(offset: int, length: int, fin: bool) -> None:
    header = wire.encode_push_header(offset, length, fin)
    kind = wire.PUSH_FIN if fin else wire.PUSH
    assert header == bytes((kind,)) + wire.encode_varint(offset) + wire.encode_varint(length)
    data = bytes(length)
    assert wire.decode_frames(header + data) == [wire.PushFrame(offset, data, fin)]


@given(st.integers(0, wire.VARINT_MAX), st.integers(0, wire.VARINT_MAX),
       st.integers(0, wire.VARINT_MAX))
def test_one_range_ack_is_the_codec_s(a: int, b: int, delay: int) -> None:
    first, last = min(a, b), max(a, b)
    encoded = wire.encode_ack([(first, last)], delay)
    assert encoded == (bytes((wire.ACK,)) + wire.encode_varint(last) + wire.encode_varint(delay)
                       + wire.encode_varint(0) + wire.encode_varint(last - first))
    assert wire.decode_frames(encoded) == [wire.AckFrame(((first, last),), delay)]


@given(st.binary(max_size=24), st.integers(0, (1 << 64) - 1), st.integers(0, 1))
def test_short_header_is_type_cid_and_packet_number(dcid: bytes, pn: int, phase: int) -> None:
    header = wire.encode_short_header(dcid, pn, phase)
    first = wire.SHORT | (wire.KEY_PHASE if phase else 0)
    assert header == bytes((first,)) + dcid + pn.to_bytes(8, "big")
    assert wire.decode_short_header(header, len(dcid)) == (dcid, pn, len(header))


def test_varints_out_of_range_are_refused() -> None:
    for value in (-1, -64, wire.VARINT_MAX + 1):
        with pytest.raises(ValueError):
            wire.encode_varint(value)
    with pytest.raises(ValueError):
        wire.encode_ack([(0, wire.VARINT_MAX + 1)], 0)
    with pytest.raises(ValueError):
        wire.encode_ack([(0, 5)], -1)
    assert wire.encode_varint(63) == b"\x3f" and wire.encode_varint(64) == b"\x40\x40"


@given(st.lists(st.tuples(st.integers(0, 1 << 40), st.binary(max_size=64), st.booleans()),
                max_size=5),
       st.binary(max_size=12))
def test_decode_from_an_offset_equals_decoding_the_slice(
        pushes: list[tuple[int, bytes, bool]], prefix: bytes) -> None:
    payload = b"".join(wire.encode_frame(wire.PushFrame(o, d, f)) for o, d, f in pushes)
    payload += wire.encode_frame(wire.AckFrame(((3, 9),), 5))
    datagram = prefix + payload
    assert wire.decode_frames(datagram, len(prefix)) == wire.decode_frames(
        memoryview(datagram)[len(prefix):])


@pytest.mark.parametrize("offset", [5, 1000, 1 << 20, 1 << 40])
def test_truncated_push_frames_are_malformed(offset: int) -> None:
    frame = wire.encode_frame(wire.PushFrame(offset, b"abcdef", False))
    for cut in range(1, len(frame)):
        with pytest.raises(wire.MalformedPacket):
            wire.decode_frames(frame[:cut])


def _push_offset(receiver: Connection, datagram: bytes) -> int:
    frames = frames_of(receiver, datagram)
    assert frames is not None
    return next(f.offset for f in frames if isinstance(f, wire.PushFrame))


def _pair(cfg: Config) -> tuple[Dispatcher, Dispatcher, Connection, Connection]:
    client, server, connect = keyed_pair(cfg)
    conn = connect(B, 0.0)
    for data, _ in conn.datagrams_to_send(0.0):
        server.datagram_received(data, A, 0.0)
    peer = server.accept_queue.popleft()
    for data, _ in peer.datagrams_to_send(0.0):
        client.datagram_received(data, B, 0.0)
    assert conn.is_established
    return client, server, conn, peer


def test_acks_of_runs_with_a_hole_and_a_fin_release_exactly_what_arrived() -> None:
    cfg = Config(pacing=False, initial_window_packets=64)
    client, server, conn, peer = _pair(cfg)
    payload = bytes(range(256)) * 40  # ~9 packets
    conn.send(payload)
    conn.send_eof()
    packets = conn.datagrams_to_send(0.01)
    assert len(packets) >= 8
    lost = {3, 4}
    for i, (data, _) in enumerate(packets):
        if i not in lost:
            server.datagram_received(data, A, 0.02)
    for data, _ in peer.datagrams_to_send(0.02):
        client.datagram_received(data, B, 0.03)
    # everything before the hole is released; the FIN (last packet) is acknowledged
    assert conn.send_buf.base == _push_offset(peer, packets[3][0])
    assert conn.send_buf.fin_acked
    assert not conn.send_buf.all_acked
    now = 0.03
    for _ in range(50):  # retransmission by timers and ACKs (bounded)
        now += 0.05
        conn.handle_timer(now)
        for data, _ in conn.datagrams_to_send(now):
            server.datagram_received(data, A, now)
        peer.handle_timer(now)
        for data, _ in peer.datagrams_to_send(now):
            client.datagram_received(data, B, now)
        if conn.send_buf.all_acked:
            break
    assert conn.send_buf.all_acked
    assert peer.read() == payload and peer.at_eof


def test_replayed_packet_is_a_duplicate_but_a_late_one_is_not() -> None:
    cfg = Config(pacing=False)
    client, server, conn, peer = _pair(cfg)
    conn.send(b"x" * 5000)
    packets = [d for d, _ in conn.datagrams_to_send(0.01)]
    assert len(packets) >= 4
    server.datagram_received(packets[0], A, 0.02)
    server.datagram_received(packets[2], A, 0.02)  # out of order
    server.datagram_received(packets[1], A, 0.02)  # late, never seen: accepted
    assert peer.stats().duplicate_packets == 0
    server.datagram_received(packets[1], A, 0.02)  # replayed: a duplicate
    server.datagram_received(packets[2], A, 0.02)
    assert peer.stats().duplicate_packets == 2
    assert peer.read() == b"x" * _push_offset(peer, packets[3])
    assert peer.recv_buf.delivered == peer.recv_buf.received_end


def test_fully_acknowledged_connection_drops_its_grown_packet_table() -> None:
    cfg = Config(pacing=False, initial_window_packets=64)
    client, server, conn, peer = _pair(cfg)
    conn.send(bytes(60 * 1200))
    for data, _ in conn.datagrams_to_send(0.01):
        server.datagram_received(data, A, 0.02)
    assert len(conn.recovery.sent) >= 50
    for data, _ in peer.datagrams_to_send(0.02):
        client.datagram_received(data, B, 0.03)
    assert conn.recovery.sent == {}
    assert sys.getsizeof(conn.recovery.sent) <= sys.getsizeof({})


def test_a_paced_sender_waits_for_its_pacer_and_says_when() -> None:
    """The pacer stops a burst mid-pass and the pass records when to resume (``pace_at``).

    Compiled with mypyc this pass once raised TypeError ("None object expected; got float")
    and aborted every paced bulk transfer: the attribute was narrowed to None by an earlier
    assignment in the same method. CI runs this file against the compiled core too.
    """
    cfg = Config(initial_window_packets=64)
    _, _, conn, _ = _pair(cfg)
    assert conn.pacer is not None
    conn.send(bytes(200_000))
    sent = conn.datagrams_to_send(0.01)
    assert 0 < len(sent) < 64  # the pacer, not the window, stopped the pass
    assert conn.packets.pace_at is not None and conn.packets.pace_at > 0.01
    assert conn.packets.pacer is not None and conn.packets.pacer.wake_at == conn.packets.pace_at
