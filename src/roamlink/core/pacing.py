"""Pacing: spread a congestion window's packets over the RTT instead of sending them at once.

A whole window sent back to back arrives at the bottleneck as a burst that a small router
queue drops, which a delay-based controller would then misread. The pacer is a token bucket
refilled at the controller's pacing rate; its bucket holds a couple of milliseconds' worth
of bytes, so the owner wakes up at most about once per bucket instead of once per packet.
"""

from __future__ import annotations

#: Seconds of sending the bucket may hold: small bursts keep per-wakeup cost low.
BURST_TIME = 0.002
#: Bucket bounds, in packets.
MIN_BURST_PACKETS = 2
MAX_BURST_PACKETS = 32


class Pacer:
    """Token bucket: ``next_send_time`` says when the next packet of ``size`` may leave."""

    __slots__ = ("mss", "rate", "burst", "tokens", "last")

    def __init__(self, max_datagram_size: int) -> None:
        self.mss = max_datagram_size
        self.rate = 0.0  # bytes per second; 0 means unpaced
        self.burst = float(MAX_BURST_PACKETS * max_datagram_size)
        self.tokens = self.burst
        self.last = 0.0

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        burst = rate * BURST_TIME
        mss = self.mss
        if burst < MIN_BURST_PACKETS * mss:
            burst = float(MIN_BURST_PACKETS * mss)
        elif burst > MAX_BURST_PACKETS * mss:
            burst = float(MAX_BURST_PACKETS * mss)
        self.burst = burst

    def next_send_time(self, now: float) -> float | None:
        """None if a full-size packet may leave now, else when it may."""
        if self.rate <= 0:
            return None
        tokens = self.tokens + (now - self.last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens = tokens
        self.last = now
        if tokens > self.mss - 1:  # (a byte of slack absorbs float rounding)
            return None
        return now + (self.mss - tokens) / self.rate

    def on_sent(self, size: int) -> None:
        """Spend tokens for a packet just sent (call ``next_send_time`` first to refill)."""
        if self.rate > 0:
            self.tokens -= size
