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
from .cids import CidManager
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
from .paths import Candidate, PathManager, SilenceProbe
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
_PN = struct.Struct("!Q")
_SHORT_TYPE = b"\x40"
_PING = bytes((wire.PING,))

RandomBytes = Callable[[int], bytes]


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
    ) -> None:
        self.config = config
        self.is_client = is_client
        self.local_cid = local_cid
        self.peer_cid = peer_cid
        self.version = version if version is not None else config.versions[0]
        self._random = random_bytes
        self._offered_versions = list(config.versions)
        self.state = State.HANDSHAKING
        self.paths = PathManager(remote_addr, config, random_bytes)
        self.log = logging.LoggerAdapter(logger, {"cid": local_cid.hex()})

        self.rtt = RttEstimator(config.initial_rtt)
        self.recovery = Recovery(self.rtt, config.max_ack_delay, config.min_rto, config.max_rto)
        self.cc = create_controller(config.congestion_control, config.max_datagram_size,
                                    config.initial_window_packets)
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
        self._ack_eliciting_unacked = 0

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
        self.routing_changes: list[tuple[bool, bytes]] = [(True, local_cid)]
        self.cids = CidManager(local_cid, config.spare_cids, len(local_cid), random_bytes,
                               self.routing_changes)
        self.cids.handshake_peer_cid = peer_cid
        self.silence = SilenceProbe()
        self._silence_ping = False

        # counters
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.duplicate_packets = 0
        self.dropped_packets = 0
        self.retransmissions = 0

        if is_client and early_data:
            self.send_buf.write(early_data)
        self.log.debug("new %s connection to %s", "client" if is_client else "server",
                       remote_addr)

    # ------------------------------------------------------------------ public properties
    @property
    def remote_addr(self) -> Address:
        return self.paths.remote_addr

    @property
    def is_established(self) -> bool:
        return self.state in (State.ESTABLISHED, State.VALIDATING_PATH)

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def is_terminated(self) -> bool:
        """No more application data will move (closing, draining or closed)."""
        return self.state in (State.CLOSING, State.DRAINING, State.CLOSED)

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
        if self.state is State.CLOSED:
            return None
        if self.state in (State.CLOSING, State.DRAINING):
            return self._drain_deadline
        deadlines = [self.recovery.timer(), self._ack_deadline, self._close_deadline,
                     self.paths.timer(), self.silence.deadline(self.recovery.pto_interval())]
        if self.state is State.HANDSHAKING:
            deadlines.append(self._created + self.config.connect_timeout)
        if self.config.idle_timeout:
            deadlines.append(self._last_received + self.config.idle_timeout)
        if self.config.keepalive_interval and self.is_established:
            deadlines.append(self._last_sent + self.config.keepalive_interval)
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        state = self.state
        if state is State.CLOSED:
            return
        if state in (State.CLOSING, State.DRAINING):
            if self._drain_deadline is not None and now >= self._drain_deadline:
                self._set_state(Trigger.DRAIN_DONE)
            return
        if state is State.HANDSHAKING and now >= self._created + self.config.connect_timeout:
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
        self.paths.on_timer(now)
        self._discard_failed()
        if self.silence.due(now, self.recovery.pto_interval()):
            self._silence_ping = True
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_pending = True
            self._ack_deadline = now  # send at the next opportunity
        lost, probe = self.recovery.on_timeout(now)
        if lost:
            self._on_lost(lost, now)
        if probe:
            self._probe_pending = 2
            if self.state is State.HANDSHAKING:
                self._handshake_pending = True
            elif not self.send_buf.unsent:
                # nothing new to probe with: resend the oldest unacknowledged data
                oldest = self.recovery.oldest_unacked()
                if oldest is not None:
                    for offset, length, fin in oldest.stream:
                        self.send_buf.on_lost(offset, length, fin)
        if (self.config.keepalive_interval and self.is_established
                and now >= self._last_sent + self.config.keepalive_interval):
            self._control.append(wire.PingFrame())

    # ------------------------------------------------------------------ receiving
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram addressed to this connection. Never raises on bad input."""
        if self.state is State.CLOSED:
            return
        try:
            self._receive(data, addr, now)
        except wire.MalformedPacket as exc:
            self.dropped_packets += 1
            self.log.debug("dropped malformed packet from %s: %s", addr, exc)
        except ProtocolViolation as exc:
            self.log.warning("protocol violation by peer: %s", exc.reason)
            self._enter_closing(now, exc.code, exc.reason, exc)

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        first = data[0] if data else -1
        if first == wire.SHORT:
            dcid, pn, offset = wire.decode_short_header(data, len(self.local_cid))
            if self.state is State.HANDSHAKING and self.is_client:
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
        frames = wire.decode_frames(memoryview(data)[offset:])
        if self.state is State.DRAINING and not self._graceful_drain:
            return
        if self.state is State.CLOSING:
            self._close_resend_due = self._close_resends < _MAX_CLOSE_RESENDS
            return
        lowest = self._received.first()
        if self._received.contains(pn) or (lowest is not None and pn < lowest[0]):
            self.duplicate_packets += 1
            if any(_ack_eliciting(f) for f in frames):
                self._ack_pending = True  # our ACK may have been lost
            return
        if (self.recv_buf.segment_count >= MAX_SEGMENTS
                and any(isinstance(f, wire.PushFrame) for f in frames)):
            self.dropped_packets += 1  # not acknowledged: the peer will send it again
            return

        self.packets_received += 1
        self.bytes_received += len(data)
        self._last_received = now
        is_newest = pn > self._largest_received
        out_of_order = pn != self._largest_received + 1
        self._received.add(pn, pn + 1)
        self._received.drop_oldest(wire.MAX_ACK_RANGES)
        if is_newest:
            self._largest_received = pn
            self._largest_received_time = now
        self.on_packet_path(addr, len(data), is_newest,
                            all(isinstance(f, _PROBING) for f in frames), now)

        if first == wire.SHORT and self.state is State.HANDSHAKING:
            self._complete_handshake()  # server: the client used the CID it learnt from us

        eliciting = False
        for frame in frames:
            if _ack_eliciting(frame):
                eliciting = True
            self._on_frame(frame, addr, now)
            if self.state in (State.DRAINING, State.CLOSED, State.CLOSING):
                return

        if eliciting:
            self._ack_eliciting_unacked += 1
            if (out_of_order or self._ack_eliciting_unacked >= self.config.ack_every
                    or first != wire.SHORT or self.state is State.HANDSHAKING):
                self._ack_pending = True
                self._ack_deadline = None
            elif self._ack_deadline is None:
                self._ack_deadline = now + self.config.max_ack_delay
        self._check_streams_done(now)

    def on_packet_path(self, addr: Address, size: int, is_newest: bool, probing: bool,
                       now: float) -> None:
        """A packet from ``addr`` was accepted: a new address may start a passive migration."""
        may_migrate = is_newest and not probing and self.is_established
        cand = self.paths.on_packet(addr, size, may_migrate, now)
        if cand is not None:
            self._new_candidate(cand)
            self.log.info("packet from new address %s: validating it", addr)

    def _new_candidate(self, cand: Candidate) -> None:
        spare = self.cids.take_spare()  # a fresh CID: the new path cannot be linked to the old
        if spare is not None:
            cand.dcid_seq, cand.dcid = spare
        self._set_state(Trigger.PATH_CANDIDATE)

    def migrate(self, now: float, remote_addr: Address | None = None,
                local: object | None = None, timeout: float | None = None) -> None:
        """Active migration: validate a path to ``remote_addr`` (default: the current peer
        address) from the local socket ``local`` (an opaque token the socket layer uses to
        send probes; None: the current socket). The outcome arrives as a ``PathChanged`` or
        ``PathValidationFailed`` event; until then the old path carries the data."""
        if not self.is_established:
            raise MigrationError(f"cannot migrate in state {self.state.value}")
        addr = remote_addr if remote_addr is not None else self.remote_addr
        if addr == self.remote_addr and (local is None or local is self.paths.local):
            raise MigrationError("that is the path in use already")
        existing = self.paths.candidates.get((local, addr))
        cand = self.paths.start(addr, local, now, timeout)
        if cand is None:
            raise MigrationError("too many paths are being validated at once")
        if cand is not existing:
            self._new_candidate(cand)
        self.log.info("migrating to %s%s", addr, " from a new socket" if local else "")

    def _switch_path(self, cand: Candidate, now: float) -> None:
        """``cand`` answered our challenge: move the connection onto it."""
        old = self.paths.switch(cand)
        if cand.dcid_seq is not None and cand.dcid is not None:
            self.cids.switch_to(cand.dcid_seq)
            self.peer_cid = cand.dcid
        if old[0] != cand.addr[0]:
            # another network, not just another NAT port: its capacity and delay are unknown
            self.cc.on_path_change()
            self.rtt.reset()
            self.recovery.pto_count = 0
        if cand.reason == "passive":
            # the peer's old address is gone: what we sent there is lost, resend it here
            self._on_lost(self.recovery.take_all_in_flight(), now, congestion=False)
        self._ack_pending = True  # ACK on the new path at once
        self._discard_failed()
        if self.state is State.VALIDATING_PATH and not self.paths.candidates:
            self._set_state(Trigger.PATH_VALIDATED)
        elapsed = now - cand.started
        self._events.append(PathChanged(old, cand.addr, cand.reason, elapsed))
        self.log.info("path changed (%s): %s -> %s, validated in %.1f ms", cand.reason, old,
                      cand.addr, elapsed * 1000)

    def _discard_failed(self) -> None:
        for cand, reason in self.paths.take_failed():
            if cand.dcid_seq is not None:
                self.cids.discard(cand.dcid_seq)
            self._events.append(PathValidationFailed(cand.addr, reason))
            self.log.info("path to %s not validated: %s", cand.addr, reason)
        if self.state is State.VALIDATING_PATH and not self.paths.candidates:
            self._set_state(Trigger.PATH_FAILED)

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
            self._set_state(Trigger.HANDSHAKE_DONE)
            self.cids.handshake_peer_cid = self.peer_cid
            self.cids.issue_spares()
            if self.recv_buf.fin_offset is None:
                self.silence.on_data(self._last_received)  # a new connection expects data
            self._events.append(HandshakeCompleted())
            self.log.debug("handshake complete")

    def _on_frame(self, frame: wire.Frame, addr: Address, now: float) -> None:
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
            self.paths.on_challenge(addr, frame.data)
        elif isinstance(frame, wire.CloseFrame):
            self._on_close_frame(frame, now)
        else:
            self.on_other_frame(frame, addr, now)

    def on_other_frame(self, frame: wire.Frame, addr: Address, now: float) -> None:
        """Path responses and connection-ID frames (see :mod:`.paths`, :mod:`.cids`)."""
        if isinstance(frame, wire.PathResponseFrame):
            cand = self.paths.on_response(addr, frame.data, now)
            if cand is not None and self.is_established:
                self._switch_path(cand, now)
        elif isinstance(frame, wire.NewConnectionIdFrame):
            self.cids.on_new_cid(frame)
        elif isinstance(frame, wire.RetireConnectionIdFrame):
            self.cids.on_retire(frame)

    def _on_push(self, frame: wire.PushFrame) -> None:
        end = frame.offset + len(frame.data)
        if end > self._advertised_max_data:
            raise ProtocolViolation(FLOW_CONTROL_ERROR,
                                    f"peer sent to offset {end} beyond our credit "
                                    f"{self._advertised_max_data}")
        try:
            new = self.recv_buf.receive(frame.offset, frame.data, frame.fin)
            if self.recv_buf.delivered != self.recv_buf.fin_offset:
                self.silence.on_data(self._last_received)
            else:
                self.silence.disarm()  # the whole stream is here: silence is expected now
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
            for pkt in acked:
                for offset, length, fin in pkt.stream:
                    send_buf.on_acked(offset, length, fin)
            self.cc.on_packets_acked(acked, self.rtt, now, self.recovery.bytes_in_flight)
        if lost:
            self._on_lost(lost, now)

    def _on_lost(self, lost: list[SentPacket], now: float, congestion: bool = True) -> None:
        send_buf = self.send_buf
        for pkt in lost:
            for offset, length, fin in pkt.stream:
                send_buf.on_lost(offset, length, fin)
            for frame in pkt.control:
                if isinstance(frame, wire.MaxDataFrame):
                    self._send_max_data = True
                elif frame is _HANDSHAKE_MARK:
                    if self.state is State.HANDSHAKING:
                        self._handshake_pending = True
                elif isinstance(frame, wire.PingFrame):
                    pass  # a lost PING needs no repeat
                else:
                    self._control.append(frame)
        if congestion:
            self.cc.on_packets_lost(lost, self.rtt, now)

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
            if new is State.CLOSED:
                self.routing_changes.append((False, b""))

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
        if (self.is_established and self.send_buf.fin_requested and self.send_buf.all_acked
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
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        state = self.state
        if state is State.CLOSED:
            return []
        out: list[tuple[bytes, Address]] = []
        for addr, data in self.paths.take_responses():
            probe = self._build_probe(wire.PathResponseFrame(data), now, addr)
            if probe is not None:
                out.append((probe, addr))
        if self.is_established:
            if self._silence_ping:
                # padded: if our NAT rebound, the peer may answer with a full-size challenge
                self._silence_ping = False
                ping = self._build_probe(wire.PingFrame(), now, self.remote_addr)
                if ping is not None:
                    out.append((ping, self.remote_addr))
            out.extend(self.path_datagrams(now))
            if self.cids.frames:
                self._control.extend(self.cids.take_frames())
        if state is State.CLOSING:
            if self._close_resend_due and self._close_frame is not None:
                self._close_resend_due = False
                self._close_resends += 1
                out.append((self._build_packet([wire.encode_frame(self._close_frame)], now,
                                               None), self.remote_addr))
            return out
        if state is State.DRAINING:
            if self._graceful_drain and self._ack_pending:
                out.append((self._build_packet([self._encode_ack(now)], now, None),
                            self.remote_addr))
            return out
        if state is State.HANDSHAKING and not self.peer_cid:
            if self._handshake_pending:
                out.append((self._build_syn(now), self.remote_addr))
            return out
        if self._handshake_pending and not self.is_client:
            # anti-amplification: an unproven client address gets at most 3x what it sent
            if (state is not State.HANDSHAKING
                    or self.bytes_sent + self.config.max_datagram_size <= 3 * self.bytes_received):
                out.append((self._build_syn_ack(now), self.remote_addr))
            else:
                self._handshake_pending = False
        if state is State.HANDSHAKING:
            return out
        self._build_data_packets(now, out)
        return out

    def path_datagrams(self, now: float) -> list[tuple[bytes, Address]]:
        """PATH_CHALLENGEs due to candidate paths (those for another socket go to alt_out)."""
        out: list[tuple[bytes, Address]] = []
        for cand, data, size in self.paths.due_challenges(now, self.recovery.pto_interval()):
            probe = self._build_probe(wire.PathChallengeFrame(data), now, cand.addr,
                                      cand.dcid, size)
            if probe is None:
                continue
            if cand.local is not None and cand.local is not self.paths.local:
                self.paths.alt_out.append((cand.local, probe, cand.addr))
            else:
                out.append((probe, cand.addr))
        return out

    def _can_send_in_flight(self) -> bool:
        return self.recovery.bytes_in_flight + self.config.max_datagram_size <= self.cc.cwnd

    def _build_data_packets(self, now: float, out: list[tuple[bytes, Address]]) -> None:
        mtu = self.config.max_datagram_size
        header_size = 1 + len(self.peer_cid) + 8
        send_buf = self.send_buf
        addr = self.remote_addr
        while True:
            parts: list[bytes] = []
            size = header_size
            control: list[wire.Frame] = []
            stream: list[tuple[int, int, bool]] = []
            eliciting = retransmission = False
            if self._ack_pending or (self._ack_deadline is not None
                                     and now >= self._ack_deadline):
                ack = self._encode_ack(now)
                parts.append(ack)
                size += len(ack)
            probing = self._probe_pending > 0
            may_fly = probing or self._can_send_in_flight()
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
                    parts.append(wire.encode_push_header(offset, len(data), fin))
                    parts.append(data)
                    size += wire.push_header_size(offset, len(data)) + len(data)
                    stream.append((offset, len(data), fin))
                eliciting = bool(stream or control)
                if probing and not eliciting:
                    parts.append(_PING)  # a probe must elicit an ACK
                    eliciting = True
            if not parts:
                break
            if retransmission:
                self.retransmissions += 1
            datagram = self._finish_packet(parts, now, stream, control, eliciting)
            out.append((datagram, addr))
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
        self._ack_pending = False
        self._ack_deadline = None
        self._ack_eliciting_unacked = 0
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
        self.recovery.on_packet_sent(pkt)
        if eliciting:
            self.cc.on_packet_sent(size, now)

    def _build_packet(self, frames: list[bytes], now: float, control: list[wire.Frame] | None
                      ) -> bytes:
        return self._finish_packet(frames, now, [], control or [], control is not None)

    def _build_probe(self, frame: wire.Frame, now: float, addr: Address,
                     dcid: bytes | None = None, size: int | None = None) -> bytes | None:
        """A packet padded to full size: a path that cannot carry it is not validated.

        To an unvalidated address it is cut to the anti-amplification budget (None when not
        even a small probe fits)."""
        budget = self.paths.budget(addr)
        size = self.config.max_datagram_size if size is None else size
        if budget is not None:
            size = min(size, budget)
        dcid = self.peer_cid if dcid is None else dcid
        encoded = wire.encode_frame(frame)
        pad = size - (1 + len(dcid) + 8 + len(encoded))
        if pad < 0:
            return None
        pn = self._next_pn
        self._next_pn = pn + 1
        datagram = b"".join((_SHORT_TYPE, dcid, _PN.pack(pn), encoded, bytes(pad)))
        self._on_sent(pn, datagram, now, False, [], [])
        self.paths.on_sent(addr, len(datagram))
        return datagram

    def _handshake_frames(self, room: int, now: float
                          ) -> tuple[list[bytes], list[tuple[int, int, bool]]]:
        self._advertised_max_data = self.local_max_data
        parts = [wire.encode_frame(wire.MaxDataFrame(self.local_max_data))]
        stream: list[tuple[int, int, bool]] = []
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


class _HandshakeMark(wire.PingFrame):
    """Marks a sent packet as carrying SYN/SYN-ACK, so its loss re-arms the handshake."""


_HANDSHAKE_MARK = _HandshakeMark()


#: Frames that only probe a path: a packet of nothing else does not move the connection.
_PROBING = (wire.PathChallengeFrame, wire.PathResponseFrame, wire.PaddingFrame,
            wire.NewConnectionIdFrame)


def _ack_eliciting(frame: wire.Frame) -> bool:
    return not isinstance(frame, (wire.AckFrame, wire.PaddingFrame, wire.CloseFrame))
