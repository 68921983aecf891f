"""NewReno: the loss-based reference controller."""

from __future__ import annotations

from ..recovery import SentPacket
from ..rtt import RttEstimator
from .base import CongestionController


class NewReno(CongestionController):
    """Loss-based NewReno (RFC 9002 section 7): halve on loss, +1 packet per RTT."""

    name = "newreno"

    def __init__(self, max_datagram_size: int, initial_window_packets: int) -> None:
        super().__init__(max_datagram_size, initial_window_packets)
        self._recovery_start = -1.0
        self._acked_in_ca = 0

    def on_packets_acked(self, packets: list[SentPacket], rtt: RttEstimator, now: float,
                         bytes_in_flight: int) -> None:
        for pkt in packets:
            if not pkt.in_flight or pkt.time_sent <= self._recovery_start:
                continue
            if self.cwnd < self.ssthresh:
                self.cwnd += pkt.size
            else:
                self._acked_in_ca += pkt.size
                if self._acked_in_ca >= self.cwnd:
                    self._acked_in_ca -= self.cwnd
                    self.cwnd += self.mss

    def on_packets_lost(self, packets: list[SentPacket], rtt: RttEstimator, now: float) -> None:
        newest = max((p.time_sent for p in packets if p.in_flight), default=None)
        if newest is None or newest <= self._recovery_start:
            return  # one reduction per round trip of losses
        self._recovery_start = now
        self.congestion_events += 1
        self.cwnd = max(self.cwnd // 2, self.min_window)
        self.ssthresh = float(self.cwnd)
