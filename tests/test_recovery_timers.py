"""RTT, probe timeout, spurious-loss accounting, slow start after idle, pacing and stats."""

from __future__ import annotations

import random

import pytest

from roamlink.config import Config
from roamlink.core import wire
from roamlink.core.pacing import MAX_BURST_PACKETS
from roamlink.testing.bulk import Flow, drive, finish, open_flow
from roamlink.testing.packets import frames_of
from roamlink.testing.simnet import LinkConfig, SimNetwork


def _flow(cfg: Config, link: LinkConfig, seed: int = 1) -> tuple[SimNetwork, Flow]:
    net = SimNetwork(seed=seed, default_link=link)
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    return net, open_flow(net, client, server, seed=seed)


def test_lost_tail_is_recovered_by_the_probe_timeout() -> None:
    """The last packets of a transfer (no later packet can reveal their loss) are dropped
    three times over: only the probe timeout, with backoff, recovers them."""
    cfg = Config()
    net = SimNetwork(seed=2, default_link=LinkConfig(delay=0.01))
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    flow = open_flow(net, client, server)
    payload = random.Random(3).randbytes(50_000)
    drops = {"n": 0}

    def drop_tail(data: bytes, src: object, dst: object) -> bool:
        frames = frames_of(flow.receiver, data) or []
        if any(isinstance(f, wire.PushFrame) and f.fin for f in frames) and drops["n"] < 3:
            drops["n"] += 1
            return True
        return False

    net.link("10.0.0.2", "10.0.0.1").drop_if = drop_tail
    flow.sender.send(payload)
    flow.sender.send_eof()
    net.flush(client)
    net.run_until(lambda: flow.receiver.at_eof, 10)
    assert flow.receiver.read() == payload
    st = flow.sender.stats()
    assert drops["n"] == 3 and st.pto_count >= 1 and st.retransmissions >= 1


def test_rtt_estimate_with_delayed_acks_and_jitter() -> None:
    cfg = Config()
    net, flow = _flow(cfg, LinkConfig(delay=0.03, jitter=0.004), seed=3)
    drive(net, [flow], net.now + 2.0)
    st = flow.sender.stats()
    assert 0.060 <= st.min_rtt <= 0.062
    assert 0.060 <= st.smoothed_rtt <= 0.070  # the peer's ACK delay is not counted as path
    assert 0 < st.rtt_variance < 0.01
    assert finish(net, [flow]) and flow.exact()


def test_reordering_beyond_the_thresholds_is_counted_as_spurious() -> None:
    """Packets held back longer than 9/8 RTT are declared lost, resent, then arrive anyway."""
    cfg = Config()
    net, flow = _flow(cfg, LinkConfig(delay=0.01, reorder=0.02, reorder_delay=0.04,
                                           rate=5e6), seed=4)
    drive(net, [flow], net.now + 0.5)
    flow.mark("start")
    drive(net, [flow], net.now + 2.0)
    flow.mark("end")
    st = flow.sender.stats()
    assert st.packets_lost > 0 and st.spurious_losses > 0
    assert st.spurious_losses <= st.packets_lost
    # the loss thresholds widened to the reordering seen
    rec = flow.sender.recovery
    assert rec.packet_threshold > 3 and rec.time_threshold > 9 / 8
    # reordering is not congestion: the rate stays near the link's 5 MB/s
    assert flow.goodput("start", "end") >= 0.8 * 5e6
    assert finish(net, [flow]) and flow.exact()


@pytest.mark.parametrize("controller", ["vegas", "newreno"])
def test_slow_start_again_after_idle(controller: str) -> None:
    cfg = Config(congestion_control=controller)
    net, flow = _flow(cfg, LinkConfig(delay=0.01, rate=5e6, queue_packets=100))
    drive(net, [flow], net.now + 1.0)
    grown = flow.sender.cc.cwnd
    assert grown > cfg.initial_window_packets * cfg.max_datagram_size
    flow.writing = False  # the application pauses: everything is acknowledged, then idle
    flow.sender.send(b"")  # no-op write
    # the reader keeps reading, so what was buffered drains (not held by flow control)
    deadline = net.now + 2.0
    while net.now < deadline:
        flow.receiver.read()
        net.flush(flow.receiver_node)
        net.run(until=min(net.now + 0.05, deadline))
    assert flow.sender.send_buf.buffered == 0
    assert flow.sender.recovery.bytes_in_flight == 0
    flow.sender.send(b"x" * 100_000)
    net.flush(flow.sender_node)
    cc = flow.sender.cc
    assert cc.cwnd == cfg.initial_window_packets * cfg.max_datagram_size
    assert cc.state == "slow_start" and cc.ssthresh >= grown // 2


def test_pacing_spreads_a_large_window() -> None:
    """With a large window and much to send, one call sends at most a pacing burst, and the
    connection's timer says when to send the rest (well before any retransmission timeout).
    (Vegas: its pacing rate follows the window set here; BBR's follows its model.)"""
    cfg = Config(congestion_control="vegas")
    net, flow = _flow(cfg, LinkConfig(delay=0.01))
    conn = flow.sender
    conn.rtt.update(0.02, 0.0)
    conn.cc.cwnd = 2000 * cfg.max_datagram_size  # 2.4 MB per 20 ms: 120 MB/s pacing
    conn.send(bytes(3_000_000))
    now = net.now
    sent = [d for d, _ in conn.datagrams_to_send(now)]
    assert MAX_BURST_PACKETS // 2 <= len(sent) <= MAX_BURST_PACKETS + 1
    timer = conn.get_timer()
    assert timer is not None and now < timer <= now + 0.002
    assert timer < now + conn.recovery.pto_interval()
    # when the timer fires, the next burst may go
    more = conn.datagrams_to_send(timer)
    assert len(more) >= 1


def test_unpaced_connection_sends_the_window_at_once() -> None:
    cfg = Config(pacing=False)
    net, flow = _flow(cfg, LinkConfig(delay=0.01))
    conn = flow.sender
    conn.cc.cwnd = 200 * cfg.max_datagram_size
    conn.send(bytes(1_000_000))
    assert len(conn.datagrams_to_send(net.now)) >= 190


def test_stats_expose_recovery_and_congestion_state() -> None:
    cfg = Config(congestion_control="vegas")
    net, flow = _flow(cfg, LinkConfig(delay=0.01, loss=0.03, rate=2.5e6), seed=7)
    drive(net, [flow], net.now + 2.0)
    st = flow.sender.stats()
    assert st.packets_lost > 0 and st.retransmissions > 0 and st.spurious_losses >= 0
    assert st.smoothed_rtt > 0 and st.rtt_variance > 0 and 0.02 <= st.min_rtt <= st.smoothed_rtt
    assert st.cwnd >= 2 * cfg.max_datagram_size and st.bytes_in_flight > 0
    assert st.congestion_controller == "vegas"
    assert st.congestion_state in ("slow_start", "ramp_up", "steady", "recovery", "probe_rtt",
                                   "competing")
    assert finish(net, [flow]) and flow.exact()


def test_loss_thresholds_widen_on_spurious_loss_and_narrow_back() -> None:
    from roamlink.core.recovery import PACKET_THRESHOLD, TIME_THRESHOLD, Recovery, SentPacket
    from roamlink.core.rtt import RttEstimator

    rec = Recovery(RttEstimator(0.02), 0.025, 0.05, 10.0)
    now = 0.0
    for pn in range(10):
        rec.on_packet_sent(SentPacket(pn, now, 1200, True, [], []))
    # 4..9 arrive first: 0..5 (3 behind the largest) are declared lost
    _, lost, _ = rec.on_ack(wire.AckFrame(((4, 9),), 0), 0.02)
    assert [p.number for p in lost] == [0, 1, 2, 3]
    rec.on_ack(wire.AckFrame(((0, 9),), 0), 0.021)  # they were only late
    assert rec.spurious_losses == 4
    assert rec.packet_threshold > PACKET_THRESHOLD and rec.time_threshold > TIME_THRESHOLD
    widened = rec.packet_threshold
    # then a long stretch of real losses, none spurious: back to the RFC values
    pn = 10
    for _ in range(400):
        for _ in range(widened + 2):
            rec.on_packet_sent(SentPacket(pn, now, 1200, True, [], []))
            pn += 1
        rec.on_ack(wire.AckFrame(((pn - 1, pn - 1),), 0), now + 0.02)
        now += 0.001
    assert rec.packet_threshold == PACKET_THRESHOLD and rec.time_threshold == TIME_THRESHOLD


def test_packets_taken_off_a_dead_path_are_not_spurious_losses() -> None:
    from roamlink.core.recovery import PACKET_THRESHOLD, Recovery, SentPacket
    from roamlink.core.rtt import RttEstimator

    rec = Recovery(RttEstimator(0.02), 0.025, 0.05, 10.0)
    for pn in range(5):
        rec.on_packet_sent(SentPacket(pn, 0.0, 1200, True, [], []))
    assert len(rec.take_all_in_flight()) == 5 and rec.bytes_in_flight == 0
    rec.on_packet_sent(SentPacket(5, 0.01, 1200, True, [], []))
    rec.on_ack(wire.AckFrame(((0, 5),), 0), 0.03)  # the old path delivered them after all
    assert rec.spurious_losses == 0 and rec.packet_threshold == PACKET_THRESHOLD
    rec.packet_threshold = 20
    rec.on_new_path()
    assert rec.packet_threshold == PACKET_THRESHOLD
