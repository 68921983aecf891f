"""The connection: one reliable, ordered byte stream between two endpoints.

Sans-I/O: nothing here touches a socket, a clock or an event loop. The owner (the socket
layer, or the simulator in tests) drives a :class:`Connection` through this contract:

* ``receive_datagram(data, addr, now, socket_id)`` for every datagram routed to it;
* ``datagrams_to_send(now, socket_id)`` after anything happened, sending what it returns;
* ``get_timer()`` for when to call ``handle_timer(now)`` next (re-read it after every call);
* ``next_event()`` until None, after anything happened;
* the application side: ``send``, ``send_eof``, ``read``, ``close``, ``abort``, ``migrate``.

``now`` is the owner's monotonic clock in seconds; ``socket_id`` is the owner's integer id
of the local socket a datagram arrived on or must leave from.

:class:`Connection` is the coordinator; each concern lives in the file named for it:
states and transitions in :mod:`.states`; the handshake in :mod:`.handshake`; received
packets and ACKs in :mod:`.ack_state`; packet building and the packet-number allocator in
:mod:`.packet_builder`; loss recovery and the RTO in :mod:`.recovery`; congestion control in
:mod:`.congestion`; pacing in :mod:`.pacing`; flow control in :mod:`.flow_control`; stream
buffers in :mod:`.buffers`; the timer table in :mod:`.timers`; migration in
:mod:`.migration` over :mod:`.paths` and :mod:`.cids`; counters in :mod:`.stats`; the codec
in :mod:`.wire`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Final

from ..config import Config
from ..crypto import handshake as crypto_handshake
from ..crypto.packet_protection import PacketProtection
from ..errors import (
    ConnectionAborted,
    ConnectionClosed,
    ConnectionReset,
    ConnectTimeout,
    HandshakeFailed,
    ProtocolViolation,
    RoamlinkError,
)
from . import delivery, migration, wire
from .ack_state import MAX_PACKET_NUMBER_JUMP, AckState
from .buffers import RecvBuffer, SendBuffer
from .cids import ConnectionIds
from .congestion import create_controller
from .delivery_rate import DeliveryRateEstimator
from .events import (
    Address,
    ConnectionStats,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
)
from .flow_control import FlowControl
from .handshake import (
    Handshake,
    LongHeaderVerdict,
    build_client_hello,
    build_server_hello,
    make_client_handshake,
    on_unreachable,
    receive_long,
    resolve_handshake_packets,
)
from .pacing import Pacer
from .packet_builder import PacketBuilder
from .paths import Candidate, PathManager
from .recovery import Recovery
from .rtt import RttEstimator
from .states import State, Trigger, next_state
from .stats import Counters, snapshot
from .timers import ENDING_TIMERS, LIVE_TIMERS, connection_timers

logger = logging.getLogger("roamlink.connection")

CloseCode = wire.CloseCode

#: Out-of-order stream segments held at most (a hostile peer cannot make us hoard tiny ones).
MAX_SEGMENTS: Final = 8192
_MAX_CLOSE_RESENDS: Final = 8

RandomBytes = Callable[[int], bytes]

# State members as module globals: on Python 3.11 ``State.X`` costs ~150 ns (the enum
# metaclass's __getattr__ hook slows every class attribute lookup), a global ~15 ns, and the
# per-packet paths compare states a dozen times per packet.
_HANDSHAKING: Final = State.HANDSHAKING
_ESTABLISHED: Final = State.ESTABLISHED
_VALIDATING_PATH: Final = State.VALIDATING_PATH
_CLOSING: Final = State.CLOSING
_DRAINING: Final = State.DRAINING
_CLOSED: Final = State.CLOSED
_DROP: Final = LongHeaderVerdict.DROP
_SERVER_HELLO: Final = LongHeaderVerdict.SERVER_HELLO
_CLIENT_HELLO: Final = LongHeaderVerdict.CLIENT_HELLO
_REJECT: Final = LongHeaderVerdict.REJECT
_KEY_PHASE: Final = wire.KEY_PHASE


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
        socket_id: int = 0,
        cid_taken: Callable[[bytes], bool] | None = None,
        client_handshake: crypto_handshake.ClientHandshake | None = None,
        opened_syn: crypto_handshake.OpenedSyn | None = None,
        server_crypto: crypto_handshake.ServerCrypto | None = None,
        cid_source: RandomBytes | None = None,
    ) -> None:
        """``client_handshake``: the client's keys (its static key, the pinned server key);
        without one a secure client makes a fresh static key and learns the server's key on
        first use. ``opened_syn`` and ``server_crypto``: the server's side, from the socket
        layer that opened the SYN (see ``io/dispatcher.py``)."""
        self.config = config
        # Config's fields read on every send pass and timer re-arm, as plain attributes: Config
        # is an interpreted (frozen) dataclass, each of its fields a lookup by name from here
        self.idle_timeout = float(config.idle_timeout)
        keepalive = config.keepalive_interval
        self.keepalive_interval: float | None = None if keepalive is None else float(keepalive)
        self.key_update_packets = config.key_update_packets
        self.send_buffer_limit = config.send_buffer_size
        self.is_client = is_client
        self.local_cid = local_cid
        self.peer_cid = peer_cid
        plaintext = config.insecure_plaintext
        if is_client and not plaintext and client_handshake is None:
            client_handshake = make_client_handshake(config.psk, None, None)
        self.handshake = Handshake(is_client, config.versions,
                                   version if version is not None else config.versions[0],
                                   plaintext=plaintext,
                                   client=None if plaintext else client_handshake,
                                   opened=opened_syn, server_crypto=server_crypto)
        self.state = State.HANDSHAKING
        self.paths = PathManager(remote_addr, socket_id, random_bytes=random_bytes,
                                 max_candidates=config.max_candidate_paths,
                                 validation_timeout=config.path_validation_timeout,
                                 datagram_size=config.max_datagram_size)
        self.cids = ConnectionIds(local_cid, peer_cid, spare=config.spare_cids,
                                  random_bytes=cid_source or random_bytes, is_taken=cid_taken,
                                  reset_token=(server_crypto.reset_token
                                               if server_crypto is not None else None))
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
        self.rate_estimator = DeliveryRateEstimator()
        self.send_buf = SendBuffer()
        self.recv_buf = RecvBuffer()
        self.flow = FlowControl(config.receive_window)
        self.acks = AckState(config.ack_every, config.max_ack_delay)
        self.counters = Counters()
        self.packets = PacketBuilder(config, send_buf=self.send_buf, recovery=self.recovery,
                                     cc=self.cc, rtt=self.rtt, pacer=self.pacer,
                                     rate_estimator=self.rate_estimator,
                                     acks=self.acks, flow=self.flow, counters=self.counters,
                                     now=now)

        # lifecycle
        self._events: deque[Event] = deque()
        self.error: RoamlinkError | None = None
        self._created = now
        #: how long an unfinished handshake lives; a listener under SYN pressure shortens it
        #: for new half-open handshakes (see ``limit_half_open``)
        self.handshake_lifetime = config.connect_timeout
        #: when an unfinished handshake is given up (a retransmitted SYN renews it)
        self.handshake_deadline = now + self.handshake_lifetime
        #: the handshake completed once (a listener remembers such a client's SYN)
        self.was_established = False
        #: ICMP port-unreachable reports while handshaking (see ``on_unreachable``)
        self.refusals = 0
        self._last_received = now
        #: the newest packet number that refreshed _last_received from an unvalidated path
        self._alive_pn = -1
        self._gap_probe_sent = 0.0
        self._gap_probes = 0  # receiver probes since data last arrived (backoff)
        #: a receiver probe wants a PING padded to the full datagram size (timers._gap_probe)
        self.padded_ping_due = False
        #: the next receiver probe's interval is scaled by this (0.75-1.25, drawn per probe):
        #: probes at exact multiples of the RTO could stay in step with a NAT that re-maps
        #: at a fixed period, each leaving just before its mapping ends
        self.gap_probe_jitter = 1.0
        self.random_bytes = random_bytes
        self._keepalive_queued = 0.0  # when the keepalive timer last queued a PING
        self._drain_deadline: float | None = None
        self._close_deadline: float | None = None
        self._close_frame: wire.CloseFrame | None = None
        self._close_resends = 0
        self._close_resend_due = False
        self._app_closed = False
        self._graceful_drain = False
        #: when our sending key is next replaced (Noise REKEY; see crypto/packet_protection.py)
        self._key_update_at = now + config.key_update_interval
        self.timers = connection_timers(self)

        if is_client and early_data:
            self.send_buf.write(early_data)
        if not is_client:
            self.cids.issue()  # announced in the SYN-ACK
            self.cid_version += 1
        self.log.debug("new %s connection to %s", "client" if is_client else "server",
                       remote_addr)

    # ------------------------------------------------------------------ public properties
    @property
    def version(self) -> int:
        """The protocol version in use (or being offered, during the handshake)."""
        return self.handshake.version

    @property
    def remote_addr(self) -> Address:
        return self.paths.remote_addr

    @property
    def peer_key(self) -> bytes | None:
        """The peer's static public key (raw 32 bytes) once the handshake proved it: the
        server's for a client (pin it), the client's for a server. None in plaintext."""
        if self.handshake.plaintext or not self.is_established and self.is_client:
            return None
        return self.handshake.peer_key

    @property
    def protection(self) -> PacketProtection | None:
        """The traffic keys (None before the handshake made them, or in plaintext mode)."""
        return self.packets.protection

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
        """Queue ``data`` on the stream; it leaves with ``datagrams_to_send``.

        Never blocks (the owner bounds what it queues, see ``send_buffered``); raises the
        connection's error, or :class:`ConnectionClosed`, once it can no longer send.
        """
        if self.is_terminated or self._app_closed or self.send_buf.fin_requested:
            raise self._closed_error()
        self.send_buf.write(data)

    def send_eof(self) -> None:
        """End our direction of the stream (a FIN after the queued data)."""
        if self.is_terminated:
            return
        self.send_buf.write_eof()

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` (all: -1) bytes delivered in order; b"" when none is ready (see
        ``readable`` and ``at_eof``). Reading releases flow-control credit: when
        ``credit_update_due``, the owner should call ``datagrams_to_send``."""
        data = self.recv_buf.read(n)
        if data:
            self.flow.on_consumed(self.recv_buf.consumed)
        return data

    @property
    def credit_update_due(self) -> bool:
        """Reading released enough credit that a MAX_DATA should go out (serve the
        connection); otherwise a read needs no send pass."""
        return self.flow.send_max_data

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
        self.flow.on_consumed(self.recv_buf.consumed)
        self._check_streams_done(now)

    def abort(self, now: float, code: int = CloseCode.APPLICATION_ERROR, reason: str = "") -> None:
        """Close at once with an error code (sent to the peer in CLOSE)."""
        if self.state in (_CLOSING, _DRAINING, _CLOSED):
            return
        self._enter_closing(now, code, reason, ConnectionAborted(code, reason))

    def migrate(self, now: float, remote: Address | None = None, socket_id: int | None = None,
                timeout: float | None = None) -> Candidate:
        """Active migration: validate (socket_id, remote) and move there when it answers.

        The probes use a fresh peer CID, so an observer cannot link the two paths. Raises
        :class:`MigrationError` when no validation can start. The outcome arrives as a
        ``PathChanged`` or ``PathValidationFailed`` event.
        """
        return migration.migrate(self, now, remote, socket_id, timeout)

    def cancel_migration(self, cand: Candidate) -> None:
        """Give up an active migration still being validated (e.g. ``migrate()`` was
        cancelled); the connection stays on its path. Does nothing once it was validated."""
        migration.cancel(self, cand)

    def on_unreachable(self, now: float) -> None:
        """The socket layer reports ICMP port unreachable from our peer's address (see
        :func:`roamlink.core.handshake.on_unreachable`: it fails only a handshake)."""
        on_unreachable(self, now)

    def limit_half_open(self, lifetime: float, now: float) -> None:
        """A listener under SYN pressure keeps this half-open handshake only ``lifetime``
        seconds (each retransmitted SYN renews it), instead of ``connect_timeout``: forged
        SYNs then hold its memory briefly, while a genuine client keeps it alive."""
        self.handshake_lifetime = lifetime
        self.handshake_deadline = min(self.handshake_deadline, now + lifetime)

    def routed_cids(self) -> list[bytes]:
        """Every CID of ours the peer may use: the socket layer routes them all here."""
        return list(self.cids.local.values())

    def stats(self) -> ConnectionStats:
        return snapshot(self)

    # ------------------------------------------------------------------ events and timers
    def next_event(self) -> Event | None:
        """The next event for the owner (handshake done, path changed, terminated...), or
        None. Call until None after every ``receive_datagram``, ``handle_timer`` or
        application call."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next (None: no timer armed). Changes after
        every call into the connection; the owner re-reads it each time."""
        state = self.state
        if state is _CLOSED:
            return None
        if state is _CLOSING or state is _DRAINING:
            return self.timers.earliest(ENDING_TIMERS)
        return self.timers.earliest(LIVE_TIMERS)

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is at or before ``now`` (see :mod:`.timers`);
        then the owner calls ``datagrams_to_send`` and drains ``next_event``."""
        state = self.state
        if state is _CLOSED:
            return
        if state is _CLOSING or state is _DRAINING:
            self.timers.fire(ENDING_TIMERS, now)
        else:
            self.timers.fire(LIVE_TIMERS, now)

    # ------------------------------------------------------------------ receiving
    def receive_datagram(self, data: bytes, addr: Address, now: float,
                         socket_id: int | None = None) -> None:
        """Process one datagram from ``addr`` that arrived on socket ``socket_id`` (default:
        the one in use); then the owner calls ``datagrams_to_send`` and ``next_event``.

        Never raises on bad input: malformed packets are dropped and counted, and a peer
        that breaks the protocol gets a CLOSE.
        """
        if self.state is _CLOSED:
            return
        try:
            self._receive(data, addr, now,
                          self.paths.socket_id if socket_id is None else socket_id)
        # Distinct names per handler: mypyc types an ``except ... as`` variable once per
        # function, so a shared name would reject the second exception type at run time.
        except wire.MalformedPacket as malformed:
            self.counters.dropped_packets += 1
            self.log.debug("dropped malformed packet from %s: %s", addr, malformed)
        except ProtocolViolation as violation:
            self.log.warning("protocol violation by peer: %s", violation.reason)
            self._enter_closing(now, violation.code, violation.reason, violation)

    def _receive(self, data: bytes, addr: Address, now: float, socket_id: int) -> None:
        first = data[0] if data else 0
        if first & 0xC0 == 0x40:  # short header (fixed bit set)
            cid_length = len(self.local_cid)
            pn = wire.short_header_pn(data, cid_length)
            offset = 1 + cid_length + 8
            if self.state is _HANDSHAKING and self.is_client:
                raise wire.MalformedPacket("short packet before SYN-ACK")
            protection = self.packets.protection
            if protection is not None:
                # authenticate before anything else: a packet that fails is never parsed,
                # so it cannot deliver data, move the path, close or reset the connection
                payload = protection.open(data, offset, pn, 1 if first & _KEY_PHASE else 0, now)
                if payload is None:
                    self.counters.auth_failures += 1
                    return
                start = 0
            elif self.handshake.plaintext:
                payload, start = data, offset
            else:
                self.counters.auth_failures += 1  # no keys yet: it cannot be genuine
                return
        elif first & wire.LONG_FORM:
            receive_long(self, data, addr, now, socket_id)
            return
        else:
            raise wire.MalformedPacket("unknown packet type")

        acks = self.acks
        if pn > acks.largest + MAX_PACKET_NUMBER_JUMP:
            raise wire.MalformedPacket("packet number far beyond any in flight")
        frames = wire.decode_frames(payload, start)
        if self.state is _DRAINING and not self._graceful_drain:
            return
        if self.state is _CLOSING:
            if any(type(f) is wire.CloseFrame for f in frames):
                # both ends closed at once: the peer's CLOSE tells us ours is known or moot,
                # so stop answering and just drain (RFC 9000 section 10.2.2)
                self._set_state(Trigger.PEER_CLOSE)
                return
            self._close_resend_due = self._close_resends < _MAX_CLOSE_RESENDS
            return
        counters = self.counters
        largest = acks.largest
        if pn <= largest and acks.is_duplicate(pn):
            counters.duplicate_packets += 1
            if any(_ack_eliciting(f) for f in frames):
                acks.pending = True  # our ACK may have been lost
            return
        if (self.recv_buf.segment_count + len(frames) > MAX_SEGMENTS
                and self.recv_buf.segment_count + sum(
                    type(f) is wire.PushFrame for f in frames) > MAX_SEGMENTS):
            counters.dropped_packets += 1  # not acknowledged: the peer will send it again
            return

        counters.packets_received += 1
        counters.bytes_received += len(data)
        is_newest = pn > largest and pn > acks.path_pn_floor
        out_of_order = pn != largest + 1
        on_path = self.paths.is_current(socket_id, addr) or self.state is _HANDSHAKING
        if on_path:
            self._last_received = now
            acks.record(pn, now, is_newest)
        else:
            # an unvalidated path: its frames are processed (they are idempotent), but its
            # packet number is neither recorded nor acknowledged, so a forged "newest" packet
            # cannot poison our ACKs or hide a genuine packet as a duplicate later
            counters.unvalidated_packets += 1
            if pn > self._alive_pn and is_newest and self.packets.protection is not None:
                # it authenticated (only the peer holds the keys) and is numbered past every
                # packet before it (no replay): the peer is alive, even while a NAT moves it
                # faster than a path validates, so the idle timer must not expire under it
                self._alive_pn = pn
                self._last_received = now
            migration.on_packet_from_other_path(self, socket_id, addr, len(data), pn,
                                                is_newest, now)

        if self.state is _HANDSHAKING:
            self._complete_handshake(now)  # server: the client used the CID it learnt from us

        eliciting = False
        for frame in frames:
            # the common case, without the generic dispatch (``isinstance`` of a compiled
            # class is a type check; ``wire.PushFrame`` as a value is a module lookup)
            if isinstance(frame, wire.PushFrame):
                eliciting = True
                acks.data_unacked = True
                if on_path:
                    # data flows again: a later silence gets its receiver probes afresh. Only
                    # data: if any packet did this, the two sides' probes (ACKs) would keep
                    # resetting each other's backoff, and an idle connection would exchange a
                    # packet every two PTOs forever instead of a keepalive every 15 s
                    self._gap_probes = 0
                self._on_push(frame)
                continue
            if _ack_eliciting(frame):
                eliciting = True
            self._on_frame(frame, socket_id, addr, now)
            if self.state in (_CLOSED, _CLOSING) or (
                    self.state is _DRAINING and not self._graceful_drain):
                return

        if eliciting and on_path:
            acks.on_ack_eliciting(now, out_of_order
                                  or self.state is _HANDSHAKING or self.state is _DRAINING)
        self._check_streams_done(now)
        if self.state is _DRAINING:
            # no ACK timer runs while draining: the peer's FIN must be acknowledged now, or
            # the peer retransmits it until its idle timeout
            acks.send_delayed_now()

    def on_stateless_reset(self, now: float) -> None:
        """The peer answered with our stateless-reset token: it lost the connection."""
        if self.state is _CLOSED:
            return
        self.log.info("stateless reset from the peer: it no longer knows this connection")
        self._terminate(ConnectionReset(wire.CloseCode.STATELESS_RESET,
                                        "stateless reset: the peer lost this connection"),
                        Trigger.TIMEOUT)

    def peer_reset_tokens(self) -> list[bytes]:
        """The peer's stateless-reset tokens for the CIDs we may send to."""
        if self.packets.protection is None:
            return []
        return self.cids.peer_reset_tokens()

    def _complete_handshake(self, now: float) -> None:
        if self.state is _HANDSHAKING:
            if not self.is_client:
                # the client used our CID: our SYN-ACK (and what it carried) arrived
                resolve_handshake_packets(self, True, now)
            protection = self.packets.protection
            if protection is not None:
                protection.retention = max(1.0, 3.0 * self.recovery.pto_interval())
            self._key_update_at = now + self.config.key_update_interval
            migration.issue_cids(self)
            self.was_established = True
            self._set_state(Trigger.HANDSHAKE_DONE)
            self._events.append(HandshakeCompleted())
            self.log.debug("handshake complete")

    def _on_frame(self, frame: wire.Frame, socket_id: int, addr: Address, now: float) -> None:
        if isinstance(frame, wire.PushFrame):
            self._on_push(frame)
        elif isinstance(frame, wire.AckFrame):
            delivery.on_ack(self, frame, now)
        elif isinstance(frame, wire.MaxDataFrame):
            self.flow.on_max_data(frame.maximum)
        elif isinstance(frame, wire.DataBlockedFrame):
            self.flow.send_max_data = True  # the peer is stuck: repeat our credit now
        elif isinstance(frame, wire.PathChallengeFrame):
            self.paths.on_challenge(socket_id, addr, frame.data)
        elif isinstance(frame, wire.PathResponseFrame):
            result = self.paths.on_response(socket_id, addr, frame.data, now)
            if result is not None and self.is_established:
                migration.on_path_validated(self, result, now)
        elif isinstance(frame, wire.NewConnectionIdFrame):
            migration.on_new_connection_id(self, frame)
        elif isinstance(frame, wire.RetireConnectionIdFrame):
            migration.on_retire_connection_id(self, frame)
        elif isinstance(frame, wire.CloseFrame):
            self._on_close_frame(frame, now)

    def _on_push(self, frame: wire.PushFrame) -> None:
        self.flow.check_received(frame.offset + len(frame.data))
        try:
            new = self.recv_buf.receive(frame.offset, frame.data, frame.fin)
        except ValueError as exc:
            raise ProtocolViolation(CloseCode.PROTOCOL_VIOLATION, str(exc)) from None
        if new and self._app_closed:
            self.recv_buf.read()  # nobody will read it: discard, keep credit flowing
            self.flow.on_consumed(self.recv_buf.consumed)

    def _on_close_frame(self, frame: wire.CloseFrame, now: float) -> None:
        if frame.code == CloseCode.NO_ERROR:
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
        if self.state is _HANDSHAKING and not self.peer_cid:
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
    def datagrams_to_send(self, now: float, socket_id: int | None = None
                          ) -> list[tuple[bytes, Address]]:
        """Datagrams to send now from socket ``socket_id`` (default: the one in use), each
        with its destination. Call after every ``receive_datagram``, ``handle_timer`` or
        application call, and for every socket in ``paths.sockets_with_work()``.

        For a socket that is not the one in use, only path-validation probes come out.
        """
        state = self.state
        if state is _CLOSED:
            return []
        out: list[tuple[bytes, Address]] = []
        paths = self.paths
        if socket_id is None:
            socket_id = paths.socket_id
        if paths.has_work():
            migration.path_probes(self, socket_id, now, out)
        if socket_id != paths.socket_id:
            return out
        packets = self.packets
        if state is _CLOSING:
            if (self._close_resend_due and self._close_frame is not None
                    and (packets.protection is not None or self.handshake.plaintext)):
                self._close_resend_due = False
                self._close_resends += 1
                out.append((packets.build_close(self._close_frame, now, self.peer_cid),
                            self.remote_addr))
            return out
        if state is _DRAINING:
            if self._graceful_drain and self.acks.pending:
                out.append((packets.build_ack(now, self.peer_cid), self.remote_addr))
            return out
        handshake = self.handshake
        if state is _HANDSHAKING and not self.peer_cid:
            if handshake.pending:
                handshake.pending = False
                try:
                    out.append((build_client_hello(self, now), self.remote_addr))
                except HandshakeFailed as err:
                    self._terminate(err, Trigger.TIMEOUT)
            return out
        if handshake.pending and not self.is_client:
            handshake.pending = False
            # anti-amplification: an unproven client address gets at most 3x what it sent
            counters = self.counters
            if (state is not _HANDSHAKING or counters.bytes_sent + self.config.max_datagram_size
                    <= 3 * counters.bytes_received):
                out.append((build_server_hello(self, now), self.remote_addr))
        if state is _HANDSHAKING:
            return out
        protection = packets.protection
        if protection is not None and (now >= self._key_update_at or protection.sent_in_phase
                                       >= self.key_update_packets):
            self._update_keys(now, protection)
        if self.padded_ping_due:
            self.padded_ping_due = False
            out.append((packets.build_padded_ping(now, self.peer_cid, paths.datagram_size),
                        self.remote_addr))
        packets.build_data_packets(now, self.peer_cid, self.remote_addr, out)
        return out

    def _update_keys(self, now: float, protection: PacketProtection) -> None:
        """Key update: the next sending key of the chain, once the peer acknowledged a packet
        under the current one (so it holds the current key and can follow to the next)."""
        if self.recovery.largest_acked < protection.send_first_pn:
            return  # asked again at the next send; the peer has not caught up yet
        protection.retention = max(1.0, 3.0 * self.recovery.pto_interval())
        protection.update_send_key(self.packets.next_pn)
        self._key_update_at = now + self.config.key_update_interval
        self.log.debug("key update: sending with key generation %d",
                       protection.send_generation)


def _ack_eliciting(frame: wire.Frame) -> bool:
    return not isinstance(frame, (wire.AckFrame, wire.PaddingFrame, wire.CloseFrame))
