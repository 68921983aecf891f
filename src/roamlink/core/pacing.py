"""Pacing: spread a congestion window's packets over the RTT instead of sending them at once.

A whole window sent back to back arrives at the bottleneck as a burst that a small router
queue drops, which a delay-based controller would then misread. The pacer is a token bucket
refilled at the controller's pacing rate; its bucket holds a couple of milliseconds' worth
of bytes, so the owner wakes up at most about once per bucket instead of once per packet.
"""

from __future__ import annotations

from typing import Final

#: Seconds of sending the bucket may hold: small bursts keep per-wakeup cost low.
BURST_TIME: Final = 0.002
#: Bucket bounds, in packets.
MIN_BURST_PACKETS: Final = 2
MAX_BURST_PACKETS: Final = 32
#: A wake-up that comes late (a busy host, an event loop that sleeps at least 1 ms) may
#: send what the pacer would have let go in the meantime, up to this many seconds of it.
#: Without this credit, every late timer loses the time it was late by: at 32 packets per
#: wake-up and a wake-up every 2 ms, a connection could never beat 19 MB/s, whatever its
#: controller said.
MAX_LATE_CREDIT: Final = 0.008


class Pacer:
    """Token bucket: ``next_send_time`` says when the next packet of ``size`` may leave."""

    __slots__ = ("mss", "rate", "burst", "tokens", "last", "wake_at", "fell_behind")

    def __init__(self, max_datagram_size: int) -> None:
        self.mss = max_datagram_size
        self.rate = 0.0  # bytes per second; 0 means unpaced
        self.burst = float(MAX_BURST_PACKETS * max_datagram_size)
        self.tokens = self.burst
        self.last = 0.0
        self.wake_at = -1.0  # when the pacer last said the next packet may leave (-1: none)
        #: set when a wake-up came later than the credit covers: the sender, not the path,
        #: limited what left (the owner marks rate samples app-limited and clears this)
        self.fell_behind = False

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
        rate = self.rate
        if rate <= 0:
            return None
        tokens = self.tokens + (now - self.last) * rate
        cap = self.burst
        wake_at = self.wake_at
        if wake_at >= 0.0 and now > wake_at:
            # woken late: the time we were late by is not lost (see MAX_LATE_CREDIT); the
            # credit lasts until the pacer next makes us wait. Much later than that is not a
            # late timer but a pause (nothing to send), which earns no burst.
            late = now - wake_at
            if late <= 4 * MAX_LATE_CREDIT:
                cap += (late if late < MAX_LATE_CREDIT else MAX_LATE_CREDIT) * rate
            if late > MAX_LATE_CREDIT:
                self.fell_behind = True
        if tokens > cap:
            tokens = cap
        self.tokens = tokens
        self.last = now
        if tokens > self.mss - 1:  # (a byte of slack absorbs float rounding)
            return None
        at = now + (self.mss - tokens) / rate
        self.wake_at = at
        return at

    def on_sent(self, size: int) -> None:
        """Spend tokens for a packet just sent (call ``next_send_time`` first to refill)."""
        if self.rate > 0:
            self.tokens -= size
