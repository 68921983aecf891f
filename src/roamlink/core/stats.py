"""A connection's counters, and the snapshot ``Connection.stats()`` returns.

Every drop, duplicate and retransmission is counted, so that ``stats()`` (and the logs) tell
the story of a connection without a debugger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import ConnectionStats

if TYPE_CHECKING:
    from .connection import Connection


class Counters:
    """Packet and byte counters the send and receive paths bump."""

    __slots__ = ("bytes_sent", "bytes_received", "packets_sent", "packets_received",
                 "duplicate_packets", "dropped_packets", "retransmissions",
                 "unvalidated_packets", "handshake_retries", "auth_failures")

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.duplicate_packets = 0
        self.dropped_packets = 0  # malformed, unroutable or over a limit
        self.retransmissions = 0  # packets that carried retransmitted stream data
        self.unvalidated_packets = 0  # processed from a path not (yet) validated
        self.handshake_retries = 0  # RETRYs from a listener under load (one round trip each)
        self.auth_failures = 0  # did not authenticate: dropped unparsed


def snapshot(conn: Connection) -> ConnectionStats:
    """Everything ``stats()`` reports, read from the connection's parts."""
    counters = conn.counters
    rtt = conn.rtt
    recovery = conn.recovery
    cc = conn.cc
    protection = conn.packets.protection
    return ConnectionStats(
        state=conn.state.value,
        bytes_sent=counters.bytes_sent,
        bytes_received=counters.bytes_received,
        packets_sent=counters.packets_sent,
        packets_received=counters.packets_received,
        stream_bytes_sent=conn.send_buf.next_offset,
        stream_bytes_received=conn.recv_buf.delivered,
        retransmissions=counters.retransmissions,
        packets_lost=recovery.packets_lost,
        spurious_losses=recovery.spurious_losses,
        pto_count=recovery.pto_fired,
        duplicate_packets=counters.duplicate_packets,
        dropped_packets=counters.dropped_packets,
        smoothed_rtt=rtt.smoothed,
        rtt_variance=rtt.variance,
        min_rtt=rtt.min_rtt if rtt.has_sample else 0.0,
        latest_rtt=rtt.latest,
        cwnd=cc.cwnd,
        bytes_in_flight=recovery.bytes_in_flight,
        congestion_state=cc.state,
        congestion_controller=cc.name,
        congestion_events=cc.congestion_events,
        path_changes=conn.paths.path_changes,
        send_buffered=conn.send_buf.buffered,
        recv_buffered=conn.recv_buf.buffered,
        flow_control_blocked=conn.flow.blocked_count,
        handshake_retries=counters.handshake_retries,
        packets_requeued=recovery.packets_requeued,
        auth_failures=counters.auth_failures,
        key_updates_sent=protection.send_generation if protection is not None else 0,
        key_updates_received=protection.recv_generation if protection is not None else 0,
        encrypted=not conn.config.insecure_plaintext,
        delivery_rate=conn.rate_estimator.latest.delivery_rate,
        delivery_rate_app_limited=conn.rate_estimator.latest.is_app_limited,
        pacing_rate=conn.pacer.rate if conn.pacer is not None else 0.0,
        tail_loss_probes=recovery.tlp_fired,
    )
