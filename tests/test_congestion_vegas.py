"""The Vegas controller and the pacer in isolation, fed synthetic ACKs and losses."""

from __future__ import annotations

import pytest

from roamlink.config import Config
from roamlink.core.congestion import CONTROLLERS, NewReno, create_controller
from roamlink.core.congestion.vegas import ALPHA, BETA, Vegas
from roamlink.core.pacing import Pacer
from roamlink.core.recovery import SentPacket
from roamlink.core.rtt import RttEstimator
from roamlink.errors import ConfigError

MSS = 1200
BASE = 0.02


class Path:
    """Drives a controller round by round over a path of fixed capacity and base RTT."""

    def __init__(self, cc: Vegas | NewReno, capacity_pkts: float) -> None:
        self.cc = cc
        self.rtt = RttEstimator(0.1)
        self.capacity = capacity_pkts  # packets per base RTT (the BDP)
        self.now = 0.0
        self.pn = 0

    def round(self, *, lose: int = 0, extra_delay: float = 0.0) -> None:
        """One RTT: send a window, get it acknowledged (minus ``lose`` packets) at the RTT a
        queue of the window's excess over the BDP would cause, plus ``extra_delay``."""
        n = max(int(self.cc.cwnd // MSS), 1)
        queued = max(n - self.capacity, 0)
        rtt = BASE * (1 + queued / self.capacity) + extra_delay
        sent = []
        for i in range(n):
            t = self.now + i * rtt / n
            pkt = SentPacket(self.pn, t, MSS, True, [], [])
            self.pn += 1
            self.cc.on_packet_sent(MSS, t, (i + 1) * MSS)
            sent.append(pkt)
        lost = sent[:lose]
        acked = sent[lose:]
        for i, pkt in enumerate(acked):
            now = pkt.time_sent + rtt
            self.rtt.update(rtt, 0.0)
            self.cc.on_packets_acked([pkt], self.rtt, now, (len(acked) - i - 1) * MSS)
            if i == 8 and lost:
                self.cc.on_packets_lost(lost, self.rtt, now)
        self.now += rtt


def test_bbr_is_the_default_and_vegas_and_newreno_stay_available() -> None:
    assert Config().congestion_control == "bbr"  # chosen by the figures in docs/recovery.md
    assert set(CONTROLLERS) == {"vegas", "newreno", "bbr"}
    for name in CONTROLLERS:  # Config validates against the registry
        assert Config(congestion_control=name).congestion_control == name
    assert isinstance(create_controller("vegas", MSS, 32), Vegas)
    assert isinstance(create_controller("newreno", MSS, 32), NewReno)
    with pytest.raises(ConfigError):
        Config(congestion_control="cubic")


def test_vegas_slow_start_ends_on_delay_rise_near_the_bdp() -> None:
    path = Path(Vegas(MSS, 10), capacity_pkts=200)
    for _ in range(12):
        path.round()
    cc = path.cc
    assert cc.state != "slow_start"
    assert 190 * MSS <= cc.cwnd <= 230 * MSS


def test_vegas_settles_with_a_few_packets_queued() -> None:
    path = Path(Vegas(MSS, 10), capacity_pkts=200)
    for _ in range(200):
        path.round()
    cc = path.cc
    queued = cc.cwnd / MSS - 200
    assert ALPHA - 1 <= queued <= BETA + 1
    assert cc.congestion_events == 0


def test_vegas_ignores_random_loss_but_not_loss_with_a_queue() -> None:
    path = Path(Vegas(MSS, 10), capacity_pkts=200)
    for _ in range(100):
        path.round()
    before = path.cc.cwnd
    for _ in range(50):
        path.round(lose=5)  # 2.5% loss every round, delay flat
    assert path.cc.cwnd >= before - 2 * MSS
    assert path.cc.congestion_events == 0 and path.cc.random_losses > 0
    # the same loss while the RTT shows a standing queue of 10 ms: congestion, back off
    path.round(lose=5, extra_delay=0.010)
    assert path.cc.congestion_events == 1
    assert path.cc.cwnd <= 0.8 * before


def test_vegas_backs_off_on_heavy_loss_even_without_delay() -> None:
    """A policer or a very shallow queue drops without delay: a third of a round lost is
    congestion whatever the delay says (judged over two rounds)."""
    path = Path(Vegas(MSS, 10), capacity_pkts=200)
    for _ in range(100):
        path.round()
    before = path.cc.cwnd
    for _ in range(2):
        path.round(lose=int(before / MSS * 0.4))
    assert path.cc.congestion_events >= 1 and path.cc.cwnd < 0.8 * before


def test_newreno_halves_on_random_loss() -> None:
    path = Path(NewReno(MSS, 10), capacity_pkts=200)
    for _ in range(8):
        path.round()
    before = path.cc.cwnd
    path.round(lose=1)
    assert path.cc.cwnd < 0.6 * before


def test_vegas_does_not_grow_when_the_application_sends_little() -> None:
    cc = Vegas(MSS, 10)
    rtt = RttEstimator(0.1)
    now = 0.0
    for pn in range(2000):  # one packet per 20 ms RTT: far below the window
        pkt = SentPacket(pn, now, MSS, True, [], [])
        cc.on_packet_sent(MSS, now, MSS)
        rtt.update(BASE, 0.0)
        cc.on_packets_acked([pkt], rtt, now + BASE, 0)
        now += BASE
    assert cc.cwnd <= 10 * MSS


def test_pacer_token_bucket() -> None:
    pacer = Pacer(MSS)
    pacer.set_rate(1_200_000.0)  # 1000 packets per second: bucket of 2 ms = 2 packets
    assert pacer.burst == 2 * MSS
    now = 10.0
    sent = 0
    while pacer.next_send_time(now) is None:
        pacer.on_sent(MSS)
        sent += 1
    assert sent == 2  # a full bucket, then wait
    at = pacer.next_send_time(now)
    assert at is not None and abs(at - (now + 0.001)) < 1e-9
    assert pacer.next_send_time(at) is None
    unpaced = Pacer(MSS)
    assert unpaced.next_send_time(0.0) is None
