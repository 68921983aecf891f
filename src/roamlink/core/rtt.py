"""RTT estimation (RFC 9002 section 5): smoothed RTT, variance, minimum, ACK-delay correction."""

from __future__ import annotations


class RttEstimator:
    __slots__ = ("initial_rtt", "smoothed", "variance", "min_rtt", "latest", "latest_path",
                 "has_sample")

    def __init__(self, initial_rtt: float) -> None:
        self.initial_rtt = initial_rtt
        self.reset()

    def reset(self) -> None:
        """Forget every sample (a new path has an unknown RTT)."""
        self.smoothed = self.initial_rtt
        self.variance = self.initial_rtt / 2
        self.min_rtt = float("inf")
        self.latest = self.initial_rtt
        #: the latest sample minus the peer's reported ACK delay (never below min_rtt): the
        #: delay the path itself added, which is what delay-based congestion control needs
        self.latest_path = self.initial_rtt
        self.has_sample = False

    def update(self, sample: float, ack_delay: float) -> None:
        self.latest = sample
        if sample < self.min_rtt:
            self.min_rtt = sample
        # the peer's ACK delay is not path delay, unless it would push below min_rtt
        adjusted = sample - ack_delay if sample - ack_delay >= self.min_rtt else sample
        self.latest_path = adjusted if adjusted >= self.min_rtt else self.min_rtt
        if not self.has_sample:
            self.has_sample = True
            self.smoothed = sample
            self.variance = sample / 2
            return
        self.variance = 0.75 * self.variance + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted

    @property
    def base(self) -> float:
        """The best estimate of the propagation RTT (min RTT once known)."""
        return self.min_rtt if self.has_sample else self.initial_rtt
