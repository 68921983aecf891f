"""What becomes of the packets we sent: acknowledged or lost.

:mod:`.recovery` decides which packets an ACK covers and which are lost; this module acts on
its answer for one connection. Acknowledged stream ranges are released from the send
buffer, and the congestion controller hears of both outcomes. A lost packet is never resent
as such: what it carried (stream ranges, control frames still meaningful) is queued again,
to leave in new packets with new numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ProtocolViolation
from . import wire
from .packet_builder import HANDSHAKE_MARK
from .recovery import SentPacket
from .states import State

if TYPE_CHECKING:
    from .connection import Connection


def on_ack(conn: Connection, ack: wire.AckFrame, now: float) -> None:
    """The peer acknowledged ``ack.ranges`` of our packets."""
    if ack.largest >= conn.packets.next_pn:
        raise ProtocolViolation(wire.CloseCode.PROTOCOL_VIOLATION, "ACK of a packet never sent")
    recovery = conn.recovery
    acked, lost, _ = recovery.on_ack(ack, now)
    if acked:
        send_buf = conn.send_buf
        peer_saw = -1
        # consecutive packets usually carry adjacent stream ranges: acknowledge each run
        # of them in one call instead of one call per packet
        run_start = run_end = -1
        for pkt in acked:
            for offset, length, fin in pkt.stream:
                if offset == run_end and not fin:
                    run_end += length
                    continue
                if run_end > run_start:
                    send_buf.on_acked(run_start, run_end - run_start, False)
                if fin:
                    send_buf.on_acked(offset, length, True)
                    run_start = run_end = -1
                else:
                    run_start, run_end = offset, offset + length
            if pkt.largest_acked > peer_saw:
                peer_saw = pkt.largest_acked
        if run_end > run_start:
            send_buf.on_acked(run_start, run_end - run_start, False)
        conn.acks.on_peer_saw(peer_saw)
        rtt = conn.rtt
        estimator = conn.rate_estimator
        sample = estimator.on_ack(acked, now, rtt.min_rtt if rtt.has_sample else 0.0)
        if sample is not None:
            conn.cc.on_delivery(sample, estimator.delivered)
        conn.cc.on_packets_acked(acked, rtt, now, recovery.bytes_in_flight)
    if lost:
        on_lost(conn, lost, now)


def on_lost(conn: Connection, lost: list[SentPacket], now: float) -> None:
    for pkt in lost:
        requeue(conn, pkt)
    conn.cc.on_packets_lost(lost, conn.rtt, now)


def requeue(conn: Connection, pkt: SentPacket) -> None:
    """Queue what a lost packet carried to be sent again, in new packets."""
    send_buf = conn.send_buf
    for offset, length, fin in pkt.stream:
        send_buf.on_lost(offset, length, fin)
    control = conn.packets.control
    flow = conn.flow
    for frame in pkt.control:
        if isinstance(frame, wire.MaxDataFrame):
            flow.send_max_data = True
        elif frame is HANDSHAKE_MARK:
            if conn.state is State.HANDSHAKING:
                conn.handshake.pending = True
        elif isinstance(frame, wire.PingFrame):
            pass  # a lost PING needs no repeat
        elif isinstance(frame, wire.DataBlockedFrame):
            if (frame.limit == flow.peer_max_data
                    and send_buf.next_offset >= flow.peer_max_data):
                control.append(frame)  # still blocked there: say it again
        elif isinstance(frame, wire.NewConnectionIdFrame):
            if frame.sequence in conn.cids.local:
                control.append(frame)  # not retired meanwhile: announce it again
        else:
            control.append(frame)
