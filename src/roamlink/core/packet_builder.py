"""Building packets: the one packet-number allocator, and the SYN, SYN-ACK, path-probe,
data and CLOSE packets.

A data packet is filled in priority order: an owed ACK, MAX_DATA, queued control frames,
then stream data (retransmissions before new bytes, within the peer's credit). Whatever a
packet carries is recorded with it (:class:`~.recovery.SentPacket`), so that its loss
requeues exactly that. The congestion window and the pacer decide whether in-flight packets
may leave now; an ACK-only packet may always leave.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ..config import Config
from ..crypto.packet_protection import TAG_LENGTH, PacketProtection
from . import wire
from .ack_state import AckState
from .buffers import SendBuffer
from .congestion import CongestionController
from .delivery_rate import DeliveryRateEstimator
from .events import Address
from .flow_control import FlowControl
from .pacing import Pacer
from .recovery import Recovery, SentPacket
from .rtt import RttEstimator
from .stats import Counters

#: A receiver that only acknowledges adds a PING to every this many ACK-only packets.
ACK_ONLY_PING_EVERY: Final = 16

StreamRanges = list[tuple[int, int, bool]]  # (offset, length, fin) carried by a packet


class _HandshakeMark(wire.PingFrame):
    """Marks a sent packet as carrying SYN/SYN-ACK, so its loss re-arms the handshake."""


HANDSHAKE_MARK: Final = _HandshakeMark()


class PacketBuilder:
    """Turns what waits to be sent into packets, and records each one as sent."""

    __slots__ = ("mtu", "send_buf", "recovery", "cc", "rtt", "pacer", "rate_estimator", "acks",
                 "flow", "counters", "control", "next_pn", "probe_pending", "pace_at", "last_sent",
                 "_ack_in_packet", "_ack_only_sent", "protection", "tag_length", "quick_idle",
                 "_header_dcid", "_header_phase", "_header_prefix")

    def __init__(self, config: Config, *, send_buf: SendBuffer, recovery: Recovery,
                 cc: CongestionController, rtt: RttEstimator, pacer: Pacer | None,
                 rate_estimator: DeliveryRateEstimator, acks: AckState, flow: FlowControl,
                 counters: Counters, now: float) -> None:
        self.mtu = config.max_datagram_size
        self.send_buf = send_buf
        self.recovery = recovery
        self.cc = cc
        self.rtt = rtt
        self.pacer = pacer
        self.rate_estimator = rate_estimator
        self.acks = acks
        self.flow = flow
        self.counters = counters
        #: control frames waiting to be (re)sent
        self.control: deque[wire.Frame] = deque()
        self.next_pn = 0  # the next packet number (never reused, never wraps)
        self.probe_pending = 0  # ack-eliciting probes owed (probe timeout)
        self.pace_at: float | None = None  # when the pacer lets the next packet go
        self.last_sent = now
        self._ack_in_packet = -1  # largest pn reported by the ACK in the packet being built
        self._ack_only_sent = 0  # ACK-only packets sent since the last ack-eliciting one
        #: the traffic keys once the handshake made them (None: ``insecure_plaintext``)
        self.protection: PacketProtection | None = None
        self.tag_length = 0  # bytes sealing adds to a packet
        #: take :meth:`_idle_pass` when nothing can be sent (tests turn it off to check that
        #: the full pass leaves the same state and sends the same packets)
        self.quick_idle = True
        #: the short header's type and CID (``wire.short_header_prefix``) for this CID and
        #: key phase, made again when either changes
        self._header_dcid = b""
        self._header_phase = -1
        self._header_prefix = b""

    def set_protection(self, protection: PacketProtection) -> None:
        self.protection = protection
        self.tag_length = TAG_LENGTH

    def seal(self, dcid: bytes, pn: int, parts: list[bytes]) -> bytes:
        """A whole short-header packet: the header in clear (the associated data) and the
        frames in ``parts`` sealed under the current key (or in clear with
        ``insecure_plaintext``)."""
        protection = self.protection
        if protection is None:
            return wire.encode_short_packet(dcid, pn, parts)
        phase = protection.send_phase
        if dcid is not self._header_dcid or phase != self._header_phase:
            self._header_prefix = wire.short_header_prefix(dcid, phase)
            self._header_dcid = dcid
            self._header_phase = phase
        return protection.seal(self._header_prefix + wire.encode_packet_number(pn), pn,
                               b"".join(parts))

    # ------------------------------------------------------------------ packet numbers
    def allocate_pn(self) -> int:
        """The packet-number allocator: every packet of this connection takes one here."""
        pn = self.next_pn
        self.next_pn = pn + 1
        return pn

    # ------------------------------------------------------------------ data packets
    def wants_to_send(self) -> bool:
        """Stream data, control frames or a credit update wait to go."""
        return bool(self.send_buf.has_data_to_send() or self.control or self.flow.send_max_data)

    def waiting_for_pacer(self) -> bool:
        """The pacer holds the next packet back (its deadline is ``pace_at``)."""
        return self.pace_at is not None

    def _pacer_allows(self, now: float) -> bool:
        """Whether the pacer lets an in-flight packet go now; if not, arm its timer."""
        pacer = self.pacer
        if pacer is None:
            return True
        at = pacer.next_send_time(now)
        if at is None:
            return True
        if self.wants_to_send():
            self.pace_at = at
        return False

    def build_data_packets(self, now: float, dcid: bytes, addr: Address,
                           out: list[tuple[bytes, Address]]) -> None:
        """Append to ``out`` every data packet that may leave now."""
        send_buf = self.send_buf
        acks = self.acks
        flow = self.flow
        control_queue = self.control
        if (self.quick_idle and not send_buf.has_data_to_send() and self.probe_pending <= 0
                and not acks.pending and (acks.deadline is None or now < acks.deadline)
                and not flow.send_max_data and not control_queue):
            # nothing to send, nor an ACK due: the pass after each received message
            self._idle_pass(now)
            return
        mtu = self.mtu
        header_size = wire.SHORT_HEADER_OVERHEAD + len(dcid) + self.tag_length
        recovery = self.recovery
        self.pace_at = None
        pacer = self.pacer
        if pacer is not None:
            pacer.set_rate(self.cc.pacing_rate(self.rtt))
        while True:
            probing = self.probe_pending > 0
            may_fly = probing or (recovery.bytes_in_flight + mtu <= self.cc.cwnd
                                  and self._pacer_allows(now))
            # an owed (delayed) ACK also rides on any packet that carries data: it costs a few
            # bytes, and spares the ACK-only packet (and the peer's wake-up) due later
            # (only for stream data received: data answering data, as in request/response;
            # control-only packets keep the delayed-ACK pace the ack-of-ack history relies on)
            ack_due = acks.pending or (acks.deadline is not None and (
                now >= acks.deadline
                or (acks.data_unacked and may_fly and send_buf.has_data_to_send())))
            if not ack_due and not (may_fly and (probing or flow.send_max_data or control_queue
                                                  or send_buf.has_data_to_send())):
                # nothing below would go into a packet: the pass that follows every received
                # message, and the last round of every pass, stop here without building one
                break
            parts: list[bytes] = []
            size = header_size
            control: list[wire.Frame] = []
            stream: StreamRanges = []
            eliciting = retransmission = False
            if ack_due:
                ack = self._ack(now)
                parts.append(ack)
                size += len(ack)
            if may_fly:
                if flow.send_max_data:
                    flow.send_max_data = False
                    frame: wire.Frame = flow.advertise()
                    encoded = wire.encode_frame(frame)
                    parts.append(encoded)
                    size += len(encoded)
                    control.append(frame)
                while control_queue and size + 64 < mtu:
                    frame = control_queue.popleft()
                    encoded = wire.encode_frame(frame)
                    parts.append(encoded)
                    size += len(encoded)
                    control.append(frame)
                # stream data: retransmissions first, then new bytes within the peer's credit
                while size + 24 < mtu and send_buf.has_data_to_send():
                    room = mtu - size - 1 - 8 - 4
                    if send_buf.has_retransmission():
                        retransmission = True
                    data = send_buf.take(room, flow.peer_max_data)
                    if data is None:
                        blocked = flow.blocked_frame(bool(send_buf.unsent))
                        if blocked is not None:
                            parts.append(wire.encode_frame(blocked))
                            control.append(blocked)
                        break
                    offset = send_buf.taken_offset
                    fin = send_buf.taken_fin
                    length = len(data)
                    header = wire.encode_push_header(offset, length, fin)
                    parts.append(header)
                    parts.append(data)
                    size += len(header) + length
                    stream.append((offset, length, fin))
                eliciting = bool(stream or control)
                if probing and not eliciting:
                    parts.append(wire.ENCODED_PING)  # a probe must elicit an ACK
                    eliciting = True
                elif not eliciting and parts and self._ack_only_sent >= ACK_ONLY_PING_EVERY:
                    # a pure receiver's ACKs are never acknowledged, so it would repeat old
                    # ranges forever: now and then make one elicit an ACK (ack of ack)
                    parts.append(wire.ENCODED_PING)
                    eliciting = True
            if not parts:
                break
            if eliciting:
                self._ack_only_sent = 0
            else:
                self._ack_only_sent += 1
            if retransmission:
                self.counters.retransmissions += 1
            pn = self.allocate_pn()
            datagram = self.seal(dcid, pn, parts)
            self._on_sent(pn, datagram, now, eliciting, stream, control)
            out.append((datagram, addr))
            if pacer is not None and eliciting:
                pacer.on_sent(len(datagram))
            if probing and eliciting:
                self.probe_pending -= 1
            if not eliciting or not may_fly:
                break
        self._end_pass(send_buf.has_data_to_send())

    def _idle_pass(self, now: float) -> None:
        """What :meth:`build_data_packets` does when nothing can be sent, without building:
        its first round only asks the pacer (when the window has room), which refills the
        bucket and notices a late wake-up, then stops; its end marks the rate sample
        app-limited (or host-limited). Both are kept: they are BBR's model of the path.
        (``tests/test_hot_path.py`` runs connections with and without this shortcut and
        compares every datagram and the congestion state.)"""
        self.pace_at = None
        pacer = self.pacer
        if pacer is not None:
            pacer.set_rate(self.cc.pacing_rate(self.rtt))
            if self.recovery.bytes_in_flight + self.mtu <= self.cc.cwnd:
                self._pacer_allows(now)
        self._end_pass(False)

    def _end_pass(self, has_data: bool) -> None:
        """The end of every send pass: the pacer's wake-up, and whether the application
        or the host (not the path) limited this flight."""
        pacer = self.pacer
        recovery = self.recovery
        # (read through a method: mypy narrows ``self.pace_at`` to None after the
        # assignment in the pass, since calls do not reset the narrowing, and mypyc-compiled
        # code then raised TypeError whenever the pacer had set it to a time meanwhile)
        if pacer is not None and not self.waiting_for_pacer():
            pacer.wake_at = -1.0  # not waiting for the pacer (the window or the data stops us)
        if not has_data and recovery.bytes_in_flight + self.mtu <= self.cc.cwnd:
            # the window has room but the application gave us nothing: rate samples until
            # this flight is delivered measure the application, not the path
            self.rate_estimator.mark_app_limited(recovery.bytes_in_flight)
        elif pacer is not None and pacer.fell_behind:
            # a wake-up came so late that what the pacer allowed could not all leave: the
            # host (a busy event loop), not the path, limited this flight, so its samples
            # must not pull the bandwidth model down. (Not during start-up, which ends when
            # the delivery rate stops growing, whatever limits it.)
            pacer.fell_behind = False
            if self.cc.state != "startup":
                self.rate_estimator.mark_app_limited(recovery.bytes_in_flight)

    def _ack(self, now: float) -> bytes:
        """The ACK frame owed, remembering which packet of the peer's it reports."""
        self._ack_in_packet = self.acks.largest
        return self.acks.encode(now)

    def _on_sent(self, pn: int, datagram: bytes, now: float, eliciting: bool,
                 stream: StreamRanges, control: list[wire.Frame]) -> None:
        size = len(datagram)
        counters = self.counters
        counters.packets_sent += 1
        counters.bytes_sent += size
        self.last_sent = now
        pkt = SentPacket(pn, now, size, eliciting, stream, control)
        pkt.largest_acked = self._ack_in_packet
        self._ack_in_packet = -1
        recovery = self.recovery
        if (eliciting and recovery.bytes_in_flight == 0
                and recovery.last_ack_eliciting_time is not None
                and now - recovery.last_ack_eliciting_time > recovery.pto_interval()):
            self.cc.on_idle()  # the window is stale after an idle period: slow start again
        if eliciting:
            self.rate_estimator.on_packet_sent(pkt, now, recovery.bytes_in_flight)
        recovery.on_packet_sent(pkt)
        if eliciting:
            self.cc.on_packet_sent(size, now, recovery.bytes_in_flight)

    # ------------------------------------------------------------------ other packets
    def build_close(self, frame: wire.CloseFrame, now: float, dcid: bytes) -> bytes:
        return self._build_unacked([wire.encode_frame(frame)], now, dcid)

    def build_ack(self, now: float, dcid: bytes) -> bytes:
        """An ACK-only packet (while draining, nothing else may go)."""
        return self._build_unacked([self._ack(now)], now, dcid)

    def _build_unacked(self, parts: list[bytes], now: float, dcid: bytes,
                       pad_to: int = 0) -> bytes:
        """A packet that is not in flight (nothing in it is retransmitted), padded with
        PADDING to ``pad_to`` bytes when that is more than it needs."""
        if pad_to:
            used = (wire.SHORT_HEADER_OVERHEAD + len(dcid) + self.tag_length
                    + sum(map(len, parts)))
            parts.append(bytes(max(pad_to - used, 0)))
        pn = self.allocate_pn()
        datagram = self.seal(dcid, pn, parts)
        self._on_sent(pn, datagram, now, False, [], [])
        return datagram

    def build_probe(self, frame: wire.Frame, now: float, dcid: bytes, size: int) -> bytes:
        """A path probe padded to ``size`` (the full datagram size unless the
        anti-amplification budget forbids): a path that cannot carry it is not validated."""
        # not in flight: the path manager retries challenges itself
        return self._build_unacked([wire.encode_frame(frame)], now, dcid, size)

    def build_padded_ping(self, now: float, dcid: bytes, size: int) -> bytes:
        """A receiver probe (``timers._gap_probe``): the ACK of what we received and a PING,
        padded to ``size``, so that the peer, if it arrives from an address it does not
        know, may answer with a full-size PATH_CHALLENGE at once. Not in flight: another
        probe follows if the silence goes on."""
        parts = [self._ack(now)] if len(self.acks.received) else []
        parts.append(wire.ENCODED_PING)
        return self._build_unacked(parts, now, dcid, size)

    def handshake_frames(self, extra: list[wire.Frame], room: int, now: float,
                         *, pad: bool) -> tuple[bytes, StreamRanges]:
        """The frames of a SYN or SYN-ACK payload: our credit, our spare CIDs (so the client
        can migrate from its first packet on) and as much stream data as fits in ``room``
        (0-RTT); a SYN is padded to ``room`` (the server may answer 3x its size)."""
        parts = [wire.encode_frame(self.flow.advertise())]
        parts.extend(wire.encode_frame(frame) for frame in extra)
        stream: StreamRanges = []
        used = sum(len(p) for p in parts)
        send_buf = self.send_buf
        if send_buf.has_data_to_send():
            rng = send_buf.next_range(room - used - 16, self.flow.peer_max_data)
            if rng is not None:
                offset, data, fin = rng
                parts.append(wire.encode_push_header(offset, len(data), fin))
                parts.append(data)
                stream.append((offset, len(data), fin))
        if pad:
            used = sum(len(p) for p in parts)
            parts.append(bytes(max(room - used, 0)))
        return b"".join(parts), stream

    def record_handshake(self, datagram: bytes, stream: StreamRanges, now: float) -> None:
        """Record one transmission of a SYN or SYN-ACK: not numbered on the wire, it takes a
        number here so that loss recovery re-arms it like any packet."""
        self._on_sent(self.allocate_pn(), datagram, now, True, stream, [HANDSHAKE_MARK])

