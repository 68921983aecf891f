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

from .congestion import CongestionController
from .recovery import SentPacket
from .rtt import RttEstimator

#: Queue targets, in packets: grow below ALPHA, shrink above BETA, aim at the midpoint.
ALPHA = 3
BETA = 6
#: Slow start ends once this many of our packets are queued.
GAMMA = 2
#: Fraction of the error to the target corrected per round trip.
GAIN = 0.5
#: Growth per round trip while the queue stays empty (fraction of the window).
RAMP = 1 / 8
#: Loss fraction of a round above which loss counts as congestion whatever the delay says.
HEAVY_LOSS = 0.3
#: Never shrink below this fraction of the window in one congestion event.
MIN_DECREASE = 0.5
#: RTT samples over which slow start takes the minimum (filters jitter).
_SS_SAMPLES = 3


class Vegas(CongestionController):
    name = "vegas"

    def __init__(self, max_datagram_size: int, initial_window_packets: int) -> None:
        super().__init__(max_datagram_size, initial_window_packets)
        self._round_start = 0.0  # packets sent at or after this time belong to the next round
        self._round_min_rtt = float("inf")
        self._round_acked = 0
        self._round_lost = 0
        self._round_max_in_flight = 0
        self._empty_rounds = 0
        self._recovery_start = -1.0
        self._recent: list[float] = []
        self._phase = "slow_start"
        self.queue_estimate = 0.0  # packets, at the last round's end
        self.random_losses = 0  # loss events judged non-congestive

    @property
    def state(self) -> str:
        return self._phase

    def on_packet_sent(self, size: int, now: float, bytes_in_flight: int = 0) -> None:
        if bytes_in_flight > self._round_max_in_flight:
            self._round_max_in_flight = bytes_in_flight

    def _queued(self, rtt_sample: float, base: float) -> float:
        """Packets of ours in the bottleneck queue if the RTT is ``rtt_sample``."""
        if rtt_sample <= base or rtt_sample <= 0:
            return 0.0
        return self.cwnd / self.mss * (rtt_sample - base) / rtt_sample

    def on_packets_acked(self, packets: list[SentPacket], rtt: RttEstimator, now: float,
                         bytes_in_flight: int) -> None:
        if not rtt.has_sample:
            return
        latest = rtt.latest
        if latest < self._round_min_rtt:
            self._round_min_rtt = latest
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
        limited = self._round_max_in_flight + 2 * self.mss >= self.cwnd * 0.75
        if self._phase == "slow_start":
            recent = self._recent
            recent.append(latest)
            if len(recent) > _SS_SAMPLES:
                del recent[0]
            if len(recent) == _SS_SAMPLES and self._queued(min(recent), base) > GAMMA:
                self._exit_slow_start(min(recent), base)
            elif limited:
                self.cwnd += acked
                if self.cwnd >= self.ssthresh:
                    self._phase = "ramp_up"
        if newest_sent >= self._round_start:
            self._end_round(now, base, limited)

    def _exit_slow_start(self, rtt_sample: float, base: float) -> None:
        """Delay rose: drop the queue slow start built and continue with the Vegas update."""
        target = self.cwnd * base / rtt_sample + (ALPHA + BETA) / 2 * self.mss
        self.cwnd = max(int(min(self.cwnd, target)), self.min_window)
        self.ssthresh = self.cwnd
        self._phase = "steady"

    def _end_round(self, now: float, base: float, limited: bool) -> None:
        rtt_min = self._round_min_rtt
        queued = self._queued(rtt_min, base) if rtt_min != float("inf") else 0.0
        self.queue_estimate = queued
        if self._phase != "slow_start" and rtt_min != float("inf"):
            mss = self.mss
            if queued < 1.0:
                self._empty_rounds += 1
            else:
                self._empty_rounds = 0
            if queued < ALPHA and self._empty_rounds >= 2:
                if limited:
                    self.cwnd += max(int(self.cwnd * RAMP), mss)
                self._phase = "ramp_up"
            else:
                delta = GAIN * ((ALPHA + BETA) / 2 - queued) * mss
                if delta > 0 and not limited:
                    delta = 0
                # at most double, at most halve per round
                delta = max(min(delta, self.cwnd), -self.cwnd * MIN_DECREASE)
                self.cwnd = max(int(self.cwnd + delta), self.min_window)
                self._phase = "steady"
        self._round_start = now
        self._round_min_rtt = float("inf")
        self._round_acked = 0
        self._round_lost = 0
        self._round_max_in_flight = 0

    def on_packets_lost(self, packets: list[SentPacket], rtt: RttEstimator, now: float) -> None:
        self._round_lost += len(packets)
        newest = max((p.time_sent for p in packets if p.in_flight), default=None)
        if newest is None or newest <= self._recovery_start:
            return  # one reaction per round trip of losses
        base = rtt.base
        queued = self._queued(rtt.latest, base) if rtt.has_sample else 0.0
        total = self._round_acked + self._round_lost
        heavy = total >= 8 and self._round_lost > HEAVY_LOSS * total
        if queued <= BETA and not heavy:
            # random loss: the delay says the queue is not growing; repair, keep the rate
            self.random_losses += 1
            if self._phase == "slow_start":
                self.ssthresh = self.cwnd
                self._phase = "ramp_up"
            return
        self._recovery_start = now
        self.congestion_events += 1
        fitted = self.cwnd * base / max(rtt.latest, base) + (ALPHA + BETA) / 2 * self.mss
        if heavy:
            fitted = min(fitted, self.cwnd * 0.7)
        self.cwnd = max(int(max(min(fitted, self.cwnd * 0.85), self.cwnd * MIN_DECREASE)),
                        self.min_window)
        self.ssthresh = self.cwnd
        self._empty_rounds = 0
        self._phase = "recovery"

    def on_path_change(self) -> None:
        super().on_path_change()
        self._phase = "slow_start"
        self._recent.clear()
        self._empty_rounds = 0
        self._recovery_start = -1.0
        self._round_min_rtt = float("inf")

    def on_idle(self) -> None:
        super().on_idle()
        self._phase = "slow_start"
        self._recent.clear()
        self._empty_rounds = 0
