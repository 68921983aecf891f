"""Datagram routing for one socket, without the socket: CID -> connection, address -> CID.

The seed's "socket actor" keeps a main map ``CID -> connection`` and an auxiliary map
``peer address -> CID``. This class is that routing logic, sans-I/O, so the asyncio socket
layer (:mod:`.endpoint`) and the simulated network share it.

* Short-header packets are routed by the destination CID alone: the peer's address may have
  changed (that is what migration is about).
* A SYN carries no CID of ours yet, so it is routed by ``(peer address, peer's CID)``: a
  retransmitted SYN finds the half-open connection instead of opening a second one.
* A SYN with a version we do not speak is answered with VERSION_NEGOTIATION (stateless); so is
  a SYN of version 1, in version 1's layout.
* A listener checks a new SYN's ``mac1`` and opens its Noise message *before* a connection
  exists (:mod:`roamlink.crypto.handshake`); what it cannot take is answered with a small,
  rate-limited REJECT or dropped, and counted.
* A short-header packet for a CID a listener does not know gets a stateless reset (smaller
  than the packet, rate-limited); a client that receives a datagram ending in a reset token of
  one of its connections fails that connection at once.
* Anything else that matches no connection is dropped and counted; nothing raises.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..config import Config
from ..core import wire
from ..core.connection import Connection
from ..core.events import Address
from ..core.states import State
from ..crypto import handshake as crypto_handshake
from ..crypto.handshake import HandshakeError, OpenedSyn, ServerCrypto
from ..crypto.noise import private_key
from ..crypto.replay import ReplayVerdict
from ..crypto.reset import ResetRateLimiter, build_stateless_reset, matches_reset
from .retry_token import RetryTokens
from .steering import CidLayout

logger = logging.getLogger("roamlink.dispatcher")

#: Stateless answers (RETRY, REJECT, version negotiation) queued per batch of datagrams.
_MAX_STATELESS: Final = 256
#: Handshake keys of ended connections remembered (bounded memory; oldest forgotten first).
ENDED_KEYS: Final = 65536


@dataclass
class DispatcherStats:
    datagrams_received: int = 0
    dropped_malformed: int = 0
    dropped_unknown_cid: int = 0
    dropped_backlog_full: int = 0
    dropped_not_listening: int = 0
    dropped_late_handshake: int = 0
    version_negotiations_sent: int = 0
    connections_accepted: int = 0
    #: SYNs refused before any connection existed (mac1, authentication, mode, client key,
    #: max_connections)
    handshakes_rejected: int = 0
    #: SYNs whose ephemeral key was seen before (0-RTT replay): dropped
    replays_dropped: int = 0
    stateless_resets_sent: int = 0
    stateless_resets_received: int = 0
    handed_over: int = 0  # short headers passed to the worker their CID names
    #: SYNs dropped because ``Config.max_half_open`` handshakes were already pending
    dropped_half_open_full: int = 0
    #: SYNs dropped because their source IP had ``Config.max_half_open_per_source`` pending
    dropped_per_source: int = 0
    #: SYNs refused because ``Config.max_connections`` connections were live
    refused_max_connections: int = 0
    #: half-open handshakes that expired (``Config.half_open_timeout``) or failed
    half_open_expired: int = 0
    #: SYNs answered with RETRY (no state kept) because ``retry_threshold`` was reached
    retries_sent: int = 0
    #: repeated SYNs whose token checked out (the client's address is proven)
    retry_tokens_valid: int = 0
    #: SYNs with a token that was forged, expired, or for another address or handshake
    retry_tokens_invalid: int = 0


class Dispatcher:
    """Routes datagrams of one socket to the connections that live on it."""

    def __init__(self, config: Config, *, accept_new: bool = False,
                 random_bytes: Callable[[int], bytes] = os.urandom, socket_id: int = 1,
                 server_crypto: ServerCrypto | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``server_crypto``: a listener's key, mac1 key, replay cache and reset key; a
        listening dispatcher without one gets an ephemeral key (clients learn it on first
        use)."""
        self.config = config
        self._cid_length = config.cid_length  # (the config is interpreted: a lookup per read)
        if server_crypto is None and accept_new and not config.insecure_plaintext:
            server_crypto = ServerCrypto(private_key(os.urandom(32)), psk=config.psk,
                                         replay_window=config.zero_rtt_window)
        self.server_crypto = server_crypto
        self.wall_clock = wall_clock
        #: bounds REJECT and stateless-reset answers (anyone can trigger them)
        self.answer_limiter = ResetRateLimiter()
        self.accept_new = accept_new
        self.random_bytes = random_bytes
        #: makes every CID this socket issues (handshake and NEW_CONNECTION_ID); a worker of
        #: a multi-process server uses one that names its worker (see io/steering.py)
        self.cid_source: Callable[[int], bytes] = random_bytes
        if config.server_id is not None:  # a load balancer routes by our server id
            self.cid_source = CidLayout.from_config(config).generator(0, random_bytes)
        #: offered each datagram that no connection here takes, before it is dropped or opens
        #: a connection (a short header with a CID not ours, a new SYN): a server worker hands
        #: it to the worker that owns it and returns True (see roamlink.api.workers)
        self.foreign_cid: Callable[[bytes, Address], bool] | None = None
        self.connections: dict[bytes, Connection] = {}  # main map: CID -> connection
        #: the last short header's route (CID, connection), while ``connections`` is unchanged:
        #: the next datagram is usually for the same CID, and comparing two short byte strings
        #: costs a tenth of hashing a fresh one and looking it up
        self._route_cid = b""
        self._route_conn: Connection | None = None
        self.addr_map: dict[tuple[Address, bytes], bytes] = {}  # (addr, peer CID) -> our CID
        self.accept_queue: deque[Connection] = deque()
        self.stateless_out: list[tuple[bytes, Address]] = []
        self.stats = DispatcherStats()
        self._owned_cids: dict[Connection, set[bytes]] = {}
        self._synced: dict[Connection, int] = {}  # the connection's cid_version last applied
        #: the connection last found in sync, and its cid_version then: the next datagram is
        #: usually for it again, and its routes have not changed (no lookup in ``_synced``)
        self._in_sync: Connection | None = None
        self._in_sync_version = -1
        #: the id of "our socket" where a caller names none (a path is a socket id + a peer
        #: address; the ids are handed out by the owner, see driver.ConnectionDriver)
        self.socket_id = socket_id
        #: connections handed to the owner but not yet accepted by the application
        self.held = 0
        #: handshake keys of ended connections: a late or replayed SYN must not reopen them
        self._ended: OrderedDict[tuple[Address, bytes], None] = OrderedDict()
        self.ended_keys_limit = ENDED_KEYS
        #: server connections still handshaking, by source IP: they have their own bounds
        #: (``Config.max_half_open`` in all, ``max_half_open_per_source`` per IP) and do not
        #: count against the application's accept backlog
        self.half_open: dict[Connection, str] = {}
        self._retry_tokens: RetryTokens | None = None
        self._under_pressure = False  # half-open handshakes above half_open_pressure()
        self._half_open_by_host: dict[str, int] = {}
        #: the same, by the client's CID (a client re-mapped while its handshake is pending)
        self._half_open_by_scid: dict[bytes, Connection] = {}
        self._half_open_scid: dict[Connection, bytes] = {}

    # ------------------------------------------------------------------ connections
    def new_cid(self) -> bytes:
        while True:
            cid = self.cid_source(self.config.cid_length)
            if cid not in self.connections:
                return cid

    def connect(self, remote_addr: Address, now: float, *, early_data: bytes = b"",
                config: Config | None = None, socket_id: int | None = None,
                client_handshake: crypto_handshake.ClientHandshake | None = None
                ) -> Connection:
        conn = Connection(config or self.config, is_client=True, local_cid=self.new_cid(),
                          remote_addr=remote_addr, now=now, random_bytes=self.random_bytes,
                          early_data=early_data,
                          socket_id=self.socket_id if socket_id is None else socket_id,
                          cid_taken=self.connections.__contains__,
                          client_handshake=client_handshake, cid_source=self.cid_source)
        self._track(conn)
        return conn

    def _track(self, conn: Connection) -> None:
        self._owned_cids[conn] = set()
        self._synced[conn] = -1
        if self._in_sync is conn:
            self._in_sync = None
        self.sync_routes(conn)

    def adopt(self, conn: Connection) -> None:
        """Route ``conn``'s CIDs here too (a connection migrating to this socket)."""
        if conn not in self._owned_cids:
            self._track(conn)

    def sync_routes(self, conn: Connection) -> None:
        """Route every live CID of ``conn`` here; apply its address moves (UpdateAddr)."""
        if conn.addr_changes:
            for old, new in conn.addr_changes:
                self.update_addr(conn, old, new)
            conn.addr_changes.clear()
        if self.half_open and conn in self.half_open and conn.state is not State.HANDSHAKING:
            self._half_open_done(conn)
        if conn.is_closed:
            self.forget(conn)
            return
        version = conn.cid_version
        if conn is self._in_sync and version == self._in_sync_version:
            return
        synced = self._synced.get(conn)
        if synced is None:
            return  # (not routed here: see ``adopt``)
        if synced == version:
            self._in_sync = conn
            self._in_sync_version = version
            return
        self._route_conn = None  # (the routes change)
        owned = self._owned_cids[conn]
        wanted = set(conn.routed_cids())
        for cid in owned - wanted:
            if self.connections.get(cid) is conn:
                del self.connections[cid]
        for cid in wanted - owned:
            self.connections[cid] = conn
        self._owned_cids[conn] = wanted
        self._synced[conn] = conn.cid_version

    def _half_open_done(self, conn: Connection) -> None:
        """``conn`` left the handshake (established, failed or expired)."""
        host = self.half_open.pop(conn)
        scid = self._half_open_scid.pop(conn, b"")
        if self._half_open_by_scid.get(scid) is conn:
            del self._half_open_by_scid[scid]
        left = self._half_open_by_host[host] - 1
        if left:
            self._half_open_by_host[host] = left
        else:
            del self._half_open_by_host[host]
        if not conn.is_established:
            self.stats.half_open_expired += 1

    def half_open_pressure(self) -> int:
        """Half-open handshakes beyond which they live only ``half_open_timeout`` (under a
        flood, forged SYNs must not hold memory for ``connect_timeout``; without one, a
        client on a slow, lossy path keeps the time it needs): a quarter of the table, or
        half the RETRY threshold, whichever comes first."""
        config = self.config
        limit = config.max_half_open // 4
        if config.retry_threshold is not None:
            limit = min(limit, config.retry_threshold // 2)
        return max(limit, 1)

    def pending_established(self) -> int:
        """Established connections the application has not accepted yet (the backlog)."""
        return self.held + sum(1 for c in self.accept_queue if c.is_established)

    def forget(self, conn: Connection) -> None:
        """Stop routing ``conn`` here (it closed, or migrated to another socket)."""
        if conn in self.half_open:
            self._half_open_done(conn)
        self._synced.pop(conn, None)
        if self._in_sync is conn:
            self._in_sync = None
        self._route_conn = None  # (the routes change)
        for cid in self._owned_cids.pop(conn, set()):
            if self.connections.get(cid) is conn:
                del self.connections[cid]
        for key in [k for k, v in self.addr_map.items() if v == conn.local_cid]:
            del self.addr_map[key]
            # a connection that never completed its handshake delivered nothing: a later
            # SYN from that client may open it afresh (its half-open state merely expired)
            if conn.is_closed and conn.was_established:
                self._ended[key] = None
                if len(self._ended) > self.ended_keys_limit:
                    self._ended.popitem(last=False)

    def update_addr(self, conn: Connection, old: Address, new: Address) -> None:
        """The connection moved to ``new``: re-key the auxiliary address map."""
        key_old = (old, conn.peer_cid)
        if self.addr_map.get(key_old) == conn.local_cid:
            del self.addr_map[key_old]
        self.addr_map[(new, conn.peer_cid)] = conn.local_cid

    def unreachable(self, addr: Address, now: float) -> list[Connection]:
        """ICMP port unreachable from ``addr`` reached this socket: tell the connections to
        that address (only a client still handshaking acts on it). Returns them."""
        told = []
        for conn in self._owned_cids:
            if conn.remote_addr == addr and conn.is_client:
                conn.on_unreachable(now)
                told.append(conn)
        for conn in told:
            self.sync_routes(conn)
        return told

    # ------------------------------------------------------------------ receiving
    def datagram_received(self, data: bytes, addr: Address, now: float,
                          socket_id: int | None = None) -> Connection | None:
        """Route one datagram that arrived on socket ``socket_id`` (default: ours).

        Returns the connection that took it, if any. Never raises.
        """
        local = self.socket_id if socket_id is None else socket_id
        self.stats.datagrams_received += 1
        if not data:
            self.stats.dropped_malformed += 1
            return None
        first = data[0]
        try:
            if first & 0xC0 == 0x40:  # short header
                cid_len = self._cid_length
                cid = data[1:1 + cid_len]
                conn = self._route_conn
                if conn is None or cid != self._route_cid:
                    conn = self.connections.get(cid)
                    if conn is not None:
                        self._route_cid = cid
                        self._route_conn = conn
                if conn is None:
                    if self.foreign_cid is not None and self.foreign_cid(data, addr):
                        self.stats.handed_over += 1  # another worker's connection
                    else:
                        self._unknown_short(data, addr, now)
                    return None
                if len(data) < 1 + cid_len + 8:
                    raise wire.MalformedPacket("short datagram")
            elif first & wire.LONG_FORM:
                conn = self._route_long(data, addr, now, local)
                if conn is None:
                    return None
            elif first == wire.LEGACY_SYN:
                self._legacy_syn(data, addr)
                return None
            else:
                raise wire.MalformedPacket(f"unknown packet type 0x{first:02x}")
        except wire.MalformedPacket as exc:
            self.stats.dropped_malformed += 1
            logger.debug("dropped datagram from %s: %s", addr, exc)
            return None
        try:
            conn.receive_datagram(data, addr, now, local)
        except Exception:  # a bug in one connection must not take the endpoint down
            logger.exception("connection %s failed on input; aborting it", conn.local_cid.hex())
            conn.abort(now, 1, "internal error")
        self.sync_routes(conn)
        return conn

    def _unknown_short(self, data: bytes, addr: Address, now: float) -> None:
        """A short-header datagram for no CID of ours: a stateless reset for one of our
        connections (client side), or a packet of a connection we lost (listener side: answer
        with a stateless reset, so the peer fails at once instead of timing out)."""
        self.stats.dropped_unknown_cid += 1
        crypto = self.server_crypto
        if crypto is None:
            conns = {id(c): c for c in self.connections.values()}
            if len(conns) <= 64:
                for conn in conns.values():
                    tokens = conn.peer_reset_tokens()
                    if tokens and matches_reset(data, tokens):
                        self.stats.stateless_resets_received += 1
                        conn.on_stateless_reset(now)
                        self.sync_routes(conn)
                        return
            return
        cid_len = self.config.cid_length
        if len(data) < 1 + cid_len + 8 or not self.answer_limiter.allow(now):
            return
        reset = build_stateless_reset(crypto.reset_token(data[1:1 + cid_len]), len(data))
        if reset is not None and len(self.stateless_out) < 64:
            self.stateless_out.append((reset, addr))
            self.stats.stateless_resets_sent += 1

    def _legacy_syn(self, data: bytes, addr: Address) -> None:
        """A version-1 SYN (type 0x01, version, DCID, SCID): answer in version 1's layout."""
        if not self.accept_new or len(data) < 1200 or len(data) < 7:
            return
        dlen = data[5]
        if 6 + dlen >= len(data):
            return
        slen = data[6 + dlen]
        scid = data[7 + dlen:7 + dlen + slen]
        if len(scid) != slen or len(self.stateless_out) >= 64:
            return
        self.stateless_out.append(
            (wire.encode_legacy_version_negotiation(scid, self.config.versions), addr))
        self.stats.version_negotiations_sent += 1

    def _answer(self, datagram: bytes, addr: Address, now: float) -> None:
        """A stateless answer to a handshake packet (always smaller than a SYN)."""
        self.stats.handshakes_rejected += 1
        if len(self.stateless_out) < _MAX_STATELESS and self.answer_limiter.allow(now):
            self.stateless_out.append((datagram, addr))

    def _reject(self, hdr: wire.LongHeader, reason: int, addr: Address, now: float) -> None:
        crypto = self.server_crypto
        key = crypto.public_key if crypto is not None and not self.config.insecure_plaintext \
            else b""
        header = wire.encode_long_header(wire.REJECT, hdr.version, hdr.scid, b"")
        self._answer(header + crypto_handshake.encode_reject(reason, key), addr, now)

    def _check_syn(self, data: bytes, hdr: wire.LongHeader, addr: Address, now: float) -> bool:
        """The cheap checks of a new SYN (mode, KEY_REQUEST, mac1): False after answering
        (or not) when it goes no further."""
        kind = hdr.packet_type
        if self.config.insecure_plaintext:
            if kind != wire.PLAIN_SYN:
                self._reject(hdr, crypto_handshake.REJECT_PLAINTEXT_ONLY, addr, now)
                return False
            return True
        crypto = self.server_crypto
        if crypto is None:
            self.stats.dropped_not_listening += 1
            return False
        if kind == wire.PLAIN_SYN:
            self._reject(hdr, crypto_handshake.REJECT_NEED_ENCRYPTION, addr, now)
            return False
        if kind == wire.KEY_REQUEST:
            self._reject(hdr, crypto_handshake.REJECT_KEY_ANSWER, addr, now)
            return False
        if not crypto.check_mac1(data):  # before any Diffie-Hellman work
            self._reject(hdr, crypto_handshake.REJECT_UNKNOWN_KEY, addr, now)
            return False
        return True

    def _open_syn(self, data: bytes, hdr: wire.LongHeader, addr: Address, now: float
                  ) -> OpenedSyn | None:
        """Open a SYN that passed :meth:`_check_syn` and admission (the Diffie-Hellman work);
        None (after answering, or not) when it is refused."""
        crypto = self.server_crypto
        if self.config.insecure_plaintext or crypto is None:
            try:
                return crypto_handshake.open_plain_syn(data, hdr.payload_offset)
            except HandshakeError as exc:
                raise wire.MalformedPacket(str(exc)) from None
        try:
            opened = crypto.open_syn(data, hdr.payload_offset, self.wall_clock())
        except HandshakeError:
            self._reject(hdr, crypto_handshake.REJECT_HANDSHAKE_FAILED, addr, now)
            return None
        if opened.verdict is ReplayVerdict.REPLAY:
            self.stats.replays_dropped += 1
            return None
        if not crypto.is_authorized(opened.client_key):
            # a genuine (authenticated) refusal, so the client can trust it and say why
            header = wire.encode_long_header(wire.SYN_ACK, hdr.version, hdr.scid, b"")
            refusal = crypto_handshake.ServerHandshake(opened).seal_syn_ack(
                header, crypto_handshake.encode_syn_ack_payload(
                    crypto_handshake.CLIENT_REFUSED, b"", bytes(wire.RESET_TOKEN_LENGTH), b""))
            logger.info("refused a client whose key is not authorised (from %s)", addr)
            self._answer(refusal, addr, now)
            return None
        return opened

    def _route_long(self, data: bytes, addr: Address, now: float, local: int
                    ) -> Connection | None:
        hdr = wire.decode_long_header(data)
        kind = hdr.packet_type
        if kind not in (wire.SYN, wire.PLAIN_SYN, wire.KEY_REQUEST):
            conn = self.connections.get(hdr.dcid)
            if conn is None:
                self.stats.dropped_unknown_cid += 1
            return conn
        key = (addr, hdr.scid)
        existing = self.addr_map.get(key)
        if existing is not None:
            conn = self.connections.get(existing)
            if conn is not None:
                return conn
        pending = self._half_open_by_scid.get(hdr.scid)
        if pending is not None:
            # the client's CID, from another address, while its handshake is pending: its NAT
            # re-mapped it between two copies of its SYN (which the replay cache would drop
            # as a new SYN). The connection checks that it is the same SYN.
            return pending
        if self.foreign_cid is not None and self.foreign_cid(data, addr):
            self.stats.handed_over += 1  # another worker's handshake (by the client's CID)
            return None
        if key in self._ended:
            self.stats.dropped_late_handshake += 1
            return None
        if not self.accept_new:
            self.stats.dropped_not_listening += 1
            return None
        if hdr.version not in self.config.versions:
            if len(data) >= 1200 and len(self.stateless_out) < 64:  # no amplification
                self.stateless_out.append(
                    (wire.encode_version_negotiation(hdr.scid, b"", self.config.versions), addr))
                self.stats.version_negotiations_sent += 1
            return None
        if len(data) < 1200 or not 8 <= len(hdr.scid) <= wire.MAX_CID_LENGTH:
            raise wire.MalformedPacket("SYN too small or with a bad CID")
        config = self.config
        stats = self.stats
        if config.max_connections and len(self._owned_cids) >= config.max_connections:
            # a clear answer, so the client fails at once instead of timing out (it is tiny
            # and answers a full-size SYN: no amplification)
            stats.refused_max_connections += 1
            self._reject(hdr, crypto_handshake.REJECT_BUSY, addr, now)
            return None
        # the cheap checks first: the mode, KEY_REQUEST, mac1 -- a sender who does not know
        # our public key costs us one keyed hash, no token, no state, no Diffie-Hellman
        if not self._check_syn(data, hdr, addr, now):
            return None
        validated = False
        if hdr.dcid:
            # a SYN repeated after our RETRY: its destination CID is the token, checked
            # before anything is created
            if not self.retry_tokens().check(hdr.dcid, addr, hdr.scid, now):
                stats.retry_tokens_invalid += 1
                return None
            stats.retry_tokens_valid += 1
            validated = True
        if self.pending_established() >= config.backlog:
            stats.dropped_backlog_full += 1
            return None
        if not validated and self.retry_due():
            # under load: no state for an address that has not proven itself, just a token
            stats.retries_sent += 1
            self._answer_retry(wire.encode_retry(hdr.version, hdr.scid,
                                                 self.retry_tokens().mint(addr, hdr.scid, now)),
                               addr)
            return None
        if len(self.half_open) >= config.max_half_open:
            self.stats.dropped_half_open_full += 1
            return None
        # the per-source limit is for addresses that have not proven themselves: a SYN
        # with a valid token did (and counts only against max_half_open), so forged SYNs
        # from a client's own IP (a shared NAT, or loopback) cannot lock that client out
        host = "" if validated else addr[0]
        if (not validated
                and self._half_open_by_host.get(host, 0) >= config.max_half_open_per_source):
            self.stats.dropped_per_source += 1
            return None
        opened = self._open_syn(data, hdr, addr, now)
        if opened is None:
            return None
        conn = Connection(self.config, is_client=False, local_cid=self.new_cid(),
                          remote_addr=addr, now=now, peer_cid=hdr.scid, version=hdr.version,
                          random_bytes=self.random_bytes, socket_id=local,
                          cid_taken=self.connections.__contains__, opened_syn=opened,
                          server_crypto=self.server_crypto, cid_source=self.cid_source)
        self._track(conn)
        if len(self.half_open) >= self.half_open_pressure():
            if not self._under_pressure:
                # a flood began: every half-open handshake, old and new, now lives only
                # half_open_timeout (a genuine client's retransmitted SYN renews it)
                self._under_pressure = True
                for other in self.half_open:
                    other.limit_half_open(config.half_open_timeout, now)
            conn.limit_half_open(config.half_open_timeout, now)
        else:
            self._under_pressure = False
        self.addr_map[key] = conn.local_cid
        self.half_open[conn] = host
        self._half_open_by_host[host] = self._half_open_by_host.get(host, 0) + 1
        self._half_open_by_scid[hdr.scid] = conn
        self._half_open_scid[conn] = hdr.scid
        self.accept_queue.append(conn)
        self.stats.connections_accepted += 1
        return conn

    def retry_due(self) -> bool:
        """Whether a SYN without a token gets a RETRY instead of a half-open connection:
        ``Config.retry_threshold`` half-open handshakes are pending (0: always)."""
        threshold = self.config.retry_threshold
        return threshold is not None and len(self.half_open) >= threshold

    def retry_tokens(self) -> RetryTokens:
        """This listener's token minter (made on first use; its secret lives in memory only,
        so a restart invalidates outstanding tokens, which live seconds anyway)."""
        tokens = self._retry_tokens
        if tokens is None:
            tokens = self._retry_tokens = RetryTokens(random_bytes=os.urandom)
        return tokens

    def _answer_retry(self, datagram: bytes, addr: Address) -> None:
        """A RETRY, bounded per batch of datagrams read (not by the REJECT rate limiter: a
        genuine client arriving mid-flood needs its RETRY)."""
        if len(self.stateless_out) < _MAX_STATELESS:
            self.stateless_out.append((datagram, addr))

    # ------------------------------------------------------------------ sending
    def take_stateless(self) -> list[tuple[bytes, Address]]:
        out, self.stateless_out = self.stateless_out, []
        return out
