"""The connection state machine: one reliable, ordered byte stream between two endpoints.

Sans-I/O: nothing here touches a socket, a clock or an event loop. The owner feeds
``receive_datagram(data, addr, now)`` and ``handle_timer(now)``, calls the application-side
methods (``send``, ``read``, ``send_eof``, ``close``, ``abort``), and drains
``datagrams_to_send(now)``, ``next_event()`` and ``get_timer()``.

States and transitions are in :mod:`.states`; loss recovery in :mod:`.recovery`; congestion
control in :mod:`.congestion`; stream buffers in :mod:`.buffers`; paths in :mod:`.paths`.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Callable

from ..config import Config
from ..errors import (
    ConnectionAborted,
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    IdleTimeout,
    MigrationError,
    ProtocolViolation,
    RoamlinkError,
    VersionMismatch,
)
from . import wire
from .buffers import RecvBuffer, SendBuffer
from .cids import ConnectionIds
from .congestion import create_controller
from .events import (
    Address,
    ConnectionStats,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    PathChanged,
    PathValidationFailed,
)
from .pacing import Pacer
from .paths import Candidate, PathManager, ValidationResult
from .ranges import RangeSet
from .recovery import Recovery, SentPacket
from .rtt import RttEstimator
from .states import State, Trigger, next_state

logger = logging.getLogger("roamlink.connection")

# error codes carried by CLOSE
NO_ERROR = 0
INTERNAL_ERROR = 1
FLOW_CONTROL_ERROR = 3
PROTOCOL_VIOLATION = 10
APPLICATION_ERROR = 0x100  # codes from here on are the application's

#: Credit each side may use before the peer's first MAX_DATA arrives (0-RTT data).
INITIAL_MAX_DATA = 64 * 1024
#: Out-of-order stream segments held at most (a hostile peer cannot make us hoard tiny ones).
MAX_SEGMENTS = 8192
#: A packet number this far past the largest received cannot be genuine (forged or corrupt).
MAX_PACKET_NUMBER_JUMP = 1 << 20
_MAX_CLOSE_RESENDS = 8
#: Packet numbers below the newest one the peer knows we acknowledged that we still report
#: (so a slightly reordered packet is not taken for a duplicate).
_ACK_HISTORY = 16
#: A receiver that only acknowledges adds a PING to every this many ACK-only packets.
_ACK_ONLY_PING_EVERY = 16
_PN = struct.Struct("!Q")
_SHORT_TYPE = b"\x40"
_PING = bytes((wire.PING,))

RandomBytes = Callable[[int], bytes]

# State members as module globals: on Python 3.11 ``State.X`` costs ~150 ns (the enum
# metaclass's __getattr__ hook slows every class attribute lookup), a global ~15 ns, and the
# per-packet paths compare states a dozen times per packet.
_HANDSHAKING = State.HANDSHAKING
_ESTABLISHED = State.ESTABLISHED
_VALIDATING_PATH = State.VALIDATING_PATH
_CLOSING = State.CLOSING
_DRAINING = State.DRAINING
_CLOSED = State.CLOSED


class Connection:
    """One roamlink connection (client or server side)."""

    def __init__(
        self,
        config: Config,
        *,
        is_client: bool,
        local_cid: bytes,
        remote_addr: Address,
        now: float,
        peer_cid: bytes = b"",
        version: int | None = None,
        random_bytes: RandomBytes = os.urandom,
        early_data: bytes = b"",
        local: int = 0,
        cid_taken: Callable[[bytes], bool] | None = None,
        cid_source: RandomBytes | None = None,
    ) -> None:
        self.config = config
        self.is_client = is_client
        self.local_cid = local_cid
        self.peer_cid = peer_cid
        self.version = version if version is not None else config.versions[0]
        self._random = random_bytes
        self._offered_versions = list(config.versions)
        self.state = State.HANDSHAKING
        self.paths = PathManager(remote_addr, local, random_bytes=random_bytes,
                                 max_candidates=config.max_candidate_paths,
                                 validation_timeout=config.path_validation_timeout,
                                 datagram_size=config.max_datagram_size)
        self.cids = ConnectionIds(local_cid, peer_cid, spare=config.spare_cids,
                                  random_bytes=cid_source or random_bytes,
                                  is_taken=cid_taken)
        #: bumped whenever the set of our CIDs changes, so every socket layer re-syncs routes
        self.cid_version = 0
        #: peer address changes (old, new) for the socket layer's address map (UpdateAddr)
        self.addr_changes: list[tuple[Address, Address]] = []
        self.log = logging.LoggerAdapter(logger, {"cid": local_cid.hex()})

        self.rtt = RttEstimator(config.initial_rtt)
        self.recovery = Recovery(self.rtt, config.max_ack_delay, config.min_rto, config.max_rto)
        self.cc = create_controller(config.congestion_control, config.max_datagram_size,
                                    config.initial_window_packets)
        self.pacer = Pacer(config.max_datagram_size) if config.pacing else None
        self._pace_at: float | None = None  # when the pacer lets the next packet go
        self.send_buf = SendBuffer()
        self.recv_buf = RecvBuffer()

        # flow control
        self.peer_max_data = INITIAL_MAX_DATA
        self.local_max_data = max(INITIAL_MAX_DATA, config.receive_window)
        self._advertised_max_data = INITIAL_MAX_DATA
        self._send_max_data = True
        self._blocked_sent_at = -1
        self.flow_blocked = 0

        # packet numbers and acknowledgements
        self._next_pn = 0
        self._received = RangeSet()
        self._largest_received = -1
        self._largest_received_time = 0.0
        self._ack_pending = False
        self._ack_deadline: float | None = None
        #: packets at or below this number cannot move the path (they predate the current one)
        self._path_pn_floor = -1
        self._gap_probe_sent = 0.0
        self._gap_probes = 0  # receiver probes since the peer was last heard (backoff)
        self._ack_eliciting_unacked = 0
        self._data_unacked = False  # stream data arrived since our last ACK
        self._ack_largest_in_packet = -1  # largest pn reported by the ACK in the packet built
        self._ack_only_sent = 0  # ACK-only packets sent since the last ack-eliciting one

        # control frames waiting to be (re)sent
        self._control: deque[wire.Frame] = deque()
        self._handshake_pending = True  # SYN / SYN-ACK must be (re)sent
        self._probe_pending = 0

        # lifecycle
        self._events: deque[Event] = deque()
        self.error: RoamlinkError | None = None
        self._created = now
        self._last_received = now
        self._last_sent = now
        self._drain_deadline: float | None = None
        self._close_deadline: float | None = None
        self._close_frame: wire.CloseFrame | None = None
        self._close_resends = 0
        self._close_resend_due = False
        self._app_closed = False
        self._graceful_drain = False

        # counters
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.duplicate_packets = 0
        self.dropped_packets = 0
        self.retransmissions = 0
        self.unvalidated_packets = 0  # processed from a path not (yet) validated

        if is_client and early_data:
            self.send_buf.write(early_data)
        if not is_client:
            self.cids.issue()  # announced in the SYN-ACK (see _handshake_frames)
            self.cid_version += 1
        self.log.debug("new %s connection to %s", "client" if is_client else "server",
                       remote_addr)

    # ------------------------------------------------------------------ public properties
    @property
    def remote_addr(self) -> Address:
        return self.paths.remote_addr

    @property
    def is_established(self) -> bool:
        return self.state in (_ESTABLISHED, _VALIDATING_PATH)

    @property
    def is_closed(self) -> bool:
        return self.state is _CLOSED

    @property
    def is_terminated(self) -> bool:
        """No more application data will move (closing, draining or closed)."""
        return self.state in (_CLOSING, _DRAINING, _CLOSED)

    # ------------------------------------------------------------------ application side
    def send(self, data: bytes) -> None:
        if self.is_terminated or self._app_closed or self.send_buf.fin_requested:
            raise self._closed_error()
        self.send_buf.write(data)

    def send_eof(self) -> None:
        if self.is_terminated:
            return
        self.send_buf.write_eof()

    def read(self, n: int = -1) -> bytes:
        data = self.recv_buf.read(n)
        if data:
            self._update_credit()
        return data

    @property
    def credit_update_due(self) -> bool:
        """Reading released enough credit that a MAX_DATA should go out (serve the
        connection); otherwise a read needs no send pass."""
        return self._send_max_data

    @property
    def readable(self) -> int:
        return self.recv_buf.readable

    @property
    def at_eof(self) -> bool:
        return self.recv_buf.at_eof

    @property
    def send_buffered(self) -> int:
        return self.send_buf.buffered

    def close(self, now: float) -> None:
        """Orderly close: FIN after pending data; abort if the peer has not closed in time."""
        if self.is_terminated or self._app_closed:
            return
        self._app_closed = True
        self.send_buf.write_eof()
        self._close_deadline = now + self.config.close_timeout
        # the application will not read any more: release the credit it holds
        self.recv_buf.read()
        self._update_credit()
        self._check_streams_done(now)

    def abort(self, now: float, code: int = APPLICATION_ERROR, reason: str = "") -> None:
        """Close at once with an error code (sent to the peer in CLOSE)."""
        if self.state in (State.CLOSING, State.DRAINING, State.CLOSED):
            return
        self._enter_closing(now, code, reason, ConnectionAborted(code, reason))

    # ------------------------------------------------------------------ events and timers
    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.state is _CLOSED:
            return None
        if self.state in (_CLOSING, _DRAINING):
            return self._drain_deadline
        deadlines = [self.recovery.timer(), self._ack_deadline, self._close_deadline,
                     self._pace_at]
        if self.state is _HANDSHAKING:
            deadlines.append(self._created + self.config.connect_timeout)
        if self.config.idle_timeout:
            deadlines.append(self._last_received + self.config.idle_timeout)
        if self.config.keepalive_interval and self.is_established:
            deadlines.append(self._last_sent + self.config.keepalive_interval)
        if self.is_established and self._expecting_data():
            deadlines.append(self._gap_probe_deadline())
        if self.paths.candidates:
            deadlines.append(self.paths.timer())
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        state = self.state
        if state is _CLOSED:
            return
        if state in (_CLOSING, _DRAINING):
            if self._drain_deadline is not None and now >= self._drain_deadline:
                self._set_state(Trigger.DRAIN_DONE)
            return
        if state is _HANDSHAKING and now >= self._created + self.config.connect_timeout:
            err: RoamlinkError = ConnectTimeout(
                f"no answer from {self.remote_addr} within {self.config.connect_timeout} s")
            self._terminate(err, Trigger.TIMEOUT)
            return
        if self.config.idle_timeout and now >= self._last_received + self.config.idle_timeout:
            self._terminate(IdleTimeout(
                f"nothing heard from the peer for {self.config.idle_timeout} s"), Trigger.TIMEOUT)
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            self._close_deadline = None
            self._enter_closing(now, NO_ERROR, "close timeout",
                                ConnectionClosed("the peer did not close in time"))
            return
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_pending = True
            self._ack_deadline = now  # send at the next opportunity
        if self.paths.candidates:
            self._expire_paths(now)
        lost, probe = self.recovery.on_timeout(now)
        if lost:
            self._on_lost(lost, now)
        if probe:
            self._probe_pending = 2
            if self.state is _HANDSHAKING:
                self._handshake_pending = True
            elif not self.send_buf.unsent:
                # nothing new to probe with: resend the oldest unacknowledged data
                oldest = self.recovery.oldest_unacked()
                if oldest is not None:
                    for offset, length, fin in oldest.stream:
                        self.send_buf.on_lost(offset, length, fin)
        if (self.is_established and self._expecting_data()
                and now >= self._gap_probe_deadline()):
            # the peer was sending (or data is missing) and went quiet: maybe our address
            # changed and its packets go astray. A packet from us lets it find us again.
            self._gap_probe_sent = now
            self._gap_probes += 1
            self._ack_pending = True
        if (self.config.keepalive_interval and self.is_established
                and now >= self._last_sent + self.config.keepalive_interval):
            self._control.append(wire.PingFrame())

    # ------------------------------------------------------------------ receiving
    def receive_datagram(self, data: bytes, addr: Address, now: float,
                         local: int | None = None) -> None:
        """Process one datagram that arrived on socket ``local`` (default: the one in use).

        Never raises on bad input: malformed packets are dropped and counted.
        """
        if self.state is _CLOSED:
            return
        try:
            self._receive(data, addr, now, self.paths.local if local is None else local)
        except wire.MalformedPacket as exc:
            self.dropped_packets += 1
            self.log.debug("dropped malformed packet from %s: %s", addr, exc)
        except ProtocolViolation as exc:
            self.log.warning("protocol violation by peer: %s", exc.reason)
            self._enter_closing(now, exc.code, exc.reason, exc)

    def _receive(self, data: bytes, addr: Address, now: float, local: int) -> None:
        first = data[0] if data else -1
        if first == wire.SHORT:
            dcid, pn, offset = wire.decode_short_header(data, len(self.local_cid))
            if self.state is _HANDSHAKING and self.is_client:
                raise wire.MalformedPacket("short packet before SYN-ACK")
        elif first in wire.LONG_TYPES:
            hdr = wire.decode_long_header(data)
            if first == wire.VERSION_NEGOTIATION:
                self._on_version_negotiation(hdr, data, now)
                return
            if not self._accept_long_header(hdr):
                self.dropped_packets += 1
                return
            pn, offset = hdr.packet_number, hdr.payload_offset
        else:
            raise wire.MalformedPacket("unknown packet type")

        if pn > self._largest_received + MAX_PACKET_NUMBER_JUMP:
            raise wire.MalformedPacket("packet number far beyond any in flight")
        frames = wire.decode_frames(data, offset)
        if self.state is _DRAINING and not self._graceful_drain:
            return
        if self.state is _CLOSING:
            self._close_resend_due = self._close_resends < _MAX_CLOSE_RESENDS
            return
        largest = self._largest_received
        if pn <= largest and self._is_duplicate(pn):
            self.duplicate_packets += 1
            if any(_ack_eliciting(f) for f in frames):
                self._ack_pending = True  # our ACK may have been lost
            return
        if (len(self.recv_buf._segments) >= MAX_SEGMENTS
                and any(isinstance(f, wire.PushFrame) for f in frames)):
            self.dropped_packets += 1  # not acknowledged: the peer will send it again
            return

        self.packets_received += 1
        self.bytes_received += len(data)
        is_newest = pn > largest and pn > self._path_pn_floor
        out_of_order = pn != largest + 1
        on_path = self.paths.is_current(local, addr) or self.state is _HANDSHAKING
        if on_path:
            self._last_received = now
            self._gap_probes = 0
            received = self._received
            received.add(pn, pn + 1)
            received.drop_oldest(wire.MAX_ACK_RANGES)
            if is_newest:
                self._largest_received = pn
                self._largest_received_time = now
        else:
            # an unvalidated path: its frames are processed (they are idempotent), but its
            # packet number is neither recorded nor acknowledged, so a forged "newest" packet
            # cannot poison our ACKs or hide a genuine packet as a duplicate later
            self.unvalidated_packets += 1
            self._on_packet_from_other_path(local, addr, len(data), pn, is_newest, now)

        if first == wire.SHORT and self.state is _HANDSHAKING:
            self._complete_handshake()  # server: the client used the CID it learnt from us

        eliciting = False
        push_frame = wire.PushFrame
        for frame in frames:
            if type(frame) is push_frame:  # the common case, without the generic dispatch
                eliciting = True
                self._data_unacked = True
                self._on_push(frame)
                continue
            if _ack_eliciting(frame):
                eliciting = True
            self._on_frame(frame, local, addr, now)
            if self.state in (_CLOSED, _CLOSING) or (
                    self.state is _DRAINING and not self._graceful_drain):
                return

        if eliciting and on_path:
            self._ack_eliciting_unacked += 1
            if (out_of_order or self._ack_eliciting_unacked >= self.config.ack_every
                    or first != wire.SHORT or self.state is _HANDSHAKING
                    or self.state is _DRAINING):
                self._ack_pending = True
                self._ack_deadline = None
            elif self._ack_deadline is None:
                self._ack_deadline = now + self.config.max_ack_delay
        self._check_streams_done(now)
        if self.state is _DRAINING and self._ack_deadline is not None:
            # no ACK timer runs while draining: the peer's FIN must be acknowledged now, or
            # the peer retransmits it until its idle timeout
            self._ack_pending = True
            self._ack_deadline = None

    def _is_duplicate(self, pn: int) -> bool:
        """``pn`` (not above the largest received) was seen, or is older than we remember."""
        lowest = self._received.first()
        return self._received.contains(pn) or (lowest is not None and pn < lowest[0])

    # ------------------------------------------------------------------ migration
    def _on_packet_from_other_path(self, local: int, addr: Address, size: int, pn: int,
                                   is_newest: bool, now: float) -> None:
        """Passive migration: the peer's newest packet came over another path."""
        if not self.is_established:
            return
        cand = self.paths.on_packet(local, addr, size, pn, is_newest, now, self._path_retry())
        if cand is not None:
            self.log.info("packet %s from new address %s: validating the path",
                          "(newest)" if is_newest else "", addr)
            self._set_state(Trigger.PATH_CANDIDATE)

    def migrate(self, now: float, remote: Address | None = None, local: int | None = None,
                timeout: float | None = None) -> Candidate:
        """Active migration: validate (local, remote) and move there when it answers.

        The probes use a fresh peer CID, so an observer cannot link the two paths. Raises
        :class:`MigrationError` when no validation can start.
        """
        if not self.is_established:
            raise MigrationError(f"cannot migrate in state {self.state.value}")
        remote = self.paths.remote_addr if remote is None else remote
        local = self.paths.local if local is None else local
        if self.paths.is_current(local, remote):
            raise MigrationError("the connection already uses that path")
        reserved = self.cids.reserve_unused_peer_cid()
        if reserved is None:
            raise MigrationError("the peer has no spare connection ID for a new path yet")
        cand = self.paths.start(local, remote, now, "active", self._path_retry(), timeout,
                                unlimited_budget=True)
        if cand is None:
            self._retire_peer_cid(self.cids.release(reserved[0]))
            raise MigrationError("too many path validations in progress")
        if cand.dcid_seq is None:
            cand.dcid_seq = reserved[0]
        else:
            self._retire_peer_cid(self.cids.release(reserved[0]))
        self.log.info("migrating to %s (socket %d)", remote, local)
        self._set_state(Trigger.PATH_CANDIDATE)
        return cand

    def cancel_migration(self, cand: Candidate) -> None:
        """Give up an active migration still being validated (e.g. ``migrate()`` was
        cancelled); the connection stays on its path. Does nothing once it was validated."""
        if not self.paths.abandon(cand):
            return
        if cand.dcid_seq is not None:
            self._retire_peer_cid(self.cids.release(cand.dcid_seq))
        self.log.info("migration to %s cancelled", cand.addr)
        if not self.paths.candidates and self.state is State.VALIDATING_PATH:
            self._set_state(Trigger.PATH_FAILED)

    def _expecting_data(self) -> bool:
        """Data is missing, or the peer may still send (no FIN yet): if it went quiet, a
        few backed-off probes (8 at most per silence) let it find us after an address
        change it cannot see."""
        return bool(self.recv_buf.segment_count) or (
            self.recv_buf.fin_offset is None and self._gap_probes < 8)

    def _gap_probe_deadline(self) -> float:
        backoff = 2.0 * (1 << min(self._gap_probes, 6))
        return (max(self._last_received, self._gap_probe_sent)
                + backoff * self.recovery.pto_interval())

    def _path_retry(self) -> float:
        """The challenge retry interval: one retransmission timeout (RTO)."""
        rtt = self.rtt
        rto = rtt.smoothed + max(4 * rtt.variance, 0.001) + self.config.max_ack_delay
        return min(max(rto, self.config.min_rto), self.config.max_rto)

    def _on_path_validated(self, result: ValidationResult, now: float) -> None:
        cand = result.candidate
        old_local, old_addr = self.paths.switch_to(cand, now)
        # the path is proven: acknowledge what arrived over it while it was a candidate, or
        # the peer (blocked by its congestion window) waits for timeouts on packets we have
        received = self._received
        for lo, hi in cand.pns:
            received.add(lo, hi)
            if hi - 1 > self._largest_received:
                self._largest_received = hi - 1
                self._largest_received_time = now
        received.drop_oldest(wire.MAX_ACK_RANGES)
        # packets older than the newest one seen on the new path never move us back
        self._path_pn_floor = max(self._path_pn_floor, self._largest_received, cand.largest_pn)
        if cand.dcid_seq is not None:
            self._retire_peer_cid(self.cids.switch_to(cand.dcid_seq))
            self.peer_cid = self.cids.active_peer_cid
        if _host(old_addr) != _host(cand.addr):
            # a new network: its capacity and delay are unknown, start over
            self.cc.on_path_change()
            self.rtt.reset()
            self.recovery.on_new_path()
            if self.pacer is not None:
                self._pace_at = None
        # what was in flight on the old path is resent on the new one (the receiver drops
        # duplicates), without counting it as congestion
        for pkt in self.recovery.take_all_in_flight():
            self._requeue(pkt)
        if old_addr != cand.addr:
            self.addr_changes.append((old_addr, cand.addr))
        self._ack_pending = True  # acknowledge on the new path at once
        self.log.info("path validated in %.1f ms: %s -> %s (%s; local socket %d -> %d)",
                      result.elapsed * 1e3, old_addr, cand.addr, cand.reason, old_local,
                      cand.local)
        self._events.append(PathChanged(old_addr, cand.addr, cand.reason, result.elapsed,
                                        old_local, cand.local))
        if not self.paths.candidates:
            self._set_state(Trigger.PATH_VALIDATED)

    def _expire_paths(self, now: float) -> None:
        for result in self.paths.expire(now):
            cand = result.candidate
            if cand.dcid_seq is not None:
                self._retire_peer_cid(self.cids.release(cand.dcid_seq))
            self.log.info("path validation to %s failed: %s", cand.addr, result.why)
            self._events.append(PathValidationFailed(cand.addr, result.why, cand.local))
        if not self.paths.candidates and self.state is State.VALIDATING_PATH:
            self._set_state(Trigger.PATH_FAILED)

    def _retire_peer_cid(self, seq: int | None) -> None:
        if seq is not None:
            self._control.append(wire.RetireConnectionIdFrame(seq))

    def _issue_cids(self) -> None:
        issued = self.cids.issue()
        if issued:
            self.cid_version += 1
            for _, frame in issued:
                self._control.append(frame)

    def routed_cids(self) -> list[bytes]:
        """Every CID of ours the peer may use: the socket layer routes them all here."""
        return list(self.cids.local.values())

    def _on_new_connection_id(self, frame: wire.NewConnectionIdFrame) -> None:
        for seq in self.cids.on_new_cid(frame):
            self._retire_peer_cid(seq)

    def _on_retire_connection_id(self, frame: wire.RetireConnectionIdFrame) -> None:
        try:
            cid = self.cids.on_retire(frame.sequence)
        except ValueError as exc:
            raise ProtocolViolation(PROTOCOL_VIOLATION, str(exc)) from None
        if cid is not None:
            self.cid_version += 1
            self._issue_cids()  # replenish, so the peer can migrate again

    def _accept_long_header(self, hdr: wire.LongHeader) -> bool:
        if hdr.version != self.version:
            return False
        if self.is_client:
            if hdr.packet_type != wire.SYN_ACK or hdr.dcid != self.local_cid:
                return False
            if self.state is State.HANDSHAKING:
                if not 8 <= len(hdr.scid) <= wire.MAX_CID_LENGTH:
                    raise wire.MalformedPacket("bad server CID")
                self.peer_cid = hdr.scid
                self._handshake_pending = False
                self._complete_handshake()
            return True
        if hdr.packet_type != wire.SYN or hdr.scid != self.peer_cid:
            return False
        if self.state is State.HANDSHAKING:
            self._handshake_pending = True  # a retransmitted SYN: our SYN-ACK was lost
        return True

    def _on_version_negotiation(self, hdr: wire.LongHeader, data: bytes, now: float) -> None:
        if not self.is_client or self.state is not State.HANDSHAKING:
            return
        if hdr.dcid != self.local_cid:
            return
        supported = wire.decode_versions(data, hdr.payload_offset)
        if self.version in supported:
            return  # stale or forged: our version is fine
        self._offered_versions = [v for v in self._offered_versions if v != self.version]
        common = [v for v in self._offered_versions if v in supported]
        if common:
            self.log.info("version %d refused; retrying with %d", self.version, common[0])
            self.version = common[0]
            self._handshake_pending = True
            self.recovery.take_all_in_flight()  # the old SYN will never be acknowledged
            return
        self._terminate(VersionMismatch(tuple(self.config.versions), supported),
                        Trigger.TIMEOUT)

    def _complete_handshake(self) -> None:
        if self.state is State.HANDSHAKING:
            if self.is_client:
                self.cids.set_handshake_peer_cid(self.peer_cid)
            self._issue_cids()
            self._set_state(Trigger.HANDSHAKE_DONE)
            self._events.append(HandshakeCompleted())
            self.log.debug("handshake complete")

    def _on_frame(self, frame: wire.Frame, local: int, addr: Address, now: float) -> None:
        if isinstance(frame, wire.PushFrame):
            self._on_push(frame)
        elif isinstance(frame, wire.AckFrame):
            self._on_ack(frame, now)
        elif isinstance(frame, wire.MaxDataFrame):
            if frame.maximum > self.peer_max_data:
                self.peer_max_data = frame.maximum
        elif isinstance(frame, wire.DataBlockedFrame):
            self._send_max_data = True  # the peer is stuck: repeat our credit now
        elif isinstance(frame, wire.PathChallengeFrame):
            self.paths.on_challenge(local, addr, frame.data)
        elif isinstance(frame, wire.PathResponseFrame):
            result = self.paths.on_response(local, addr, frame.data, now)
            if result is not None and self.is_established:
                self._on_path_validated(result, now)
        elif isinstance(frame, wire.NewConnectionIdFrame):
            self._on_new_connection_id(frame)
        elif isinstance(frame, wire.RetireConnectionIdFrame):
            self._on_retire_connection_id(frame)
        elif isinstance(frame, wire.CloseFrame):
            self._on_close_frame(frame, now)

    def _on_push(self, frame: wire.PushFrame) -> None:
        end = frame.offset + len(frame.data)
        if end > self._advertised_max_data:
            raise ProtocolViolation(FLOW_CONTROL_ERROR,
                                    f"peer sent to offset {end} beyond our credit "
                                    f"{self._advertised_max_data}")
        try:
            new = self.recv_buf.receive(frame.offset, frame.data, frame.fin)
        except ValueError as exc:
            raise ProtocolViolation(PROTOCOL_VIOLATION, str(exc)) from None
        if new and self._app_closed:
            self.recv_buf.read()  # nobody will read it: discard, keep credit flowing
            self._update_credit()

    def _on_ack(self, ack: wire.AckFrame, now: float) -> None:
        if ack.largest >= self._next_pn:
            raise ProtocolViolation(PROTOCOL_VIOLATION, "ACK of a packet never sent")
        acked, lost, _ = self.recovery.on_ack(ack, now)
        if acked:
            send_buf = self.send_buf
            peer_knows = -1
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
                if pkt.largest_acked > peer_knows:
                    peer_knows = pkt.largest_acked
            if run_end > run_start:
                send_buf.on_acked(run_start, run_end - run_start, False)
            if peer_knows > _ACK_HISTORY:
                # the peer saw an ACK up to peer_knows: stop repeating older ranges
                self._received.shift_until(peer_knows - _ACK_HISTORY)
            self.cc.on_packets_acked(acked, self.rtt, now, self.recovery.bytes_in_flight)
        if lost:
            self._on_lost(lost, now)

    def _on_lost(self, lost: list[SentPacket], now: float) -> None:
        for pkt in lost:
            self._requeue(pkt)
        self.cc.on_packets_lost(lost, self.rtt, now)

    def _requeue(self, pkt: SentPacket) -> None:
        """Queue what a lost packet carried to be sent again, in new packets."""
        for offset, length, fin in pkt.stream:
            self.send_buf.on_lost(offset, length, fin)
        for frame in pkt.control:
            if isinstance(frame, wire.MaxDataFrame):
                self._send_max_data = True
            elif frame is _HANDSHAKE_MARK:
                if self.state is State.HANDSHAKING:
                    self._handshake_pending = True
            elif isinstance(frame, wire.PingFrame):
                pass  # a lost PING needs no repeat
            elif isinstance(frame, wire.DataBlockedFrame):
                if (frame.limit == self.peer_max_data
                        and self.send_buf.next_offset >= self.peer_max_data):
                    self._control.append(frame)  # still blocked there: say it again
            elif isinstance(frame, wire.NewConnectionIdFrame):
                if frame.sequence in self.cids.local:
                    self._control.append(frame)  # not retired meanwhile: announce it again
            else:
                self._control.append(frame)

    def _on_close_frame(self, frame: wire.CloseFrame, now: float) -> None:
        if frame.code == NO_ERROR:
            err: RoamlinkError | None = None
            if not (self.recv_buf.fin_offset is not None and self.send_buf.all_acked):
                err = ConnectionClosed(f"closed by peer: {frame.reason or 'no reason'}")
        else:
            err = ConnectionReset(frame.code, frame.reason)
        self.error = self.error or err
        self._set_state(Trigger.PEER_CLOSE)
        self._drain_deadline = now + self.config.draining_period
        self._events.append(ConnectionTerminated(err))
        self.log.debug("peer closed the connection: code %d %s", frame.code, frame.reason)

    # ------------------------------------------------------------------ flow control
    def _update_credit(self) -> None:
        consumed = self.recv_buf.consumed
        window = self.config.receive_window
        self.local_max_data = consumed + window
        if self.local_max_data - self._advertised_max_data >= window // 4:
            self._send_max_data = True

    # ------------------------------------------------------------------ lifecycle helpers
    def _set_state(self, trigger: Trigger) -> None:
        new = next_state(self.state, trigger)
        if new is not self.state:
            self.log.debug("state %s -> %s (%s)", self.state.value, new.value, trigger.value)
            self.state = new

    def _terminate(self, err: RoamlinkError | None, trigger: Trigger) -> None:
        self.error = self.error or err
        self._set_state(trigger)
        self._events.append(ConnectionTerminated(err))

    def _enter_closing(self, now: float, code: int, reason: str, err: RoamlinkError) -> None:
        if self.state is State.HANDSHAKING and not self.peer_cid:
            self._terminate(err, Trigger.TIMEOUT)
            return
        self._close_frame = wire.CloseFrame(code, reason)
        self._close_resend_due = True
        self.error = self.error or err
        self._set_state(Trigger.LOCAL_CLOSE)
        self._drain_deadline = now + self.config.draining_period
        self._events.append(ConnectionTerminated(err))

    def _check_streams_done(self, now: float) -> None:
        """Four-way close complete: our FIN was acknowledged and the peer's FIN arrived."""
        if (self.send_buf.fin_requested and self.is_established and self.send_buf.all_acked
                and self.recv_buf.fin_offset is not None
                and self.recv_buf.delivered == self.recv_buf.fin_offset):
            self._set_state(Trigger.STREAMS_DONE)
            self._graceful_drain = True
            self._close_deadline = None
            self._drain_deadline = now + self.config.draining_period
            self._events.append(ConnectionTerminated(None))

    def _closed_error(self) -> RoamlinkError:
        if self.error is not None and not isinstance(self.error, ConnectTimeout):
            return self.error
        return ConnectionClosed("the connection is closed for writing")

    # ------------------------------------------------------------------ sending
    def datagrams_to_send(self, now: float, local: int | None = None
                          ) -> list[tuple[bytes, Address]]:
        """Datagrams to send now from socket ``local`` (default: the one in use).

        For a socket that is not the one in use, only path-validation probes come out.
        """
        state = self.state
        if state is _CLOSED:
            return []
        out: list[tuple[bytes, Address]] = []
        if local is None:
            local = self.paths.local
        if self.paths.has_work():
            self._path_probes(local, now, out)
        if local != self.paths.local:
            return out
        if state is _CLOSING:
            if self._close_resend_due and self._close_frame is not None:
                self._close_resend_due = False
                self._close_resends += 1
                out.append((self._build_packet([wire.encode_frame(self._close_frame)], now,
                                               None), self.remote_addr))
            return out
        if state is _DRAINING:
            if self._graceful_drain and self._ack_pending:
                out.append((self._build_packet([self._encode_ack(now)], now, None),
                            self.remote_addr))
            return out
        if state is _HANDSHAKING and not self.peer_cid:
            if self._handshake_pending:
                out.append((self._build_syn(now), self.remote_addr))
            return out
        if self._handshake_pending and not self.is_client:
            # anti-amplification: an unproven client address gets at most 3x what it sent
            if (state is not _HANDSHAKING
                    or self.bytes_sent + self.config.max_datagram_size <= 3 * self.bytes_received):
                out.append((self._build_syn_ack(now), self.remote_addr))
            else:
                self._handshake_pending = False
        if state is _HANDSHAKING:
            return out
        self._build_data_packets(now, out)
        return out

    def _path_probes(self, local: int, now: float, out: list[tuple[bytes, Address]]) -> None:
        """PATH_RESPONSEs owed and PATH_CHALLENGEs due on socket ``local``."""
        paths = self.paths
        small = 1 + len(self.peer_cid) + 8 + 9  # header + one path frame
        for addr, data in paths.take_responses(local):
            size = paths.response_size(local, addr, small)
            if size:
                out.append((self._build_probe(wire.PathResponseFrame(data), now,
                                              self._dcid_for(local, addr), size), addr))
        if not paths.candidates or not self.is_established:
            return
        for cand, data, size in paths.due_challenges(local, now, small):
            out.append((self._build_probe(wire.PathChallengeFrame(data), now,
                                          self._dcid_for(local, cand.addr), size), cand.addr))

    def _dcid_for(self, local: int, addr: Address) -> bytes:
        cand = self.paths.candidates.get((local, addr))
        if cand is not None and cand.dcid_seq is not None and cand.dcid_seq in self.cids.peer:
            return self.cids.peer[cand.dcid_seq]
        return self.peer_cid

    def _can_send_in_flight(self) -> bool:
        return self.recovery.bytes_in_flight + self.config.max_datagram_size <= self.cc.cwnd

    def _pacer_allows(self, now: float) -> bool:
        """Whether the pacer lets an in-flight packet go now; if not, arm its timer."""
        pacer = self.pacer
        if pacer is None:
            return True
        at = pacer.next_send_time(now)
        if at is None:
            return True
        if self.send_buf.has_data_to_send() or self._control or self._send_max_data:
            self._pace_at = at
        return False

    def _build_data_packets(self, now: float, out: list[tuple[bytes, Address]]) -> None:
        mtu = self.config.max_datagram_size
        header_size = 1 + len(self.peer_cid) + 8
        send_buf = self.send_buf
        addr = self.remote_addr
        self._pace_at = None
        pacer = self.pacer
        if pacer is not None:
            pacer.set_rate(self.cc.pacing_rate(self.rtt))
        while True:
            parts: list[bytes] = []
            size = header_size
            control: list[wire.Frame] = []
            stream: list[tuple[int, int, bool]] = []
            eliciting = retransmission = False
            probing = self._probe_pending > 0
            may_fly = probing or (self._can_send_in_flight() and self._pacer_allows(now))
            due = self._ack_pending or (self._ack_deadline is not None
                                        and now >= self._ack_deadline)
            # an owed (delayed) ACK also rides on any packet that carries data: it costs a few
            # bytes, and spares the ACK-only packet (and the peer's wake-up) due later
            # (only for stream data received: data answering data, as in request/response;
            # control-only packets keep the delayed-ACK pace the ack-of-ack history relies on)
            if due or (self._ack_deadline is not None and self._data_unacked and may_fly
                       and send_buf.has_data_to_send()):
                ack = self._encode_ack(now)
                parts.append(ack)
                size += len(ack)
            if may_fly:
                if self._send_max_data:
                    self._send_max_data = False
                    self._advertised_max_data = self.local_max_data
                    frame: wire.Frame = wire.MaxDataFrame(self.local_max_data)
                    encoded = wire.encode_frame(frame)
                    parts.append(encoded)
                    size += len(encoded)
                    control.append(frame)
                while self._control and size + 64 < mtu:
                    frame = self._control.popleft()
                    encoded = wire.encode_frame(frame)
                    parts.append(encoded)
                    size += len(encoded)
                    control.append(frame)
                # stream data: retransmissions first, then new bytes within the peer's credit
                while size + 24 < mtu and send_buf.has_data_to_send():
                    room = mtu - size - 1 - 8 - 4
                    if send_buf.has_retransmission():
                        retransmission = True
                    rng = send_buf.next_range(room, self.peer_max_data)
                    if rng is None:
                        self._maybe_blocked(parts, control)
                        break
                    offset, data, fin = rng
                    length = len(data)
                    header = _push_header(offset, length, fin)
                    parts.append(header)
                    parts.append(data)
                    size += len(header) + length
                    stream.append((offset, length, fin))
                eliciting = bool(stream or control)
                if probing and not eliciting:
                    parts.append(_PING)  # a probe must elicit an ACK
                    eliciting = True
                elif not eliciting and parts and self._ack_only_sent >= _ACK_ONLY_PING_EVERY:
                    # a pure receiver's ACKs are never acknowledged, so it would repeat old
                    # ranges forever: now and then make one elicit an ACK (ack of ack)
                    parts.append(_PING)
                    eliciting = True
            if not parts:
                break
            if eliciting:
                self._ack_only_sent = 0
            else:
                self._ack_only_sent += 1
            if retransmission:
                self.retransmissions += 1
            datagram = self._finish_packet(parts, now, stream, control, eliciting)
            out.append((datagram, addr))
            if pacer is not None and eliciting:
                pacer.on_sent(len(datagram))
            if probing and eliciting:
                self._probe_pending -= 1
            if not eliciting or not may_fly:
                break

    def _maybe_blocked(self, parts: list[bytes], control: list[wire.Frame]) -> None:
        """Flow control stops us: tell the peer once per limit (a probe for a lost update)."""
        if self.send_buf.unsent and self.peer_max_data != self._blocked_sent_at:
            self._blocked_sent_at = self.peer_max_data
            self.flow_blocked += 1
            frame = wire.DataBlockedFrame(self.peer_max_data)
            parts.append(wire.encode_frame(frame))
            control.append(frame)

    def _encode_ack(self, now: float) -> bytes:
        ranges = [(lo, hi - 1) for lo, hi in reversed(self._received)]
        delay_us = int(max(now - self._largest_received_time, 0.0) * 1e6)
        self._ack_largest_in_packet = self._largest_received
        self._ack_pending = False
        self._ack_deadline = None
        self._ack_eliciting_unacked = 0
        self._data_unacked = False
        return wire.encode_ack(ranges, delay_us)

    def _finish_packet(self, parts: list[bytes], now: float, stream: list[tuple[int, int, bool]],
                       control: list[wire.Frame], eliciting: bool) -> bytes:
        pn = self._next_pn
        self._next_pn = pn + 1
        datagram = b"".join((_SHORT_TYPE, self.peer_cid, _PN.pack(pn), *parts))
        self._on_sent(pn, datagram, now, eliciting, stream, control)
        return datagram

    def _on_sent(self, pn: int, datagram: bytes, now: float, eliciting: bool,
                 stream: list[tuple[int, int, bool]], control: list[wire.Frame]) -> None:
        size = len(datagram)
        self.packets_sent += 1
        self.bytes_sent += size
        self._last_sent = now
        pkt = SentPacket(pn, now, size, eliciting, stream, control)
        pkt.largest_acked = self._ack_largest_in_packet
        self._ack_largest_in_packet = -1
        recovery = self.recovery
        if (eliciting and recovery.bytes_in_flight == 0
                and recovery.last_ack_eliciting_time is not None
                and now - recovery.last_ack_eliciting_time > recovery.pto_interval()):
            self.cc.on_idle()  # the window is stale after an idle period: slow start again
        recovery.on_packet_sent(pkt)
        if eliciting:
            self.cc.on_packet_sent(size, now, recovery.bytes_in_flight)

    def _build_packet(self, frames: list[bytes], now: float, control: list[wire.Frame] | None
                      ) -> bytes:
        return self._finish_packet(frames, now, [], control or [], control is not None)

    def _build_probe(self, frame: wire.Frame, now: float, dcid: bytes, size: int) -> bytes:
        """A path probe padded to ``size`` (the full datagram size unless the
        anti-amplification budget forbids): a path that cannot carry it is not validated."""
        encoded = wire.encode_frame(frame)
        header = 1 + len(dcid) + 8
        pn = self._next_pn
        self._next_pn = pn + 1
        datagram = b"".join((_SHORT_TYPE, dcid, _PN.pack(pn), encoded,
                             bytes(max(size - header - len(encoded), 0))))
        # probes are not in flight: the path manager retries challenges itself
        self._on_sent(pn, datagram, now, False, [], [])
        return datagram

    def _handshake_frames(self, room: int, now: float
                          ) -> tuple[list[bytes], list[tuple[int, int, bool]]]:
        self._advertised_max_data = self.local_max_data
        parts = [wire.encode_frame(wire.MaxDataFrame(self.local_max_data))]
        stream: list[tuple[int, int, bool]] = []
        if not self.is_client:
            # spare CIDs ride in the SYN-ACK: the client can migrate from its first packet on
            parts.extend(wire.encode_frame(wire.NewConnectionIdFrame(seq, 0, cid))
                         for seq, cid in self.cids.local.items() if seq)
        if self._received:
            parts.append(self._encode_ack(now))
        used = sum(len(p) for p in parts)
        if self.send_buf.has_data_to_send():
            rng = self.send_buf.next_range(room - used - 16, self.peer_max_data)
            if rng is not None:
                offset, data, fin = rng
                parts.append(wire.encode_push_header(offset, len(data), fin))
                parts.append(data)
                stream.append((offset, len(data), fin))
        return parts, stream

    def _build_syn(self, now: float) -> bytes:
        self._handshake_pending = False
        header = wire.encode_long_header(wire.SYN, self.version, b"", self.local_cid,
                                         self._next_pn)
        room = self.config.max_datagram_size - len(header)
        parts, stream = self._handshake_frames(room, now)
        used = sum(len(p) for p in parts)
        parts.append(bytes(max(room - used, 0)))  # padded: the server may answer 3x this
        return self._finish_long(header, parts, now, stream)

    def _build_syn_ack(self, now: float) -> bytes:
        self._handshake_pending = False
        header = wire.encode_long_header(wire.SYN_ACK, self.version, self.peer_cid,
                                         self.local_cid, self._next_pn)
        room = self.config.max_datagram_size - len(header)
        parts, stream = self._handshake_frames(room, now)
        return self._finish_long(header, parts, now, stream)

    def _finish_long(self, header: bytes, parts: list[bytes], now: float,
                     stream: list[tuple[int, int, bool]]) -> bytes:
        pn = self._next_pn
        self._next_pn = pn + 1
        datagram = header + b"".join(parts)
        self._on_sent(pn, datagram, now, True, stream, [_HANDSHAKE_MARK])
        return datagram

    # ------------------------------------------------------------------ statistics
    def stats(self) -> ConnectionStats:
        rtt = self.rtt
        return ConnectionStats(
            state=self.state.value,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            packets_sent=self.packets_sent,
            packets_received=self.packets_received,
            stream_bytes_sent=self.send_buf.next_offset,
            stream_bytes_received=self.recv_buf.delivered,
            retransmissions=self.retransmissions,
            packets_lost=self.recovery.packets_lost,
            spurious_losses=self.recovery.spurious_losses,
            pto_count=self.recovery.pto_fired,
            duplicate_packets=self.duplicate_packets,
            dropped_packets=self.dropped_packets,
            smoothed_rtt=rtt.smoothed,
            rtt_variance=rtt.variance,
            min_rtt=rtt.min_rtt if rtt.has_sample else 0.0,
            latest_rtt=rtt.latest,
            cwnd=self.cc.cwnd,
            bytes_in_flight=self.recovery.bytes_in_flight,
            congestion_state=self.cc.state,
            congestion_controller=self.cc.name,
            congestion_events=self.cc.congestion_events,
            path_changes=self.paths.path_changes,
            send_buffered=self.send_buf.buffered,
            recv_buffered=self.recv_buf.buffered,
            flow_control_blocked=self.flow_blocked,
        )


_VARINT_FORMATS = {1: ("B", 0), 2: ("H", 0x4000), 4: ("I", 0x8000_0000),
                   8: ("Q", 0xC000_0000_0000_0000)}
#: (offset width, length width) -> (struct, offset marker bits, length marker bits)
_PUSH_HEADERS = {
    (o, n): (struct.Struct("!B" + _VARINT_FORMATS[o][0] + _VARINT_FORMATS[n][0]),
             _VARINT_FORMATS[o][1], _VARINT_FORMATS[n][1])
    for o in (1, 2, 4, 8) for n in (1, 2, 4, 8)
}


def _varint_width(value: int) -> int:
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x4000_0000 else 8


def _push_header(offset: int, length: int, fin: bool) -> bytes:
    """The PUSH frame header, byte for byte as ``wire.encode_push_header`` makes it, in one
    precompiled struct call instead of three encodes and two concatenations."""
    fmt, off_bits, len_bits = _PUSH_HEADERS[_varint_width(offset), _varint_width(length)]
    return fmt.pack(wire.PUSH_FIN if fin else wire.PUSH, offset | off_bits, length | len_bits)


class _HandshakeMark(wire.PingFrame):
    """Marks a sent packet as carrying SYN/SYN-ACK, so its loss re-arms the handshake."""


_HANDSHAKE_MARK = _HandshakeMark()


def _host(addr: Address) -> str:
    """The IP part of an address: a change of it (not just the port) is a new network."""
    return addr[0]


def _ack_eliciting(frame: wire.Frame) -> bool:
    return not isinstance(frame, (wire.AckFrame, wire.PaddingFrame, wire.CloseFrame))
