"""Loss recovery: which packets are in flight, which were acknowledged, which are lost.

Follows RFC 9002: a packet is lost when a packet sent ``PACKET_THRESHOLD`` later was
acknowledged, or when it is older than ``TIME_THRESHOLD`` x RTT and a later one was
acknowledged. Both thresholds grow when a loss turns out spurious (the path reorders more
than they allow, as jittery radio links do), the way TCP RACK widens its reordering window.
A probe timeout (PTO) with exponential backoff recovers a lost tail. Lost packets are never
resent as such: their frames are handed back to be sent in new packets.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from .rtt import RttEstimator
from .wire import AckFrame, Frame

PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
TIMER_GRANULARITY = 0.001
#: Ceilings of the adapted thresholds: loss detection never waits longer than this.
MAX_PACKET_THRESHOLD = 64
MAX_TIME_THRESHOLD = 2.0
#: After this many losses with none found spurious, the thresholds step back toward RFC 9002's.
_NARROW_AFTER = 64
_REMEMBER_LOST = 2048  # lost packet numbers kept to detect spurious retransmissions


class SentPacket:
    """What we must know about a packet until it is acknowledged or declared lost."""

    __slots__ = ("number", "time_sent", "size", "ack_eliciting", "in_flight", "stream",
                 "control", "largest_acked")

    def __init__(self, number: int, time_sent: float, size: int, ack_eliciting: bool,
                 stream: list[tuple[int, int, bool]], control: list[Frame]) -> None:
        self.number = number
        self.time_sent = time_sent
        self.size = size
        self.ack_eliciting = ack_eliciting
        self.in_flight = ack_eliciting
        self.stream = stream  # (offset, length, fin) ranges carried
        self.control = control  # frames to send again if this packet is lost
        #: largest packet number of the peer's that the ACK frame in this packet reported
        #: (-1: none); once this packet is acknowledged the peer knows it, so older ranges
        #: need not be reported again
        self.largest_acked = -1


class Recovery:
    """Tracks sent packets and turns ACKs and timers into acked/lost packet lists."""

    def __init__(self, rtt: RttEstimator, max_ack_delay: float, min_rto: float,
                 max_rto: float) -> None:
        self.rtt = rtt
        self.max_ack_delay = max_ack_delay
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.sent: dict[int, SentPacket] = {}
        self.bytes_in_flight = 0
        self.largest_acked = -1
        self.pto_count = 0
        self.loss_time: float | None = None
        self.last_ack_eliciting_time: float | None = None
        self._lost_pns: list[int] = []  # sorted; recently declared lost
        self.packet_threshold = PACKET_THRESHOLD
        self.time_threshold = TIME_THRESHOLD
        self._losses_since_spurious = 0
        # counters
        self.packets_lost = 0
        self.spurious_losses = 0
        self.pto_fired = 0

    # -- sending ------------------------------------------------------------------------------
    def on_packet_sent(self, packet: SentPacket) -> None:
        # packets that elicit no ACK (pure ACKs, path responses) may never be acknowledged:
        # tracking them would only grow memory, and losing them costs nothing
        if packet.in_flight:
            self.sent[packet.number] = packet
            self.bytes_in_flight += packet.size
            self.last_ack_eliciting_time = packet.time_sent

    # -- acknowledgements ---------------------------------------------------------------------
    def on_ack(self, ack: AckFrame, now: float) -> tuple[list[SentPacket], list[SentPacket], bool]:
        """Process an ACK frame: return ``(newly_acked, lost, rtt_updated)``."""
        sent = self.sent
        acked: list[SentPacket] = []
        if sent:
            lowest = next(iter(sent))
            for lo, hi in ack.ranges:
                if hi < lowest:
                    continue
                if hi - max(lo, lowest) > len(sent):
                    # a wide range: walk our packets instead of the numbers
                    for pn in [p for p in sent if lo <= p <= hi]:
                        acked.append(sent.pop(pn))
                else:
                    for pn in range(max(lo, lowest), hi + 1):
                        pkt = sent.pop(pn, None)
                        if pkt is not None:
                            acked.append(pkt)
            if not sent:
                self.sent = {}  # an emptied dict keeps its grown table: ~1 KiB per idle peer
        lost_pns = self._lost_pns
        if lost_pns:
            for lo, hi in ack.ranges:
                if hi < lost_pns[0] or lo > lost_pns[-1]:
                    continue
                i = bisect_left(lost_pns, lo)
                j = bisect_right(lost_pns, hi)
                if i < j:
                    self.spurious_losses += j - i
                    del lost_pns[i:j]
                    self._widen_thresholds()
                    if not lost_pns:
                        break
        rtt_updated = False
        if ack.largest > self.largest_acked:
            self.largest_acked = ack.largest
        if not acked:
            return acked, [], False
        acked.sort(key=_number)
        newest = acked[-1]
        if newest.number == ack.largest and newest.ack_eliciting:
            ack_delay = min(ack.ack_delay_us / 1e6, self.max_ack_delay)
            self.rtt.update(max(now - newest.time_sent, 1e-6), ack_delay)
            rtt_updated = True
        for pkt in acked:
            if pkt.in_flight:
                self.bytes_in_flight -= pkt.size
        lost = self._detect_lost(now)
        self.pto_count = 0
        return acked, lost, rtt_updated

    def _detect_lost(self, now: float) -> list[SentPacket]:
        self.loss_time = None
        rtt = self.rtt
        loss_delay = max(self.time_threshold * max(rtt.latest, rtt.smoothed), TIMER_GRANULARITY)
        threshold = self.packet_threshold
        lost_send_time = now - loss_delay
        largest = self.largest_acked
        lost: list[SentPacket] = []
        for pn, pkt in self.sent.items():
            if pn > largest:
                break
            if pkt.time_sent <= lost_send_time or largest - pn >= threshold:
                lost.append(pkt)
            else:
                t = pkt.time_sent + loss_delay
                if self.loss_time is None or t < self.loss_time:
                    self.loss_time = t
        for pkt in lost:
            self._forget_lost(pkt)
        return lost

    def on_new_path(self) -> None:
        """A new network path: its reordering is unknown, so start from RFC 9002's thresholds."""
        self.packet_threshold = PACKET_THRESHOLD
        self.time_threshold = TIME_THRESHOLD
        self._losses_since_spurious = 0

    def _widen_thresholds(self) -> None:
        """A loss was spurious: tolerate more reordering (by half again, and 1/8 RTT)."""
        self.packet_threshold = min(self.packet_threshold + max(self.packet_threshold // 2, 1),
                                    MAX_PACKET_THRESHOLD)
        self.time_threshold = min(self.time_threshold + 0.125, MAX_TIME_THRESHOLD)
        self._losses_since_spurious = 0

    def _forget_lost(self, pkt: SentPacket) -> None:
        del self.sent[pkt.number]
        if pkt.in_flight:
            self.bytes_in_flight -= pkt.size
        self.packets_lost += 1
        self._losses_since_spurious += 1
        if self._losses_since_spurious >= _NARROW_AFTER:
            # no reordering seen for a while: detect real losses sooner again
            self._losses_since_spurious = 0
            self.packet_threshold = max(self.packet_threshold * 2 // 3, PACKET_THRESHOLD)
            self.time_threshold = max(self.time_threshold - 0.125, TIME_THRESHOLD)
        lost_pns = self._lost_pns
        if not lost_pns or pkt.number > lost_pns[-1]:
            lost_pns.append(pkt.number)
        else:
            lost_pns.insert(bisect_left(lost_pns, pkt.number), pkt.number)
        if len(lost_pns) > _REMEMBER_LOST:
            del lost_pns[:len(lost_pns) - _REMEMBER_LOST // 2]

    # -- timers -------------------------------------------------------------------------------
    def rto(self) -> float:
        """The retransmission timeout, without backoff: smoothed RTT + 4 x variance + the
        peer's ACK delay, within ``[min_rto, max_rto]``. Path challenges retry at this pace."""
        rtt = self.rtt
        base = rtt.smoothed + max(4 * rtt.variance, TIMER_GRANULARITY) + self.max_ack_delay
        return min(max(base, self.min_rto), self.max_rto)

    def pto_interval(self) -> float:
        """The probe timeout: the RTO doubled per unanswered probe (capped)."""
        return min(self.rto() * (1 << min(self.pto_count, 16)), self.max_rto * 4)

    def timer(self) -> float | None:
        if self.loss_time is not None:
            return self.loss_time
        if self.bytes_in_flight <= 0 or self.last_ack_eliciting_time is None:
            return None
        return self.last_ack_eliciting_time + self.pto_interval()

    def on_timeout(self, now: float) -> tuple[list[SentPacket], bool]:
        """Handle the loss timer: ``(lost, probe_needed)``."""
        if self.loss_time is not None and now >= self.loss_time:
            return self._detect_lost(now), False
        deadline = self.timer()
        if deadline is None or now < deadline:
            return [], False
        self.pto_count += 1
        self.pto_fired += 1
        return [], True

    def oldest_unacked(self) -> SentPacket | None:
        for pkt in self.sent.values():
            if pkt.ack_eliciting:
                return pkt
        return None

    def take_all_in_flight(self) -> list[SentPacket]:
        """Declare everything in flight lost (e.g. its path is gone); for retransmission.

        These were not judged lost by the thresholds, so a late ACK for one of them is not a
        spurious loss and must not widen the reordering thresholds: they are not remembered.
        """
        lost = [p for p in self.sent.values() if p.ack_eliciting]
        for pkt in lost:
            self._forget_lost(pkt)
        if lost:
            gone = {p.number for p in lost}
            self._lost_pns = [pn for pn in self._lost_pns if pn not in gone]
        self.sent.clear()
        self.bytes_in_flight = 0
        self.loss_time = None
        return lost


def _number(p: SentPacket) -> int:
    return p.number
