"""RACK-TLP loss detection (RFC 8985) and the delivery-rate estimator, as units."""

from __future__ import annotations

import pytest

from roamlink.core import wire
from roamlink.core.delivery_rate import DeliveryRateEstimator
from roamlink.core.recovery import LOST_HORIZON_RTOS, PACKET_THRESHOLD, Recovery, SentPacket
from roamlink.core.rtt import RttEstimator

MSS = 1200


def _recovery() -> Recovery:
    return Recovery(RttEstimator(0.02), 0.025, 0.05, 10.0)


def _send(rec: Recovery, pn: int, now: float) -> SentPacket:
    pkt = SentPacket(pn, now, MSS, True, [(pn * 1000, 1000, False)], [])
    rec.on_packet_sent(pkt)
    return pkt


def test_rack_declares_loss_by_time_once_a_later_packet_is_delivered() -> None:
    """Fewer than the packet threshold overtook packet 0, so only time can declare it lost:
    at its send time + the RACK RTT + the reordering window (min_rtt / 4), not earlier."""
    rec = _recovery()
    _send(rec, 0, 0.0)
    _send(rec, 1, 0.001)
    _, lost, _ = rec.on_ack(wire.AckFrame(((1, 1),), 0), 0.021)
    assert lost == []
    assert rec.rack_rtt == pytest.approx(0.020)
    assert rec.reo_wnd == pytest.approx(0.020 / 4)
    assert rec.loss_time == pytest.approx(0.0 + 0.020 + 0.005)
    assert rec.timer() == rec.loss_time
    lost, probe = rec.on_timeout(0.0249)
    assert lost == [] and not probe
    lost, probe = rec.on_timeout(0.025)
    assert [p.number for p in lost] == [0] and not probe


def test_spurious_loss_widens_the_reordering_window_once_per_round_trip() -> None:
    rec = _recovery()
    for pn in range(10):
        _send(rec, pn, 0.0)
    _, lost, _ = rec.on_ack(wire.AckFrame(((5, 9),), 0), 0.02)
    assert [p.number for p in lost] == [0, 1, 2, 3, 4]  # 5 or more overtook them (>= 3)
    rec.on_ack(wire.AckFrame(((0, 9),), 0), 0.021)  # only late: spurious
    assert rec.spurious_losses == 5
    assert rec.reo_wnd_mult == 2 and rec.reo_wnd == pytest.approx(2 * 0.02 / 4)
    # the threshold grows to the distance the packets were overtaken by
    assert rec.packet_threshold >= 9 - 0 + 1
    # a second spurious loss within the same round trip does not widen the window again
    for pn in range(10, 30):
        _send(rec, pn, 0.021)
    _, lost, _ = rec.on_ack(wire.AckFrame(((29, 29),), 0), 0.025)
    assert lost and rec.on_ack(wire.AckFrame(((10, 29),), 0), 0.026)[0]
    assert rec.reo_wnd_mult == 2


def test_reordering_window_never_exceeds_the_smoothed_rtt() -> None:
    rec = _recovery()
    rec.rtt.update(0.02, 0.0)
    rec.reo_wnd_mult = 50
    assert rec.reo_wnd == pytest.approx(rec.rtt.smoothed)


def test_tail_loss_probe_fires_before_the_pto_and_sends_one_packet() -> None:
    """The last packets of a flight are lost: one probe 2 x SRTT (+ the ACK delay when a
    single packet is out) after the last send, then the PTO with backoff if it goes
    unanswered; an ACK re-arms the TLP."""
    rec = _recovery()
    _send(rec, 0, 0.0)
    rec.on_ack(wire.AckFrame(((0, 0),), 0), 0.02)  # srtt 20 ms
    _send(rec, 1, 1.0)
    assert rec.timer() == pytest.approx(1.0 + 2 * 0.02 + 0.025)  # one packet: + ACK delay
    _send(rec, 2, 1.0)
    assert rec.timer() == pytest.approx(1.0 + 2 * 0.02)
    assert rec.timer() < 1.0 + rec.pto_interval()
    lost, probe = rec.on_timeout(1.04)
    assert probe and rec.probe_packets == 1 and rec.last_probe_was_tlp
    assert rec.tlp_fired == 1 and rec.pto_fired == 0
    assert rec.newest_unacked() is not None and rec.newest_unacked().number == 2
    _send(rec, 3, 1.04)  # the probe
    assert rec.timer() == pytest.approx(1.04 + rec.pto_interval())
    lost, probe = rec.on_timeout(1.04 + rec.pto_interval())
    assert probe and rec.probe_packets == 2 and not rec.last_probe_was_tlp
    assert rec.pto_fired == 1
    # the probe's ACK reveals 1 and 2 lost (RACK), and arms the TLP again
    _, lost, _ = rec.on_ack(wire.AckFrame(((3, 3),), 0), 1.2)
    assert {p.number for p in lost} == {1, 2} and rec.tlp_armed


def test_thresholds_reset_on_a_new_path() -> None:
    rec = _recovery()
    rec.packet_threshold, rec.reo_wnd_mult, rec.rack_rtt = 40, 3, 0.5
    rec.on_new_path()
    assert rec.packet_threshold == PACKET_THRESHOLD and rec.reo_wnd_mult == 1
    assert rec.rack_rtt == 0.0


def test_delivery_rate_measures_the_sending_rate_of_an_acked_flight() -> None:
    """Packets paced at 1 packet / ms, each acknowledged 20 ms later: samples read about
    MSS per ms; the send interval guards against a burst of ACKs, and app-limited marking
    reaches the samples of packets sent while the application had nothing to send."""
    est = DeliveryRateEstimator()
    sent: dict[int, SentPacket] = {}
    in_flight = 0
    rates = []
    for ms in range(100):  # one packet a millisecond, each acknowledged 20 ms after it left
        now = ms * 0.001
        if ms - 20 in sent:
            rs = est.on_ack([sent.pop(ms - 20)], now, 0.02)
            in_flight -= MSS
            assert rs is not None
            rates.append(rs.delivery_rate)
        pkt = SentPacket(ms, now, MSS, True, [], [])
        est.on_packet_sent(pkt, now, in_flight)
        in_flight += MSS
        sent[ms] = pkt
    assert all(r <= MSS / 0.001 * 1.001 for r in rates)
    assert rates[-1] == pytest.approx(MSS / 0.001, rel=0.06)
    # the rest acknowledged at once (an ACK burst): still not faster than they were sent
    rs = est.on_ack(list(sent.values()), 0.101, 0.02)
    assert rs is not None and rs.delivery_rate <= MSS / 0.001 * 1.06
    assert est.delivered == 100 * MSS and not rs.is_app_limited
    # the application stops: what is sent next is marked, and so are its samples
    est.mark_app_limited(0)
    pkt = SentPacket(100, 0.2, MSS, True, [], [])
    est.on_packet_sent(pkt, 0.2, 0)
    rs = est.on_ack([pkt], 0.22, 0.02)
    assert rs is not None and rs.is_app_limited
    assert est.app_limited == 0  # cleared once that flight was delivered


def test_delivery_rate_marks_the_opening_burst_of_a_flight() -> None:
    """A flight that starts with nothing in flight leaves as a burst with no earlier send to
    bound its interval: its samples are marked until the flight's first ACK, and packets sent
    after that ACK are measured as usual."""
    est = DeliveryRateEstimator()
    burst = [SentPacket(pn, 1.0, MSS, True, [], []) for pn in range(10)]
    for i, pkt in enumerate(burst):
        est.on_packet_sent(pkt, 1.0, i * MSS)
    assert all(p.opens_flight for p in burst)
    # a token bucket passed the burst at once: half of it acknowledged 0.6 ms later
    rs = est.on_ack(burst[:5], 1.0006, 0.0005)
    assert rs is not None and rs.opens_flight
    assert rs.delivery_rate > 5 * MSS / 0.001  # what a shaper's full bucket reads as
    later = SentPacket(10, 1.0006, MSS, True, [], [])
    est.on_packet_sent(later, 1.0006, 5 * MSS)
    assert not later.opens_flight
    rs = est.on_ack(burst[5:] + [later], 1.0012, 0.0005)
    assert rs is not None and not rs.opens_flight


def test_reordering_window_jumps_to_how_late_a_spurious_loss_came() -> None:
    """A packet that came 12 ms after RACK gave up on it (min_rtt 20 ms): the window covers
    that at once (3 quarters of min_rtt), not one quarter per round trip."""
    rec = _recovery()
    for pn in range(10):
        _send(rec, pn, 0.0)
    _, lost, _ = rec.on_ack(wire.AckFrame(((5, 9),), 0), 0.02)
    assert lost
    rec.on_ack(wire.AckFrame(((0, 9),), 0), 0.032)
    assert rec.reo_wnd_mult == 3 and rec.reo_wnd == pytest.approx(3 * 0.02 / 4)


def test_lost_packets_are_remembered_for_a_few_rtos_not_by_the_thousand() -> None:
    """Steady random loss for a minute (the soak's case): the packets declared lost, kept to
    recognise a spurious retransmission, are forgotten LOST_HORIZON_RTOS after they were
    sent. They used to pile up to the memory limit (2,048 per connection, about 200 KB with
    both ends in one process) and stay there: the soak's slow RSS rise."""
    rec = _recovery()
    lost_total = 0
    pn = 0
    for batch in range(6000):  # 60,000 packets, 1 ms apart; every 20th is lost
        start = pn
        for _ in range(10):
            _send(rec, pn, pn * 0.001)
            pn += 1
        now = (pn - 1) * 0.001 + 0.02  # the ACK comes one RTT (20 ms) after the last send
        ranges = []
        hi = pn - 1
        for missing in sorted((p for p in range(start, pn) if p % 20 == 0), reverse=True):
            if missing < hi:
                ranges.append((missing + 1, hi))
            hi = missing - 1
        if hi >= start:
            ranges.append((start, hi))
        _, lost, _ = rec.on_ack(wire.AckFrame(tuple(ranges), 0), now)
        lost_total += len(lost)
        assert set(rec._lost_times) == set(rec._lost_pns)
        if batch % 500 == 499:  # flush the tail: no later packet reveals the last losses
            rec.on_timeout(now + 1.0)
    assert lost_total >= 2900
    horizon = LOST_HORIZON_RTOS * rec.rto()
    remembered = rec._lost_pns
    assert remembered and remembered == sorted(remembered)
    # at most the losses sent within the horizon before the newest loss (1 in 20 ms)
    assert len(remembered) <= horizon / 0.020 + 2
    # and a loss that was recent enough is still recognised as spurious
    newest = remembered[-1]
    before = rec.spurious_losses
    rec.on_ack(wire.AckFrame(((newest, newest),), 0), newest * 0.001 + 0.05)
    assert rec.spurious_losses == before + 1
