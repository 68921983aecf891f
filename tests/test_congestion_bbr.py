"""BBR's model and phases, and the pacer's late-wake-up credit."""

from __future__ import annotations

import pytest

from roamlink.config import Config
from roamlink.core.congestion.bbr import MIN_EXTRA_ACKED_TIME, MIN_RTT_WINDOW, Bbr, WindowedMax
from roamlink.core.delivery_rate import RateSample
from roamlink.core.pacing import MAX_LATE_CREDIT, Pacer
from roamlink.core.rtt import RttEstimator
from roamlink.testing.bulk import drive, open_flow
from roamlink.testing.simnet import LinkConfig, SimNetwork

MSS = 1200


def test_windowed_max_forgets_samples_older_than_its_window() -> None:
    f = WindowedMax(3)
    f.update(5.0, 1)
    f.update(3.0, 2)
    assert f.best == 5.0
    f.update(4.0, 3)
    assert f.best == 5.0
    f.update(1.0, 4)  # round 1 left the window: the best of rounds 2..4
    assert f.best == 4.0
    f.update(9.0, 4)
    assert f.best == 9.0
    f.expire(8)
    assert f.best == 0.0


def _run(rate: float, seconds: float) -> tuple[Bbr, list[str], list[int]]:
    """One BBR flow through a ``rate`` bottleneck at 20 ms RTT: (controller, the phases in
    order, the windows seen in ProbeRTT)."""
    net = SimNetwork(seed=1)
    cfg = Config(congestion_control="bbr")
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    net.set_link("10.0.0.2", "10.0.0.1", LinkConfig(delay=0.01, rate=rate, queue_packets=100),
                 both_ways=False)
    net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=0.01), both_ways=False)
    flow = open_flow(net, client, server)
    cc = flow.sender.cc
    assert isinstance(cc, Bbr)
    phases: list[str] = []
    probe_rtt_windows: list[int] = []
    end = net.now + seconds
    while net.now < end:
        drive(net, [flow], net.now + 0.01)
        if not phases or phases[-1] != cc.phase:
            phases.append(cc.phase)
        if cc.phase == "probe_rtt":
            probe_rtt_windows.append(cc.cwnd)
    return cc, phases, probe_rtt_windows


def test_bbr_models_the_bottleneck_and_the_propagation_delay() -> None:
    """10 Mbit/s, 20 ms: start-up finds the rate, drain empties the queue, ProbeBW cruises at
    the model, which is within a few percent of the link; the window is about 2 BDP."""
    rate = 10e6 / 8
    cc, phases, _ = _run(rate, 2.0)
    assert phases == ["startup", "drain", "probe_bw"], phases
    assert cc.filled_pipe
    assert 0.95 * rate <= cc.btl_bw <= 1.1 * rate
    assert 0.020 <= cc.min_rtt <= 0.0215
    bdp = rate * 0.02
    assert 1.8 * bdp <= cc.cwnd <= 2.2 * bdp + cc.extra_acked + 4 * MSS


def test_bbr_probes_the_rtt_when_its_minimum_is_stale() -> None:
    """After MIN_RTT_WINDOW seconds without a lower sample, ProbeRTT holds the window at 4
    packets for a while, then BBR returns to ProbeBW."""
    cc, phases, windows = _run(4e6 / 8, MIN_RTT_WINDOW + 1.0)
    assert phases[:3] == ["startup", "drain", "probe_bw"], phases
    assert "probe_rtt" in phases and phases[-1] == "probe_bw", phases
    assert windows and min(windows) == 4 * MSS


def test_bbr_starts_over_on_a_new_path() -> None:
    cc = Bbr(MSS, 32)
    cc.btl_bw, cc.min_rtt, cc.phase, cc.filled_pipe = 1e6, 0.02, "probe_bw", True
    cc.on_path_change()
    assert cc.phase == "startup" and cc.btl_bw == 0.0 and not cc.filled_pipe
    assert cc.cwnd == 32 * MSS


def _cruising(bw: float, min_rtt: float) -> tuple[Bbr, RttEstimator]:
    """A BBR controller in ProbeBW with the model (bw, min_rtt), and an RTT estimator."""
    cc = Bbr(MSS, 32)
    cc.btl_bw, cc.min_rtt, cc._min_rtt_stamp = bw, min_rtt, 10.0
    cc.filled_pipe = True
    cc._enter_probe_bw(10.0)
    rtt = RttEstimator(min_rtt)
    rtt.update(min_rtt, 0.0)
    return cc, rtt


def _ack(cc: Bbr, rtt: RttEstimator, now: float, acked: int, rate: float = 0.0, *,
         opens_flight: bool = False) -> None:
    rs = RateSample()
    rs.newly_acked, rs.delivered, rs.delivery_rate = acked, acked, rate
    rs.interval = acked / rate if rate else 0.0
    rs.opens_flight = opens_flight
    rs.prior_delivered = cc._delivered
    cc.on_delivery(rs, cc._delivered + acked)
    cc.on_packets_acked([], rtt, now, 0)


def test_bbr_ignores_the_opening_burst_of_a_flight_once_the_pipe_is_full() -> None:
    """A flight that starts from nothing in flight (after a host stall) reads up to several
    times the rate through a token-bucket shaper: once BBR has its model, such a sample
    counts as one packet per interval, which does not raise the bandwidth here; any other
    sample that beats the model does. A slow flow, whose every packet finds nothing in flight,
    still learns from its one-packet flights."""
    bw = 6.25e6
    cc, rtt = _cruising(bw, 0.0005)
    cc._bw.update(bw, cc.round_count)
    _ack(cc, rtt, 10.01, 15 * MSS, 3 * bw, opens_flight=True)
    assert cc.btl_bw == bw
    _ack(cc, rtt, 10.02, 15 * MSS, 1.2 * bw)
    assert cc.btl_bw == 1.2 * bw
    slow = 40_000.0  # 1200 B every 30 ms on a 20 ms path: each packet opens a flight
    cc, rtt = _cruising(slow, 0.02)
    cc._bw.update(slow, cc.round_count)
    _ack(cc, rtt, 10.03, MSS, MSS / 0.02, opens_flight=True)
    assert cc.btl_bw == MSS / 0.02


def test_bbr_aggregation_allowance_is_bounded_by_the_path_round_trip() -> None:
    """A burst of ACKs 10 ms beyond the model (a host that was descheduled) on a 0.5 ms path
    earns at most MIN_EXTRA_ACKED_TIME of the rate, not the burst (which would all wait in
    the bottleneck's queue); on a 50 ms path the same burst counts in full."""
    bw = 6.25e6
    burst = int(bw * 0.010)
    for min_rtt, allowed in ((0.0005, bw * MIN_EXTRA_ACKED_TIME), (0.05, burst)):
        cc, rtt = _cruising(bw, min_rtt)
        _ack(cc, rtt, 10.0, MSS)  # an epoch starts
        cc.cwnd = 4 << 20  # (the allowance is never more than the window either)
        _ack(cc, rtt, 10.0001, burst)  # then 10 ms of the model's data at once
        assert cc.extra_acked == pytest.approx(allowed, rel=0.02), min_rtt


def test_pacer_late_wakeup_keeps_its_credit() -> None:
    """A pacer woken 5 ms late may send what it would have sent meanwhile (up to
    MAX_LATE_CREDIT), not only one bucket; after a long pause it may not."""
    pacer = Pacer(MSS)
    pacer.set_rate(1_200_000.0)  # a packet per ms, bucket of 2 packets
    now = 10.0
    while pacer.next_send_time(now) is None:
        pacer.on_sent(MSS)
    at = pacer.next_send_time(now)
    assert at is not None
    late = at + 0.005
    sent = 0
    while pacer.next_send_time(late) is None:
        pacer.on_sent(MSS)
        sent += 1
    assert 6 <= sent <= 8  # the bucket (2) plus the 5 ms it was late by
    at = pacer.next_send_time(late)
    assert at is not None
    paused = at + 10 * MAX_LATE_CREDIT  # a pause, not a late timer: one bucket only
    sent = 0
    while pacer.next_send_time(paused) is None:
        pacer.on_sent(MSS)
        sent += 1
    assert sent == 2


def test_pacer_reports_falling_behind_only_beyond_its_credit() -> None:
    """A wake-up later than MAX_LATE_CREDIT means the host, not the path, held the sender
    back: the pacer says so (the packet builder then marks the samples app-limited)."""
    pacer = Pacer(MSS)
    pacer.set_rate(1_200_000.0)
    while pacer.next_send_time(10.0) is None:
        pacer.on_sent(MSS)
    at = pacer.next_send_time(10.0)
    assert at is not None
    assert pacer.next_send_time(at + MAX_LATE_CREDIT / 2) is None and not pacer.fell_behind
    while pacer.next_send_time(at + MAX_LATE_CREDIT / 2) is None:
        pacer.on_sent(MSS)
    at = pacer.next_send_time(at + MAX_LATE_CREDIT / 2)
    assert at is not None
    assert pacer.next_send_time(at + 2 * MAX_LATE_CREDIT) is None and pacer.fell_behind
