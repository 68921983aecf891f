"""Delivery-rate estimation: how fast the path has been delivering our data, per ACK.

This follows the method of the IETF delivery-rate-estimation draft (Cheng, Cardwell, Hassas
Yeganeh, Jacobson), which TCP BBR and QUIC stacks use. A rate measured from ACK arrivals alone
is wrong whenever ACKs are compressed or stretched (a jittery reverse path, a receiver that
acknowledges in bursts, a busy host), so each packet remembers, when it is sent, how much had
been delivered so far and when; the ACK that delivers it then gives a sample

    delivery_rate = (delivered now - delivered when it left) / interval

over an interval that is the longer of the send interval and the ACK interval of that flight:
a burst of ACKs cannot make the path look faster than we were sending, and a burst of sends
cannot make it look faster than ACKs came back.

Samples taken while the application had nothing to send ("app-limited") measure the
application, not the path: they are marked, so a model-based controller takes them only when
they are higher than what it knows.
"""

from __future__ import annotations

from .recovery import SentPacket


class RateSample:
    """One delivery-rate sample, produced by an ACK that newly acknowledged packets."""

    __slots__ = ("delivery_rate", "delivered", "interval", "prior_delivered", "is_app_limited",
                 "rtt", "newly_acked", "opens_flight")

    def __init__(self) -> None:
        self.delivery_rate = 0.0  # bytes per second; 0.0 if the interval was unusable
        self.delivered = 0  # bytes delivered over the interval
        self.interval = 0.0  # seconds
        self.prior_delivered = 0  # connection's delivered count when the newest packet left
        self.is_app_limited = False
        self.rtt = 0.0  # RTT of the most recently sent packet this ACK covered
        self.newly_acked = 0  # bytes this ACK newly acknowledged
        #: the newest packet left in the opening burst of a flight: the interval is the ACK
        #: interval alone (see DeliveryRateEstimator.on_packet_sent)
        self.opens_flight = False


class DeliveryRateEstimator:
    """Stamps packets as they leave and turns ACKs into :class:`RateSample` objects.

    ``delivered`` (bytes acknowledged so far on this path), ``delivered_time`` (when the last
    of them was acknowledged) and ``first_sent_time`` (when the packet that started the
    current flight left) are the draft's ``C.delivered``, ``C.delivered_time`` and
    ``C.first_sent_time``; ``app_limited`` is ``C.app_limited``: until ``delivered`` passes
    it, samples are marked app-limited.
    """

    __slots__ = ("delivered", "delivered_time", "first_sent_time", "app_limited", "latest",
                 "max_rate", "app_limited_samples", "samples", "opening")

    def __init__(self) -> None:
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.app_limited = 0
        self.latest = RateSample()
        #: statistics: highest non-app-limited rate seen, and how many samples were taken
        self.max_rate = 0.0
        self.app_limited_samples = 0
        self.samples = 0
        self.opening = False  # a flight started from nothing in flight, not yet acknowledged

    def reset(self) -> None:
        """A new path: nothing delivered on it yet."""
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.app_limited = 0
        self.latest = RateSample()
        self.max_rate = 0.0
        self.opening = False

    def on_packet_sent(self, pkt: SentPacket, now: float, bytes_in_flight: int) -> None:
        """Stamp ``pkt``; ``bytes_in_flight`` is the amount in flight before it leaves."""
        if bytes_in_flight <= 0:
            # nothing in flight: a new flight starts, and the ACK clock with it. Until its
            # first ACK, the packets of this flight leave in one burst (the pacer's bucket,
            # its credit after a late wake-up) with no earlier send to measure an interval
            # from: their samples are bounded by the ACK interval alone, and a token-bucket
            # shaper (Linux tbf, a provider's rate limit) whose bucket filled while the flow
            # sat idle passes such a burst faster than its rate. They are marked
            # ``opens_flight`` (a controller with a bandwidth model may skip them).
            self.first_sent_time = now
            self.delivered_time = now
            self.opening = True
        pkt.opens_flight = self.opening
        pkt.delivered = self.delivered
        pkt.delivered_time = self.delivered_time
        pkt.first_sent_time = self.first_sent_time
        pkt.is_app_limited = self.app_limited != 0

    def mark_app_limited(self, bytes_in_flight: int) -> None:
        """The sender has nothing more to send although the window allows it: samples until
        what is in flight now is delivered measure the application, not the path."""
        self.app_limited = max(self.delivered + bytes_in_flight, 1)

    def on_ack(self, acked: list[SentPacket], now: float, min_rtt: float) -> RateSample | None:
        """A sample from the in-flight packets one ACK newly acknowledged (None if none).

        ``min_rtt`` guards against a sample over an interval shorter than the path's round
        trip (an ACK burst right after a quiet period), which would overstate the rate.
        """
        newest: SentPacket | None = None
        newly = 0
        delivered = self.delivered
        for pkt in acked:
            if not pkt.in_flight:
                continue
            newly += pkt.size
            delivered += pkt.size
            # the sample comes from the most recently sent packet among those acknowledged
            if newest is None or pkt.delivered > newest.delivered or (
                    pkt.delivered == newest.delivered and pkt.time_sent > newest.time_sent):
                newest = pkt
        if newest is None:
            return None
        self.delivered = delivered
        self.delivered_time = now
        self.opening = False
        if self.app_limited and delivered > self.app_limited:
            self.app_limited = 0
        # the next flight's send interval starts where this packet's left off
        self.first_sent_time = newest.time_sent
        rs = RateSample()
        rs.newly_acked = newly
        rs.prior_delivered = newest.delivered
        rs.is_app_limited = newest.is_app_limited
        rs.rtt = now - newest.time_sent
        rs.opens_flight = newest.opens_flight
        rs.delivered = delivered - newest.delivered
        send_elapsed = newest.time_sent - newest.first_sent_time
        ack_elapsed = now - newest.delivered_time
        interval = send_elapsed if send_elapsed > ack_elapsed else ack_elapsed
        rs.interval = interval
        self.samples += 1
        if rs.is_app_limited:
            self.app_limited_samples += 1
        if interval > 0.0 and interval >= min_rtt:
            rs.delivery_rate = rs.delivered / interval
            if not rs.is_app_limited and rs.delivery_rate > self.max_rate:
                self.max_rate = rs.delivery_rate
        self.latest = rs
        return rs
