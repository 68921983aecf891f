"""BBR: model-based congestion control (bottleneck bandwidth and round-trip propagation time).

Vegas infers the queue from the RTT, so any delay that is not a queue — jitter on a radio
link, a busy host's scheduling — reads as congestion and shrinks the window. BBR instead keeps
an explicit model of the path and sends at it:

* ``btl_bw``: the bottleneck bandwidth, the **maximum** delivery rate
  (``core/delivery_rate.py``) over the last ``BW_WINDOW_ROUNDS`` round trips. Delay jitter
  does not lower it: a late ACK only makes one sample smaller, and the maximum ignores it.
* ``min_rtt``: the propagation delay, the **minimum** RTT over the last ``MIN_RTT_WINDOW``
  seconds (not the connection's lifetime: a route that lengthens is noticed within that time).
  Jitter only ever adds delay, so the minimum still finds the empty-path RTT.
* It paces at ``pacing_gain x btl_bw`` and allows ``cwnd = cwnd_gain x btl_bw x min_rtt``
  (the bandwidth-delay product, BDP) plus the ACK aggregation seen recently (``extra_acked``:
  a receiver or host that acknowledges in bursts needs that much more in flight to keep the
  pipe full between bursts).

Phases (the BBR draft, draft-cardwell-iccrg-bbr-congestion-control, and Linux ``tcp_bbr.c``):

* ``startup``: pacing and window gain 2/ln 2 (the rate doubles each round) until the
  bandwidth stops growing by 25% for three rounds: the pipe is full.
* ``drain``: pace below the model (1/gain) until what is in flight falls to one BDP, which
  empties the queue start-up built.
* ``probe_bw``: cycle the pacing gain through 1.25 (probe for more bandwidth for one min_rtt),
  0.75 (drain what the probe queued) and six rounds of 1.0.
* ``probe_rtt``: when ``min_rtt`` has not been refreshed for ``MIN_RTT_WINDOW`` seconds, hold
  the window at 4 packets for ``PROBE_RTT_TIME`` (and one round), so the queue — ours and
  other flows' — drains and the true propagation delay is measured again; flows that share a
  bottleneck see the same empty queue and converge to the same model.

Loss does not change the model: random loss on a radio link is not congestion (the first
principle of this project), and a loss from a queue that overflowed shows up as a delivery
rate that stopped growing. Recovery (``core/recovery.py``, RACK-TLP) repairs it.
"""

from __future__ import annotations

from typing import Final, Literal

from ..delivery_rate import RateSample
from ..recovery import SentPacket
from ..rtt import RttEstimator
from .base import CongestionController

BbrPhase = Literal["startup", "drain", "probe_bw", "probe_rtt"]

#: Start-up gain: the smallest that doubles the delivery rate each round trip (2/ln 2).
HIGH_GAIN: Final = 2.885
DRAIN_GAIN: Final = 1 / HIGH_GAIN
CWND_GAIN: Final = 2.0
#: ProbeBW's pacing-gain cycle, one phase per min_rtt.
# (not Final: mypyc (2.4) inverts the "was it set" test of a Final tuple of floats, so every
# read raised NameError; a plain global costs a dict lookup, once per gain phase)
PACING_GAINS: tuple[float, ...] = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: The bandwidth filter's window, in round trips.
BW_WINDOW_ROUNDS: Final = 10
#: ACK-aggregation filter's window, in round trips.
EXTRA_ACKED_ROUNDS: Final = 10
#: Seconds a min_rtt sample stays valid before ProbeRTT measures it again.
MIN_RTT_WINDOW: Final = 10.0
PROBE_RTT_TIME: Final = 0.2
#: The window is never below this many packets (ProbeRTT holds it there).
MIN_CWND_PACKETS: Final = 4
#: Start-up ends when the bandwidth grew by less than this factor in FULL_BW_ROUNDS rounds.
FULL_BW_GROWTH: Final = 1.25
FULL_BW_ROUNDS: Final = 3
#: Pace a little below the model so a queue does not creep up from rounding.
PACING_MARGIN: Final = 0.99
#: The ACK-aggregation allowance never exceeds this many seconds at the bottleneck rate...
MAX_EXTRA_ACKED_TIME: Final = 0.1
#: ... nor EXTRA_ACKED_RTTS min_rtts' worth, or MIN_EXTRA_ACKED_TIME's on a shorter path.
#: Data beyond the model can only wait in the bottleneck's queue, so the allowance bounds the
#: standing queue: on a sub-millisecond path a busy host's 10-15 ms stalls made it 20-40 times
#: the BDP and 8-17 ms of queue at a 50 Mbit/s tbf. There it is now at most 5 ms (about the
#: scheduling noise such a host adds to the RTT anyway); from 20 ms of RTT up nothing changes.
EXTRA_ACKED_RTTS: Final = 5.0
MIN_EXTRA_ACKED_TIME: Final = 0.005
#: A round trip, for the model's filters and the gain cycle, lasts at least this long: on a
#: sub-millisecond path (loopback, a LAN) a round holds a handful of packets, a probe at 1.25x
#: for one such round measures nothing, and one scheduling hiccup of a busy host would expire
#: the bandwidth estimate. (Vegas has the same floor, for the same reason.)
MIN_ROUND: Final = 0.005
#: (compiled, ``float("inf")`` in an expression parses the string on every evaluation)
_INF: Final = float("inf")


class WindowedMax:
    """Maximum of (round, value) samples over the last ``window`` rounds (a monotonic queue:
    values that a newer, larger sample dominates are dropped, so at most ``window`` remain)."""

    __slots__ = ("window", "_rounds", "_values", "best")

    def __init__(self, window: int) -> None:
        self.window = window
        self._rounds: list[int] = []
        self._values: list[float] = []
        #: the maximum (0.0: no sample): kept as a plain float, as it is read on every ACK and
        #: a list item is a boxed float
        self.best = 0.0

    def reset(self) -> None:
        self._rounds.clear()
        self._values.clear()
        self.best = 0.0

    def update(self, value: float, round_count: int) -> None:
        rounds, values = self._rounds, self._values
        while values and values[-1] <= value:
            values.pop()
            rounds.pop()
        values.append(value)
        rounds.append(round_count)
        self.expire(round_count)

    def expire(self, round_count: int) -> None:
        rounds = self._rounds
        values = self._values
        while rounds and rounds[0] <= round_count - self.window:
            del rounds[0]
            del values[0]
        self.best = values[0] if values else 0.0


class Bbr(CongestionController):
    name = "bbr"

    def __init__(self, max_datagram_size: int, initial_window_packets: int) -> None:
        super().__init__(max_datagram_size, initial_window_packets)
        self.min_window = MIN_CWND_PACKETS * max_datagram_size
        self._bw = WindowedMax(BW_WINDOW_ROUNDS)
        self._extra = WindowedMax(EXTRA_ACKED_ROUNDS)
        self._reset_model()

    def _reset_model(self) -> None:
        self.phase: BbrPhase = "startup"
        self._bw.reset()
        self._extra.reset()
        self.btl_bw = 0.0
        self.min_rtt = float("inf")
        self._min_rtt_stamp = 0.0
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = HIGH_GAIN
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_stamp = float("-inf")
        self._round_start = False
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._probe_rtt_done = -1.0  # when ProbeRTT may end (-1: not yet known)
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self._idle_restart = False
        self._epoch_start = -1.0
        self._epoch_acked = 0
        self.extra_acked = 0
        self._sample: RateSample | None = None
        self._delivered = 0

    @property
    def state(self) -> BbrPhase:
        return self.phase

    # -- the model ----------------------------------------------------------------------------
    def bdp(self, gain: float) -> int:
        """``gain`` x the bandwidth-delay product, in bytes (the initial window before the
        model has both halves)."""
        if self.btl_bw <= 0.0 or self.min_rtt == _INF:
            return int(gain * self.initial_window)
        return int(gain * self.btl_bw * self.min_rtt)

    def on_delivery(self, sample: RateSample, delivered: int) -> None:
        self._sample = sample
        self._delivered = delivered

    def on_packets_acked(self, packets: list[SentPacket], rtt: RttEstimator, now: float,
                         bytes_in_flight: int) -> None:
        rs = self._sample
        self._sample = None
        if rs is None:
            return
        self._update_round(rs, now)
        self._update_bw(rs)
        self._update_extra_acked(rs, now)
        if rtt.has_sample:
            self._update_min_rtt(rtt.latest_path, now)
        if self.phase == "probe_bw":
            self._update_cycle(now, bytes_in_flight, rs)
        self._check_full_pipe(rs)
        self._check_drain(now, bytes_in_flight)
        self._check_probe_rtt(now, bytes_in_flight)
        self._set_cwnd(rs, bytes_in_flight)

    def _update_round(self, rs: RateSample, now: float) -> None:
        self._round_start = False
        if (rs.prior_delivered >= self._next_round_delivered
                and now - self._round_stamp >= MIN_ROUND):
            self._next_round_delivered = self._delivered
            self._round_stamp = now
            self.round_count += 1
            self._round_start = True

    def _update_bw(self, rs: RateSample) -> None:
        rate = rs.delivery_rate
        if rate <= 0.0:
            return
        if rs.opens_flight and self.filled_pipe and rs.interval > 0.0:
            # the opening burst of a flight that started from nothing in flight (after the
            # host stalled, or idle) is bounded by the ACK interval alone, so a shaper's full
            # token bucket makes it read up to several times the rate (tbf at 50 Mbit/s:
            # 10-25 MB/s samples of a 6.25 MB/s link), and the max filter would keep that
            # for ten rounds, pacing above the link into its queue. Such a sample is worth
            # one packet per interval: what a flight of one packet (a slow flow whose every
            # packet finds nothing in flight) says. Start-up takes them whole (there is no
            # model yet, and its over-estimates are drained).
            one = self.mss / rs.interval
            if rate > one:
                rate = one
        # an app-limited sample measures the application: use it only if it beats the model,
        # and let it not age the model either (as Linux BBR: the filter moves only on samples
        # that say something about the path)
        if not rs.is_app_limited or rate >= self._bw.best:
            self._bw.update(rate, self.round_count)
            self.btl_bw = self._bw.best

    def _update_extra_acked(self, rs: RateSample, now: float) -> None:
        """How much more than the model predicts arrived in the current burst of ACKs."""
        bw = self.btl_bw
        if bw <= 0.0:
            return
        if self._epoch_start < 0.0:
            self._epoch_start = now
        expected = bw * (now - self._epoch_start)
        if self._epoch_acked <= expected:
            # ACKs are keeping up with the model: a new aggregation epoch starts here
            self._epoch_start = now
            self._epoch_acked = 0
            expected = 0.0
        self._epoch_acked += rs.newly_acked
        extra = self._epoch_acked - expected
        window = EXTRA_ACKED_RTTS * self.min_rtt
        if window < MIN_EXTRA_ACKED_TIME:
            window = MIN_EXTRA_ACKED_TIME
        if window > MAX_EXTRA_ACKED_TIME:
            window = MAX_EXTRA_ACKED_TIME
        limit = min(self.cwnd, bw * window)
        if extra > limit:
            extra = limit
        if self._round_start or extra > self._extra.best:
            self._extra.update(extra, self.round_count)
        self.extra_acked = int(self._extra.best)

    def _update_min_rtt(self, sample: float, now: float) -> None:
        expired = now > self._min_rtt_stamp + MIN_RTT_WINDOW
        if sample <= self.min_rtt or expired:
            if expired and self.phase != "probe_rtt" and sample > self.min_rtt:
                # stale: take the sample, but measure again in ProbeRTT (below)
                self._enter_probe_rtt(now)
            self.min_rtt = sample
            self._min_rtt_stamp = now

    def _check_full_pipe(self, rs: RateSample) -> None:
        if self.filled_pipe or not self._round_start or rs.is_app_limited:
            return
        if self.btl_bw >= self._full_bw * FULL_BW_GROWTH:
            self._full_bw = self.btl_bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _check_drain(self, now: float, bytes_in_flight: int) -> None:
        if self.phase == "startup" and self.filled_pipe:
            self.phase = "drain"
            self.pacing_gain = DRAIN_GAIN
            self.cwnd_gain = HIGH_GAIN
        if self.phase == "drain" and bytes_in_flight <= self.bdp(1.0):
            self._enter_probe_bw(now)

    def _enter_probe_bw(self, now: float) -> None:
        self.phase = "probe_bw"
        self.cwnd_gain = CWND_GAIN
        # start at a phase that depends on the time (deterministic on a virtual clock, and
        # different for flows that start apart), never the draining one
        index = int(now * 1e4) % (len(PACING_GAINS) - 1)
        self._cycle_index = index + 1 if index >= 1 else index
        self._cycle_stamp = now
        self.pacing_gain = PACING_GAINS[self._cycle_index]

    def _update_cycle(self, now: float, bytes_in_flight: int, rs: RateSample) -> None:
        elapsed = now - self._cycle_stamp > max(self.min_rtt, MIN_ROUND)
        gain = self.pacing_gain
        if gain > 1.0:
            # probe until a round has passed and the extra data is in flight
            advance = elapsed and bytes_in_flight >= self.bdp(gain)
        elif gain < 1.0:
            # drain until what is in flight is back to one BDP (or a round passed)
            advance = elapsed or bytes_in_flight <= self.bdp(1.0)
        else:
            advance = elapsed
        if advance:
            self._cycle_index = (self._cycle_index + 1) % len(PACING_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PACING_GAINS[self._cycle_index]

    def _enter_probe_rtt(self, now: float) -> None:
        self._prior_cwnd = self.cwnd
        self.phase = "probe_rtt"
        self.pacing_gain = 1.0
        self.cwnd_gain = 1.0
        self._probe_rtt_done = -1.0
        self._probe_rtt_round_done = False

    def _check_probe_rtt(self, now: float, bytes_in_flight: int) -> None:
        if self.phase != "probe_rtt":
            return
        if self._probe_rtt_done < 0.0:
            if bytes_in_flight <= self.min_window:
                # the queue is draining: hold for PROBE_RTT_TIME and at least one round
                self._probe_rtt_done = now + PROBE_RTT_TIME
                self._probe_rtt_round_done = False
                self._next_round_delivered = self._delivered
            return
        if self._round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done:
            self._min_rtt_stamp = now
            self.cwnd = max(self.cwnd, self._prior_cwnd)
            if self.filled_pipe:
                self._enter_probe_bw(now)
            else:
                self.phase = "startup"
                self.pacing_gain = HIGH_GAIN
                self.cwnd_gain = HIGH_GAIN

    def _set_cwnd(self, rs: RateSample, bytes_in_flight: int) -> None:
        acked = rs.newly_acked
        target = self.bdp(self.cwnd_gain) + self.extra_acked
        if self.filled_pipe:
            cwnd = min(self.cwnd + acked, target)
        elif self.cwnd < target or self._delivered < self.initial_window:
            cwnd = self.cwnd + acked
        else:
            cwnd = self.cwnd
        if cwnd < self.min_window:
            cwnd = self.min_window
        if self.phase == "probe_rtt" and cwnd > self.min_window:
            cwnd = self.min_window
        self.cwnd = cwnd

    def on_packets_lost(self, packets: list[SentPacket], rtt: RttEstimator, now: float) -> None:
        """Loss leaves the model alone (see the module docstring); only counted."""

    def pacing_rate(self, rtt: RttEstimator) -> float:
        if self.btl_bw > 0.0:
            return self.pacing_gain * self.btl_bw * PACING_MARGIN
        # no sample yet: the initial window over the (initial) RTT, at start-up gain
        return HIGH_GAIN * self.cwnd / max(rtt.smoothed, 1e-4)

    def on_path_change(self) -> None:
        super().on_path_change()
        self._reset_model()

    def on_idle(self) -> None:
        """After idle the model still holds (it is the path's, not the ACK clock's): keep the
        window, and pace at the model rather than probing above it on the first round."""
        self._idle_restart = True
        if self.phase == "probe_bw":
            self.pacing_gain = 1.0
