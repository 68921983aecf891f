"""Events the core hands to the layer above, and the statistics snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import RoamlinkError

Address = tuple[str, int] | tuple[str, int, int, int]
#: Why a path was validated: the peer's packets came from a new address ("passive": NAT
#: rebinding, a new network) or the application called ``migrate()`` ("active").
MigrationReason = Literal["passive", "active"]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The connection is established (client: SYN-ACK received; server: first 1-RTT packet)."""


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection ended; ``error`` is None for an orderly close."""

    error: RoamlinkError | None


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The connection moved to a validated path."""

    old_addr: Address
    new_addr: Address
    reason: MigrationReason
    validation_time: float
    old_socket_id: int = 0  # the socket layer's id of the local socket before and after
    new_socket_id: int = 0


@dataclass(frozen=True, slots=True)
class PathValidationFailed:
    """A candidate path did not answer; the connection stays where it was."""

    addr: Address
    reason: str
    socket_id: int = 0


Event = HandshakeCompleted | ConnectionTerminated | PathChanged | PathValidationFailed


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """A snapshot of a connection's counters (see docs for their meaning)."""

    state: str
    bytes_sent: int
    bytes_received: int
    packets_sent: int
    packets_received: int
    stream_bytes_sent: int
    stream_bytes_received: int
    retransmissions: int
    packets_lost: int
    spurious_losses: int
    pto_count: int
    duplicate_packets: int
    dropped_packets: int
    smoothed_rtt: float
    rtt_variance: float
    min_rtt: float
    latest_rtt: float
    cwnd: int
    bytes_in_flight: int
    congestion_state: str
    congestion_controller: str
    congestion_events: int
    path_changes: int
    send_buffered: int
    recv_buffered: int
    flow_control_blocked: int
    #: RETRYs the listener answered our SYN with (each costs one round trip)
    handshake_retries: int = 0
    #: packets in flight on a path the connection left, resent on the new one (not lost)
    packets_requeued: int = 0
    #: packets dropped because they did not authenticate (never parsed)
    auth_failures: int = 0
    #: our sending key's generation (key updates done) and the peer's
    key_updates_sent: int = 0
    key_updates_received: int = 0
    #: whether packets are sealed (False only with ``insecure_plaintext``)
    encrypted: bool = True
    #: latest delivery-rate sample (bytes/s) and whether the application limited it
    delivery_rate: float = 0.0
    delivery_rate_app_limited: bool = False
    #: rate the pacer is set to (bytes/s; 0 when pacing is off)
    pacing_rate: float = 0.0
    tail_loss_probes: int = 0
