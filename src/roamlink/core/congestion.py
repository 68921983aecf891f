"""Congestion control behind a small interface; controllers are chosen by name in Config."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from .delivery_rate import RateSample
from .recovery import SentPacket
from .rtt import RttEstimator


class CongestionController(ABC):
    """How many bytes may be in flight, and how fast to pace them.

    The connection reports every sent, acknowledged and lost packet; the controller owns
    ``cwnd`` (bytes). Implementations must never let ``cwnd`` drop below two packets.
    """

    name = "abstract"

    def __init__(self, max_datagram_size: int, initial_window_packets: int) -> None:
        self.mss = max_datagram_size
        self.initial_window = initial_window_packets * max_datagram_size
        self.min_window = 2 * max_datagram_size
        self.cwnd = self.initial_window
        self.ssthresh: float = float("inf")
        self.congestion_events = 0

    @property
    def state(self) -> str:
        return "slow_start" if self.cwnd < self.ssthresh else "congestion_avoidance"

    def on_packet_sent(self, size: int, now: float,  # noqa: B027 - optional hook
                       bytes_in_flight: int = 0) -> None:
        """Called for every in-flight packet sent (``bytes_in_flight`` includes it)."""

    def on_delivery(self, sample: RateSample,  # noqa: B027 - optional hook
                    delivered: int) -> None:
        """Called before :meth:`on_packets_acked` with the ACK's delivery-rate sample and
        the path's total delivered bytes (model-based controllers use them)."""

    @abstractmethod
    def on_packets_acked(self, packets: list[SentPacket], rtt: RttEstimator, now: float,
                         bytes_in_flight: int) -> None:
        """Called once per ACK frame with the in-flight packets it newly acknowledged."""

    @abstractmethod
    def on_packets_lost(self, packets: list[SentPacket], rtt: RttEstimator, now: float) -> None:
        """Called once per loss detection with the in-flight packets declared lost."""

    def on_path_change(self) -> None:
        """A new network path: start over (slow start from the initial window)."""
        self.cwnd = self.initial_window
        self.ssthresh = float("inf")

    def on_idle(self) -> None:
        """Sending resumes after an idle period longer than the retransmission timeout.

        The window is no longer backed by a recent ACK clock (the path may have changed its
        load meanwhile), so restart slow start from the initial window, remembering most of
        the old window as the slow-start threshold (RFC 2861 / RFC 7661 in spirit).
        """
        if self.cwnd > self.initial_window:
            self.ssthresh = self.cwnd * 3 // 4
            self.cwnd = self.initial_window

    def pacing_rate(self, rtt: RttEstimator) -> float:
        """Bytes per second to pace at: a little faster than cwnd per RTT."""
        factor = 2.0 if self.cwnd < self.ssthresh else 1.25
        return factor * self.cwnd / max(rtt.smoothed, 1e-4)


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
        self.ssthresh = self.cwnd


def _vegas(max_datagram_size: int, initial_window_packets: int) -> CongestionController:
    from .vegas import Vegas  # vegas imports this module for the base class

    return Vegas(max_datagram_size, initial_window_packets)


def _bbr(max_datagram_size: int, initial_window_packets: int) -> CongestionController:
    from .bbr import Bbr  # bbr imports this module for the base class

    return Bbr(max_datagram_size, initial_window_packets)


CONTROLLERS: dict[str, Callable[[int, int], CongestionController]] = {
    "vegas": _vegas,
    "newreno": NewReno,
    "bbr": _bbr,
}


def create_controller(name: str, max_datagram_size: int,
                      initial_window_packets: int) -> CongestionController:
    return CONTROLLERS[name](max_datagram_size, initial_window_packets)
