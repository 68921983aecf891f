"""Loss recovery: which packets are in flight, which were acknowledged, which are lost.

Loss detection is RACK-TLP (RFC 8985) on top of RFC 9002's packet threshold:

* **RACK** (time): once a packet sent *later* than ``p`` has been acknowledged, ``p`` is lost
  when it has been out for longer than ``rack_rtt + reo_wnd``, where ``rack_rtt`` is the RTT
  of the most recently sent packet acknowledged so far and ``reo_wnd``, the reordering window,
  is ``reo_wnd_mult x min_rtt / 4`` (at most one smoothed RTT). A loss timer fires at that
  moment if no ACK comes first. Time, not a packet count, is what reordering on a jittery link
  is measured in: 5 ms of reordering is 4 packets at 10 Mbit/s and 40 at 100 Mbit/s.
* **Packet threshold** (RFC 9002's kPacketThreshold, TCP's DupThresh): ``p`` is lost at once
  when a packet sent ``packet_threshold`` later was acknowledged; quick on a path that keeps
  order (the common case, including FIFO jitter) and needs no RTT.
* **Adapting to reordering**: when an ACK covers a packet declared lost, the retransmission
  was spurious (counted in ``spurious_losses``): the reordering window grows by min_rtt/4
  (``reo_wnd_mult += 1``, at most once per round trip) and the packet threshold by half. After
  ``_NARROW_AFTER`` losses with none spurious they step back toward the defaults.
* **Tail-loss probe** (TLP): the last packets of a flight have no later packet whose ACK
  could reveal their loss, so ``2 x srtt`` after the last send (plus the peer's ACK delay if
  only one packet is out) one probe goes out: new data if there is some, else the newest
  unacknowledged data again. Its ACK reveals the loss for RACK. If that goes unanswered too,
  the probe timeout (PTO, RFC 9002) with exponential backoff sends two probes.

Lost packets are never resent as such: their frames are handed back to be sent in new
packets.
"""

from __future__ import annotations

from typing import Final

from .ranges import bisect_left, bisect_right
from .rtt import RttEstimator
from .wire import AckFrame, Frame

PACKET_THRESHOLD: Final = 3
#: Loss delay in units of the RTT with the default reordering window (RTT + min_rtt / 4).
TIME_THRESHOLD: Final = 5 / 4
TIMER_GRANULARITY: Final = 0.001
#: Ceilings of the adapted thresholds: loss detection never waits longer than this.
MAX_PACKET_THRESHOLD: Final = 256
#: The tail-loss probe waits this many smoothed RTTs after the last send (at least TLP_MIN).
TLP_RTTS: Final = 2.0
TLP_MIN: Final = 0.01
#: After this many losses with none found spurious, the thresholds step back toward RFC 9002's.
_NARROW_AFTER: Final = 64
#: Lost packet numbers kept to detect spurious retransmissions, at most (a memory limit: the
#: time horizon below is what normally bounds them).
_REMEMBER_LOST: Final = 2048
#: A lost packet is remembered for this many RTOs after it was sent (RFC 9000 section 13.3:
#: "a period of time that adequately allows for reordering, such as a PTO"); an ACK later
#: than that no longer tells of reordering. Without this horizon the list filled up to
#: ``_REMEMBER_LOST`` under steady random loss, about 200 KB per connection after minutes.
LOST_HORIZON_RTOS: Final = 3


class SentPacket:
    """What we must know about a packet until it is acknowledged or declared lost."""

    __slots__ = ("number", "time_sent", "size", "ack_eliciting", "in_flight", "stream",
                 "control", "largest_acked", "delivered", "delivered_time",
                 "first_sent_time", "is_app_limited", "opens_flight")

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
        # delivery-rate stamps (see delivery_rate.py): the path's delivered count and times when
        # this packet left, and whether the sender was application-limited then
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.is_app_limited = False
        #: sent in the opening burst of a flight (nothing was in flight when it began, and no
        #: ACK has come since): its rate sample has no send interval (see delivery_rate.py)
        self.opens_flight = False


class Recovery:
    """Tracks sent packets and turns ACKs and timers into acked/lost packet lists."""

    def __init__(self, rtt: RttEstimator, max_ack_delay: float, min_rto: float,
                 max_rto: float) -> None:
        self.rtt = rtt
        self.max_ack_delay = max_ack_delay
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.sent: dict[int, SentPacket] = {}
        #: the largest packet number ever put in ``sent`` (none in it is larger; it stays when
        #: they leave)
        self._newest_sent = -1
        self.bytes_in_flight = 0
        self.largest_acked = -1
        self.pto_count = 0
        self.loss_time: float | None = None
        self.last_ack_eliciting_time: float | None = None
        self._lost_pns: list[int] = []  # sorted; recently declared lost
        self._lost_times: dict[int, float] = {}  # their send times
        self.packet_threshold = PACKET_THRESHOLD
        self.reo_wnd_mult = 1
        self._last_widened = float("-inf")
        self._losses_since_spurious = 0
        #: RACK state: send time and RTT of the most recently sent packet acknowledged so far
        self.rack_time_sent = float("-inf")
        self.rack_rtt = 0.0
        self.tlp_armed = True  # a tail-loss probe may fire before the next PTO
        #: probe packets the last timeout asks for (1 for a TLP, 2 for a PTO)
        self.probe_packets = 0
        self.last_probe_was_tlp = False
        # counters
        self.packets_lost = 0
        self.packets_requeued = 0  # handed back in flight on a path change (not lost)
        self.spurious_losses = 0
        self.pto_fired = 0
        self.tlp_fired = 0

    @property
    def reo_wnd(self) -> float:
        """RACK's reordering window: how much later than expected a packet may still come
        (``reo_wnd_mult`` quarters of the minimum RTT, at most the smoothed RTT)."""
        rtt = self.rtt
        wnd = self.reo_wnd_mult * rtt.base / 4
        return wnd if wnd < rtt.smoothed else rtt.smoothed

    @property
    def time_threshold(self) -> float:
        """The loss delay in units of the RTT (RTT + reo_wnd_mult x min_rtt / 4)."""
        return 1 + self.reo_wnd_mult / 4

    # -- sending ------------------------------------------------------------------------------
    def on_packet_sent(self, packet: SentPacket) -> None:
        # packets that elicit no ACK (pure ACKs, path responses) may never be acknowledged:
        # tracking them would only grow memory, and losing them costs nothing
        if packet.in_flight:
            number = packet.number
            self.sent[number] = packet
            if number > self._newest_sent:
                self._newest_sent = number
            self.bytes_in_flight += packet.size
            self.last_ack_eliciting_time = packet.time_sent

    # -- acknowledgements ---------------------------------------------------------------------
    def on_ack(self, ack: AckFrame, now: float) -> tuple[list[SentPacket], list[SentPacket], bool]:
        """Process an ACK frame: return ``(newly_acked, lost, rtt_updated)``."""
        sent = self.sent
        acked: list[SentPacket]
        if not sent:
            acked = []
        else:
            # the first key: compiled, a dict loop is native and ``next(iter())`` is not
            lowest = 0
            for lowest in sent:  # noqa: B007
                break
            if ack.newest_first <= lowest and ack.largest >= self._newest_sent:
                # the newest range covers every packet in flight (each ACK of a
                # request/response exchange, the last one of a transfer): take them all, in
                # number order, without a lookup and a deletion by (boxed) number each
                acked = list(sent.values())
                self.sent = {}
            else:
                acked = []
                for lo, hi in ack.ranges:
                    if hi < lowest:
                        continue
                    if hi - max(lo, lowest) > len(sent):
                        # a wide range: walk our packets instead of the numbers
                        for pn in [p for p in sent if lo <= p <= hi]:
                            acked.append(sent.pop(pn))
                    else:
                        for pn in range(max(lo, lowest), hi + 1):
                            # get and del: native dict operations compiled (``pop`` with a
                            # default is a method call)
                            pkt = sent.get(pn)
                            if pkt is not None:
                                del sent[pn]
                                acked.append(pkt)
                if not sent:
                    # an emptied dict keeps its grown table: ~1 KiB per idle peer
                    self.sent = {}
        lost_pns = self._lost_pns
        if lost_pns:
            for lo, hi in ack.ranges:
                if hi < lost_pns[0] or lo > lost_pns[-1]:
                    continue
                i = bisect_left(lost_pns, lo)
                j = bisect_right(lost_pns, hi)
                if i < j:
                    self.spurious_losses += j - i
                    # how far it was overtaken (at most: later ones arrived since), and how
                    # much later than RACK expected it came
                    distance = max(self.largest_acked, ack.largest) - lost_pns[i]
                    times = self._lost_times
                    late = 0.0
                    for pn in lost_pns[i:j]:
                        sent_at = times.pop(pn, now)
                        if now - sent_at - self.rack_rtt > late:
                            late = now - sent_at - self.rack_rtt
                    del lost_pns[i:j]
                    self._widen_thresholds(now, distance, late)
                    if not lost_pns:
                        break
        rtt_updated = False
        if ack.largest > self.largest_acked:
            self.largest_acked = ack.largest
        if not acked:
            return acked, [], False
        if len(acked) > 1:
            acked.sort(key=_number)
        newest = acked[-1]
        if newest.number == ack.largest and newest.ack_eliciting:
            ack_delay = min(ack.ack_delay_us / 1e6, self.max_ack_delay)
            self.rtt.update(max(now - newest.time_sent, 1e-6), ack_delay)
            rtt_updated = True
        if newest.time_sent >= self.rack_time_sent:
            # packets leave in number order, so the newest number is the latest sent
            self.rack_time_sent = newest.time_sent
            self.rack_rtt = now - newest.time_sent
        for pkt in acked:
            if pkt.in_flight:
                self.bytes_in_flight -= pkt.size
        lost = self._detect_lost(now)
        self.pto_count = 0
        self.tlp_armed = True
        return acked, lost, rtt_updated

    def _detect_lost(self, now: float) -> list[SentPacket]:
        """RACK and the packet threshold over the packets sent before the largest acked."""
        self.loss_time = None
        if not self.sent:
            return []  # (nothing in flight: every ACK of a request/response exchange)
        loss_delay = self.rack_rtt + self.reo_wnd
        if loss_delay < TIMER_GRANULARITY:
            loss_delay = TIMER_GRANULARITY
        threshold = self.packet_threshold
        lost_send_time = now - loss_delay
        largest = self.largest_acked
        rack_time_sent = self.rack_time_sent
        lost: list[SentPacket] = []
        for pn, pkt in self.sent.items():
            if pn > largest or pkt.time_sent > rack_time_sent:
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
        self.reo_wnd_mult = 1
        self._losses_since_spurious = 0
        self.rack_time_sent = float("-inf")
        self.rack_rtt = 0.0
        self.tlp_armed = True

    def _widen_thresholds(self, now: float, distance: int, late: float) -> None:
        """A loss was spurious: tolerate more reordering. The packet threshold grows to the
        distance the packet was overtaken by (as Linux TCP's ``tp->reordering``), and at
        least by half; RACK's window grows by min_rtt/4 at most once per round trip (RFC 8985
        section 6.2), or at once to how late the packet came (``late``: a jittery link shows
        its reordering within the first round trips, and a short transfer should not pay a
        spurious retransmission per round trip until the window has caught up). It never
        exceeds the smoothed RTT (see ``reo_wnd``)."""
        self._losses_since_spurious = 0
        grown = max(self.packet_threshold + max(self.packet_threshold // 2, 1), distance + 1)
        if grown > self.packet_threshold:
            self.packet_threshold = min(grown, MAX_PACKET_THRESHOLD)
        if now - self._last_widened < self.rtt.smoothed:
            return  # the same reordering event: one window step per round trip
        self._last_widened = now
        quarter = self.rtt.base / 4
        if quarter <= 0.0:
            return
        wanted = max(self.reo_wnd_mult + 1, int(late / quarter) + 1)
        ceiling = int(self.rtt.smoothed / quarter) + 1  # beyond it, reo_wnd is the SRTT
        self.reo_wnd_mult = max(self.reo_wnd_mult, min(wanted, ceiling))

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
            if self.reo_wnd_mult > 1:
                self.reo_wnd_mult -= 1
        lost_pns = self._lost_pns
        times = self._lost_times
        if lost_pns:
            # forget those sent more than LOST_HORIZON_RTOS before this one (packets leave in
            # number order, so they are the first ones)
            horizon = pkt.time_sent - LOST_HORIZON_RTOS * self.rto()
            if times[lost_pns[0]] < horizon:
                cut = 1
                n = len(lost_pns)
                while cut < n and times[lost_pns[cut]] < horizon:
                    cut += 1
                for pn in lost_pns[:cut]:
                    del times[pn]
                del lost_pns[:cut]
        if not lost_pns or pkt.number > lost_pns[-1]:
            lost_pns.append(pkt.number)
        else:
            lost_pns.insert(bisect_left(lost_pns, pkt.number), pkt.number)
        times[pkt.number] = pkt.time_sent
        if len(lost_pns) > _REMEMBER_LOST:
            cut = len(lost_pns) - _REMEMBER_LOST // 2
            for pn in lost_pns[:cut]:
                times.pop(pn, None)
            del lost_pns[:cut]

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

    def tlp_interval(self) -> float:
        """RFC 8985 section 7.2: 2 x SRTT, plus the peer's ACK delay when a single packet is
        out (its ACK may be delayed), never later than the PTO."""
        rtt = self.rtt
        pto = self.pto_interval()
        if not rtt.has_sample:
            return pto
        interval = TLP_RTTS * rtt.smoothed
        if len(self.sent) == 1:
            interval += self.max_ack_delay
        if interval < TLP_MIN:
            interval = TLP_MIN
        return interval if interval < pto else pto

    def timer(self) -> float | None:
        if self.loss_time is not None:
            return self.loss_time
        if self.bytes_in_flight <= 0 or self.last_ack_eliciting_time is None:
            return None
        if self.tlp_armed and self.pto_count == 0:
            return self.last_ack_eliciting_time + self.tlp_interval()
        return self.last_ack_eliciting_time + self.pto_interval()

    def on_timeout(self, now: float) -> tuple[list[SentPacket], bool]:
        """Handle the loss timer: ``(lost, probe_needed)``; ``probe_packets`` says how many
        probes (1 for a tail-loss probe, 2 for a PTO) and ``last_probe_was_tlp`` which."""
        if self.loss_time is not None and now >= self.loss_time:
            return self._detect_lost(now), False
        deadline = self.timer()
        if deadline is None or now < deadline:
            return [], False
        if self.tlp_armed and self.pto_count == 0:
            # one tail-loss probe per flight; if it goes unanswered too, the PTO follows
            self.tlp_armed = False
            self.tlp_fired += 1
            self.probe_packets = 1
            self.last_probe_was_tlp = True
            return [], True
        self.pto_count += 1
        self.pto_fired += 1
        self.probe_packets = 2
        self.last_probe_was_tlp = False
        return [], True

    def oldest_unacked(self) -> SentPacket | None:
        for pkt in self.sent.values():
            if pkt.ack_eliciting:
                return pkt
        return None

    def take_handshake_packets(self) -> list[SentPacket]:
        """The handshake completed: every SYN (or SYN-ACK) copy still tracked is done.

        They carry no packet number on the wire, so no ACK names them; neither acknowledged
        nor lost, they are simply no longer in flight (and the handshake proved the peer
        alive, so the probe backoff restarts)."""
        done = list(self.sent.values())
        self.sent.clear()
        self.bytes_in_flight = 0
        self.loss_time = None
        self.pto_count = 0
        self.tlp_armed = True
        return done

    def newest_unacked(self) -> SentPacket | None:
        """The last packet sent still unacknowledged (what a tail-loss probe repeats)."""
        for pkt in reversed(self.sent.values()):
            if pkt.ack_eliciting and pkt.stream:
                return pkt
        return None

    def take_all_in_flight(self) -> list[SentPacket]:
        """Hand back everything in flight for retransmission (its path is gone, or the
        handshake restarts with another version).

        These packets were not judged lost: they count in ``packets_requeued``, not in
        ``packets_lost``, and they do not move the loss-detection thresholds (a migration
        must not look like a burst of loss). A late ACK for one of them is ignored (it is
        neither in flight nor remembered as lost), so it cannot count as a spurious loss.
        """
        taken = [p for p in self.sent.values() if p.ack_eliciting]
        self.packets_requeued += len(taken)
        self.sent = {}
        self.bytes_in_flight = 0
        self.loss_time = None
        return taken


def _number(p: SentPacket) -> int:
    return p.number
