"""Flow control under loss: a zero window whose update is lost must not deadlock; memory stays
bounded on both sides of a long transfer."""

from __future__ import annotations

import random

from roamlink.config import Config
from roamlink.core import wire
from roamlink.core.connection import Connection
from roamlink.testing.bulk import drive, finish, open_flow
from roamlink.testing.packets import frames_of
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _pair(cfg: Config, link: LinkConfig, seed: int = 1
          ) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    net = SimNetwork(seed=seed, default_link=link)
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    flow = open_flow(net, client, server)
    return net, client, server, flow.sender, flow.receiver


def _frames(data: bytes, cid_length: int) -> list[wire.Frame]:
    if not data or data[0] != wire.SHORT:
        return []
    try:
        _, _, offset = wire.decode_short_header(data, cid_length)
        return wire.decode_frames(memoryview(data)[offset:])
    except wire.MalformedPacket:
        return []


def test_zero_window_with_the_updates_lost_completes() -> None:
    """The receiver stops reading; the sender fills the window and is blocked. When the reader
    resumes, its first four window updates are lost, and so are the sender's first four
    DATA_BLOCKED probes: the lost update must be detected and sent again."""
    window = 64 * 1024
    cfg = Config(receive_window=window)
    net, client, server, sender, receiver = _pair(cfg, LinkConfig(delay=0.02))
    payload = random.Random(5).randbytes(1_000_000)
    dropped = {"max_data": 0, "data_blocked": 0}

    def to_sender(data: bytes, src: object, dst: object) -> bool:
        frames = frames_of(sender, data) or []
        if any(isinstance(f, wire.MaxDataFrame) for f in frames) and dropped["max_data"] < 4:
            dropped["max_data"] += 1
            return True
        return False

    def to_receiver(data: bytes, src: object, dst: object) -> bool:
        frames = frames_of(receiver, data) or []
        if any(isinstance(f, wire.DataBlockedFrame) for f in frames) and (
                dropped["data_blocked"] < 4):
            dropped["data_blocked"] += 1
            return True
        return False

    sender.send(payload)
    sender.send_eof()
    net.flush(client)
    net.run(until=net.now + 3)  # nobody reads: the window closes
    assert receiver.recv_buf.buffered <= window + cfg.max_datagram_size
    assert sender.send_buf.next_offset <= window + cfg.max_datagram_size
    assert sender.stats().flow_control_blocked >= 1
    net.link("10.0.0.1", "10.0.0.2").drop_if = to_sender
    net.link("10.0.0.2", "10.0.0.1").drop_if = to_receiver
    got = bytearray()
    deadline = net.now + 60
    while not receiver.at_eof and net.now < deadline:
        got.extend(receiver.read())
        net.flush(server)
        net.run(until=net.now + 0.05)
    got.extend(receiver.read())
    assert bytes(got) == payload
    assert dropped["max_data"] == 4
    assert sender.stats().flow_control_blocked >= 2  # blocked again at later limits, probing each


def test_receiver_buffer_is_bounded_by_its_window_under_reordering() -> None:
    """Out-of-order data beyond the window is a protocol violation; within it the buffer never
    exceeds the window although much arrives out of order."""
    window = 128 * 1024
    cfg = Config(receive_window=window)
    link = LinkConfig(delay=0.01, loss=0.03, reorder=0.2, reorder_delay=0.01)
    net, client, server, sender, receiver = _pair(cfg, link, seed=3)
    sender.send(random.Random(1).randbytes(600_000))
    net.flush(client)
    peak = 0
    for _ in range(200):  # the application reads slowly: 8 KiB every 10 ms
        net.run(until=net.now + 0.01)
        peak = max(peak, receiver.recv_buf.buffered)
        receiver.read(8192)
        net.flush(server)
    assert 0 < peak <= window + cfg.max_datagram_size


def test_memory_stays_bounded_during_a_long_lossy_transfer() -> None:
    """Sent-packet records, loss history and ACK ranges do not grow with the transfer size."""
    cfg = Config()
    net = SimNetwork(seed=4)
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    net.set_link("10.0.0.2", "10.0.0.1", LinkConfig(delay=0.01, loss=0.05, rate=2.5e6,
                                                    queue_packets=50), both_ways=False)
    net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=0.01, loss=0.05), both_ways=False)
    flow = open_flow(net, client, server)
    sender, receiver = flow.sender, flow.receiver
    peak_sent = peak_recv_sent = peak_ranges = 0
    for i in range(30):
        drive(net, [flow], net.now + 0.1)
        peak_sent = max(peak_sent, len(sender.recovery.sent))
        peak_recv_sent = max(peak_recv_sent, len(receiver.recovery.sent))
        peak_ranges = max(peak_ranges, len(receiver.acks.received))
        if i == 5:
            early_lost_memory = len(sender.recovery._lost_pns)  # noqa: SLF001
    assert flow.delivered > 5_000_000
    # in-flight records are bounded by the window, not by what was sent
    assert peak_sent <= sender.cc.cwnd // cfg.max_datagram_size + 64
    # a pure receiver sends ACK-only packets, which need no record at all
    assert peak_recv_sent <= 8
    assert peak_ranges <= wire.MAX_ACK_RANGES
    assert len(sender.recovery._lost_pns) <= 2048 and early_lost_memory <= 2048  # noqa: SLF001
    assert finish(net, [flow]) and flow.exact()


def test_ack_ranges_stop_repeating_once_the_peer_has_seen_them() -> None:
    """After losses, the receiver's ACKs carry the gaps; once an ACK carrying them is itself
    acknowledged (ack of ack; a pure receiver makes one ACK in 16 elicit an ACK), older ranges
    are no longer repeated in every ACK."""
    cfg = Config()
    net, client, server, sender, receiver = _pair(
        cfg, LinkConfig(delay=0.01, loss=0.02, rate=1e6), 6)
    sender.send(random.Random(2).randbytes(1_500_000))
    net.flush(client)
    ranges_seen = []
    for _ in range(100):
        net.run(until=net.now + 0.02)
        ranges_seen.append(len(receiver.acks.received))
        receiver.read()
        net.flush(server)
    assert receiver.stats().bytes_received > 1_000_000
    assert max(ranges_seen) <= wire.MAX_ACK_RANGES
    # ~2% loss at ~17 packets per RTT: without ack of ack the receiver would report all 32
    # ranges in every ACK after a few seconds
    assert sum(ranges_seen) / len(ranges_seen) < 6
