"""The interface every congestion controller implements (see the package docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from ..delivery_rate import RateSample
from ..recovery import SentPacket
from ..rtt import RttEstimator

#: What a controller is doing, as ``stats().congestion_state`` reports it. NewReno uses the
#: first two; Vegas (see :mod:`.vegas`) ``slow_start`` and ``ramp_up`` .. ``recovery``; BBR
#: (see :mod:`.bbr`) ``startup``, ``drain``, ``probe_bw`` and ``probe_rtt``.
Phase = Literal["slow_start", "congestion_avoidance", "ramp_up", "steady", "probe_rtt",
                "competing", "recovery", "startup", "drain", "probe_bw"]


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
    def state(self) -> Phase:
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
            self.ssthresh = float(self.cwnd * 3 // 4)
            self.cwnd = self.initial_window

    def pacing_rate(self, rtt: RttEstimator) -> float:
        """Bytes per second to pace at: a little faster than cwnd per RTT."""
        factor = 2.0 if self.cwnd < self.ssthresh else 1.25
        return factor * self.cwnd / max(rtt.smoothed, 1e-4)
