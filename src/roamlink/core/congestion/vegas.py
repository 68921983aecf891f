"""Vegas: delay-based congestion control that keeps a few packets queued at the bottleneck.

Loss on wireless and long-haul paths is often not congestion, so a window that halves on
every loss (Reno, CUBIC, KCP) collapses there. Vegas instead watches the delay: with ``base``
the smallest RTT seen (the empty-queue RTT) and ``rtt`` the current one, the flow has

    queued = cwnd/base - cwnd/rtt  (expected minus actual rate, times base)
           = cwnd_packets * (rtt - base) / rtt

packets sitting in the bottleneck queue. Once per round trip the window moves toward keeping
between ``ALPHA`` and ``BETA`` packets queued: proportionally to the error, around their
midpoint, so that flows sharing a bottleneck each keep the same few packets queued and thus
converge to equal shares (the FAST TCP form of the Vegas update). When the queue stays empty
for two rounds the window grows by an eighth per round instead, so a flow that starts, loses
its slow start to a random loss or finds new capacity gets there in a few dozen round trips.

Loss is judged by the delay around it: a loss while the queue is at or below the target is
taken as random (non-congestive) and only repaired; a loss while our queue estimate is above
``BETA``, or a round losing more than ``HEAVY_LOSS`` of its packets (a policer or a queue too
shallow for delay to show), is congestion and shrinks the window toward the rate the delay
says the path carries, at most by half and once per round trip.

Slow start doubles the window per round trip and ends when the queue estimate (over the last
few RTT samples) exceeds ``GAMMA`` packets, or on a congestive loss; a random loss ends it too
but leaves the window alone (the ramp-up then continues at an eighth per round). After an idle
period the connection restarts slow start from the initial window (see the base class).

Limitation: ``base`` is the minimum RTT over the connection (reset on a path change); if a
route gets longer without the address changing, Vegas sees a permanent queue and settles at
a smaller window, as classic Vegas does.
"""

from __future__ import annotations

from ..recovery import SentPacket
from ..rtt import RttEstimator
from .base import CongestionController, Phase

#: Queue targets, in packets: grow below ALPHA, shrink above BETA, aim at the midpoint.
ALPHA = 3
BETA = 6
#: Slow start ends once this many of our packets are queued.
GAMMA = 2
#: Fraction of the error to the target corrected per adjustment.
GAIN = 0.5
#: Growth per adjustment while the queue stays empty (fraction of the window).
RAMP = 1 / 8
#: ... and this much once the queue stayed empty for RAMP_FAST_AFTER measurements in a row
#: (a long, fat path where a random loss ended slow start early).
RAMP_FAST = 1 / 4
RAMP_FAST_AFTER = 4
#: Loss fraction of a round above which loss counts as congestion whatever the delay says.
HEAVY_LOSS = 0.3
#: Loss fraction of a round that ends slow start even without a delay rise.
SLOW_START_LOSS = 0.25
#: A loss is congestive only if the delay rose by more than this (clamped fraction of base):
#: a few packets of queue on a fast link are well inside the jitter of real paths.
DELAY_RISE_FRACTION = 1 / 8
DELAY_RISE_MIN = 0.002
DELAY_RISE_MAX = 0.008
#: Never shrink below this fraction of the window in one congestion event.
MIN_DECREASE = 0.5
#: Every this many seconds of steady sending, shrink the window by PROBE_DEPTH for two rounds
#: so the bottleneck queue (other flows' packets too) drains and the base RTT is re-measured.
#: Without it a flow that starts while others keep a queue takes that queue for the empty
#: path and settles at about 1.6 times their share (Vegas's "late-comer advantage").
PROBE_INTERVAL = 2.0
PROBE_DEPTH = 1 / 4
#: Competing with loss-based flows: after this many measurements in a row in which we shrank
#: while the queueing delay stayed high, someone else fills the queue (Reno, CUBIC): yielding
#: further would starve us, so grow by one packet per RTT and halve-ish on congestive loss
#: (AIMD, x0.7) until the queue is seen empty COMPETE_EXIT measurements in a row.
COMPETE_AFTER = 6
COMPETE_EXIT = 3
COMPETE_DECREASE = 0.7
#: ... "stayed high" means it did not fall by more than this (or 2 x rttvar on a jittery
#: path) and is still twice that above the base RTT; and a congestive loss (the queue
#: overflowed: Vegas flows alone never fill it) happened within COMPETE_MEMORY seconds.
COMPETE_TOLERANCE = 0.0005
COMPETE_MEMORY = 10.0
#: A measurement round lasts at least this long: on a sub-millisecond path a round holds a
#: handful of samples, and one scheduling hiccup of the hosts would read as a queue.
MIN_ROUND = 0.005
#: RTT samples over which the latest delay is judged (the minimum filters jitter).
_RECENT_SAMPLES = 8
_SS_SAMPLES = 4


class Vegas(CongestionController):
    name = "vegas"

    def __init__(self, max_datagram_size: int, initial_window_packets: int) -> None:
        super().__init__(max_datagram_size, initial_window_packets)
        self._round_start = 0.0  # ACK of a packet sent at or after this ends the round
        self._settling = False  # the round after a change measures the old window: skip it
        self._round_min_rtt = float("inf")
        self._round_acked = 0
        self._round_lost = 0
        self._round_max_in_flight = 0
        self._last_round_max_in_flight = 0
        self._last_round_counts = (0, 0)
        self._recovery_start = -1.0
        self._recent: list[float] = []
        self._phase: Phase = "slow_start"
        self._next_probe = float("inf")
        self._empty_runs = 0  # measurements in a row with an empty queue
        self._shrink_runs = 0  # measurements in a row in which we shrank
        self._shrink_rtts: list[float] = []  # round-min RTTs of the last measurements
        self.competing = False
        self._last_congestive = float("-inf")
        self._probe_rounds = 0
        self._probe_saved = 0
        self.queue_estimate = 0.0  # our packets queued at the bottleneck, last measurement
        self.random_losses = 0  # loss events judged non-congestive

    @property
    def state(self) -> Phase:
        return self._phase

    def on_packet_sent(self, size: int, now: float, bytes_in_flight: int = 0) -> None:
        if bytes_in_flight > self._round_max_in_flight:
            self._round_max_in_flight = bytes_in_flight

    def _queued(self, rtt_sample: float, base: float) -> float:
        """Packets of ours in the bottleneck queue if the RTT is ``rtt_sample``."""
        if rtt_sample <= base:
            return 0.0
        return self.cwnd / self.mss * (rtt_sample - base) / rtt_sample

    def on_packets_acked(self, packets: list[SentPacket], rtt: RttEstimator, now: float,
                         bytes_in_flight: int) -> None:
        if not rtt.has_sample:
            return
        latest = rtt.latest_path
        if latest < self._round_min_rtt:
            self._round_min_rtt = latest
        recent = self._recent
        recent.append(latest)
        if len(recent) > _RECENT_SAMPLES:
            del recent[0]
        acked = 0
        newest_sent = 0.0
        for pkt in packets:
            acked += pkt.size
            if pkt.time_sent > newest_sent:
                newest_sent = pkt.time_sent
        self._round_acked += len(packets)
        base = rtt.base
        # the window counts as used if the round had it (nearly) full: an application that
        # sends little must not inflate the window with growth it never tested
        used = max(self._round_max_in_flight, self._last_round_max_in_flight)
        limited = used + 2 * self.mss >= self.cwnd * 0.75
        if self._phase == "slow_start":
            if len(recent) == _RECENT_SAMPLES and self._delay_rose(rtt, GAMMA, slow_start=True):
                self._exit_slow_start(min(recent[-_SS_SAMPLES:]), base, now)
            elif limited:
                self.cwnd += acked
                if self.cwnd >= self.ssthresh:
                    self._phase = "ramp_up"
                    self._settling = True
        if newest_sent >= self._round_start and now - self._round_start >= MIN_ROUND:
            self._end_round(now, rtt, limited)

    def _exit_slow_start(self, rtt_sample: float, base: float, now: float) -> None:
        """Delay rose: drop the queue slow start built and continue with the Vegas update."""
        target = self.cwnd * base / rtt_sample + (ALPHA + BETA) / 2 * self.mss
        self.cwnd = max(int(min(self.cwnd, target)), self.min_window)
        self.ssthresh = float(self.cwnd)
        self._phase = "steady"
        self._settling = True
        self._round_start = now
        self._next_probe = now + PROBE_INTERVAL

    def _end_round(self, now: float, rtt: RttEstimator, limited: bool) -> None:
        base = rtt.base
        rtt_min = self._round_min_rtt
        if self._next_probe == float("inf") and self._phase != "slow_start":
            self._next_probe = now + PROBE_INTERVAL
        if self._phase == "slow_start":
            if self._loss_fraction() > SLOW_START_LOSS:
                self.ssthresh = float(self.cwnd)  # loss too frequent to be only random noise
                self._phase = "ramp_up"
                self._settling = True
        elif self._phase == "probe_rtt":
            self._probe_rounds += 1
            if self._probe_rounds >= 2:
                # the drained rounds refreshed the base RTT (the estimator keeps the minimum)
                self.cwnd = max(self.cwnd, self._probe_saved)
                self._phase = "steady"
                self._settling = True
                self._next_probe = now + PROBE_INTERVAL
        elif self.competing:
            self._compete_round(rtt_min, base, limited)
        elif self._settling:
            self._settling = False
        elif now >= self._next_probe and limited:
            self._probe_saved = self.cwnd
            self.cwnd = max(int(self.cwnd * (1 - PROBE_DEPTH)), self.min_window)
            self._phase = "probe_rtt"
            self._probe_rounds = 0
        elif rtt_min != float("inf"):
            queued = self._queued(rtt_min, base)
            self.queue_estimate = queued
            before = self.cwnd
            empty = queued < 1.0
            self._empty_runs = self._empty_runs + 1 if empty else 0
            if self._empty_runs >= 2:
                # nothing queued twice in a row: the path has room; grow by a fraction
                if limited:
                    ramp = RAMP_FAST if self._empty_runs > RAMP_FAST_AFTER else RAMP
                    self.cwnd += max(int(self.cwnd * ramp), self.mss)
                self._phase = "ramp_up"
            else:
                delta = GAIN * ((ALPHA + BETA) / 2 - queued) * self.mss
                if delta > 0 and not limited:
                    delta = 0.0
                delta = max(min(delta, self.cwnd), -self.cwnd * MIN_DECREASE)
                self.cwnd = max(int(self.cwnd + delta), self.min_window)
                self._phase = "steady"
            self._settling = self.cwnd != before
            self._watch_competition(now, rtt_min, rtt,
                                    shrank=queued > (ALPHA + BETA) / 2 + 1)
        self._round_start = now
        self._round_min_rtt = float("inf")
        self._last_round_counts = (self._round_acked, self._round_lost)
        self._round_acked = 0
        self._round_lost = 0
        self._last_round_max_in_flight = self._round_max_in_flight
        self._round_max_in_flight = 0

    def _watch_competition(self, now: float, rtt_min: float, rtt: RttEstimator,
                           shrank: bool) -> None:
        """Enter competing mode when we keep shrinking but the queueing delay keeps growing."""
        if not shrank:
            self._shrink_runs = 0
            self._shrink_rtts.clear()
            return
        self._shrink_runs += 1
        history = self._shrink_rtts
        history.append(rtt_min)
        if len(history) > COMPETE_AFTER:
            del history[0]
        tolerance = max(COMPETE_TOLERANCE, 2 * rtt.variance)
        high = rtt_min >= history[0] - tolerance and rtt_min - rtt.base > 2 * tolerance
        overflowed = now - self._last_congestive < COMPETE_MEMORY
        if self._shrink_runs >= COMPETE_AFTER and high and overflowed:
            self.competing = True
            self._phase = "competing"
            self._shrink_runs = 0
            history.clear()
            self._empty_runs = 0
            self._settling = False

    def _compete_round(self, rtt_min: float, base: float, limited: bool) -> None:
        """AIMD while a loss-based flow fills the queue; back to Vegas once it drains."""
        queued = self._queued(rtt_min, base) if rtt_min != float("inf") else 0.0
        self.queue_estimate = queued
        self._empty_runs = self._empty_runs + 1 if queued < 1.0 else 0
        if self._empty_runs >= COMPETE_EXIT:
            self.competing = False
            self._phase = "steady"
            self._settling = True
            return
        if limited:
            self.cwnd += self.mss

    def _loss_fraction(self) -> float:
        """Lost / (acked + lost) over this round and the last; 0 until half a window is known
        (a few losses early in a round say nothing about the loss rate)."""
        acked = self._round_acked + self._last_round_counts[0]
        lost = self._round_lost + self._last_round_counts[1]
        total = acked + lost
        if total < 8 or total * self.mss < self.cwnd // 2:
            return 0.0
        return lost / total

    def _delay_rose(self, rtt: RttEstimator, packets: float, slow_start: bool = False) -> bool:
        """Whether recent RTT samples show more than ``packets`` of ours queued, by a margin
        that jitter alone would not explain.

        Slow start must react within a few samples (the queue doubles every RTT), so it looks
        at fewer samples and needs no absolute margin beyond the jitter.
        """
        if not self._recent:
            return False
        base = rtt.base
        if slow_start:
            sample = min(self._recent[-_SS_SAMPLES:])
            threshold = 0.0
        else:
            sample = min(self._recent)
            threshold = min(max(base * DELAY_RISE_FRACTION, DELAY_RISE_MIN), DELAY_RISE_MAX)
        threshold = max(threshold, 2 * rtt.variance)  # a jittery path: rises within it are noise
        return sample - base > threshold and self._queued(sample, base) > packets

    def on_packets_lost(self, packets: list[SentPacket], rtt: RttEstimator, now: float) -> None:
        self._round_lost += len(packets)
        newest = max((p.time_sent for p in packets if p.in_flight), default=None)
        if newest is None or newest <= self._recovery_start:
            return  # one reaction per round trip of losses
        heavy = self._loss_fraction() > HEAVY_LOSS
        if self.competing:
            # our own window is small next to the queue others keep: judge by delay alone
            if not heavy and not self._delay_rose(rtt, 0.0):
                self.random_losses += 1
                return
            self._recovery_start = now
            self.congestion_events += 1
            self._last_congestive = now
            self.cwnd = max(int(self.cwnd * COMPETE_DECREASE), self.min_window)
            self.ssthresh = float(self.cwnd)
            return
        if not heavy and not self._delay_rose(rtt, BETA):
            # random loss: the delay says the queue is not growing; repair, keep the rate
            self.random_losses += 1
            return
        base = rtt.base
        self._recovery_start = now
        self.congestion_events += 1
        self._last_congestive = now
        sample = min(self._recent) if self._recent else rtt.latest_path
        fitted = self.cwnd * base / max(sample, base) + (ALPHA + BETA) / 2 * self.mss
        if heavy:
            fitted = min(fitted, self.cwnd * 0.7)
        # the delay tells how much of the window the path carries: shrink to that
        self.cwnd = max(int(max(min(fitted, self.cwnd), self.cwnd * MIN_DECREASE)),
                        self.min_window)
        self.ssthresh = float(self.cwnd)
        self._probe_saved = min(self._probe_saved, self.cwnd)
        self._phase = "recovery"
        self._settling = True
        self._round_start = now

    def on_path_change(self) -> None:
        super().on_path_change()
        self.competing = False
        self._shrink_runs = 0
        self._phase = "slow_start"
        self._recent.clear()
        self._recovery_start = -1.0
        self._round_min_rtt = float("inf")
        self._settling = False
        self._next_probe = float("inf")

    def on_idle(self) -> None:
        super().on_idle()
        self._phase = "slow_start"
        self._recent.clear()
        self._settling = False
        self._next_probe = float("inf")
