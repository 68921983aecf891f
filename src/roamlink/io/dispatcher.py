"""Datagram routing for one socket, without the socket: CID -> connection, address -> CID.

The seed's "socket actor" keeps a main map ``CID -> connection`` and an auxiliary map
``peer address -> CID``. This class is that routing logic, sans-I/O, so the asyncio socket
layer (:mod:`.endpoint`) and the simulated network share it.

* Short-header packets are routed by the destination CID alone: the peer's address may have
  changed (that is what migration is about).
* A SYN carries no CID of ours yet, so it is routed by ``(peer address, peer's CID)``: a
  retransmitted SYN finds the half-open connection instead of opening a second one.
* A SYN with a version we do not speak is answered with VERSION_NEGOTIATION (stateless).
* Anything else that matches no connection is dropped and counted; nothing raises.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config
from ..core import wire
from ..core.connection import Connection
from ..core.events import Address
from .steering import CidLayout

logger = logging.getLogger("roamlink.dispatcher")

#: Handshake keys of ended connections remembered (bounded memory; oldest forgotten first).
_ENDED_KEYS = 65536


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
    handed_over: int = 0  # short headers passed to the worker their CID names


class Dispatcher:
    """Routes datagrams of one socket to the connections that live on it."""

    def __init__(self, config: Config, *, accept_new: bool = False,
                 random_bytes: Callable[[int], bytes] = os.urandom, socket_id: int = 1) -> None:
        self.config = config
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
        self.addr_map: dict[tuple[Address, bytes], bytes] = {}  # (addr, peer CID) -> our CID
        self.accept_queue: deque[Connection] = deque()
        self.stateless_out: list[tuple[bytes, Address]] = []
        self.stats = DispatcherStats()
        self._owned_cids: dict[Connection, set[bytes]] = {}
        self._synced: dict[Connection, int] = {}  # the connection's cid_version last applied
        #: the id of "our socket" where a caller names none (a path is a socket id + a peer
        #: address; the ids are handed out by the owner, see driver.ConnectionDriver)
        self.socket_id = socket_id
        #: connections handed to the owner but not yet accepted by the application
        self.held = 0
        #: handshake keys of ended connections: a late or replayed SYN must not reopen them
        self._ended: OrderedDict[tuple[Address, bytes], None] = OrderedDict()

    # ------------------------------------------------------------------ connections
    def new_cid(self) -> bytes:
        while True:
            cid = self.cid_source(self.config.cid_length)
            if cid not in self.connections:
                return cid

    def connect(self, remote_addr: Address, now: float, *, early_data: bytes = b"",
                config: Config | None = None, socket_id: int | None = None) -> Connection:
        conn = Connection(config or self.config, is_client=True, local_cid=self.new_cid(),
                          remote_addr=remote_addr, now=now, random_bytes=self.random_bytes,
                          early_data=early_data,
                          socket_id=self.socket_id if socket_id is None else socket_id,
                          cid_taken=self.connections.__contains__,
                          cid_source=self.cid_source)
        self._track(conn)
        return conn

    def _track(self, conn: Connection) -> None:
        self._owned_cids[conn] = set()
        self._synced[conn] = -1
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
        if conn.is_closed:
            self.forget(conn)
            return
        if self._synced.get(conn, conn.cid_version) == conn.cid_version:
            return
        owned = self._owned_cids[conn]
        wanted = set(conn.routed_cids())
        for cid in owned - wanted:
            if self.connections.get(cid) is conn:
                del self.connections[cid]
        for cid in wanted - owned:
            self.connections[cid] = conn
        self._owned_cids[conn] = wanted
        self._synced[conn] = conn.cid_version

    def forget(self, conn: Connection) -> None:
        """Stop routing ``conn`` here (it closed, or migrated to another socket)."""
        self._synced.pop(conn, None)
        for cid in self._owned_cids.pop(conn, set()):
            if self.connections.get(cid) is conn:
                del self.connections[cid]
        for key in [k for k, v in self.addr_map.items() if v == conn.local_cid]:
            del self.addr_map[key]
            if conn.is_closed:
                self._ended[key] = None
                if len(self._ended) > _ENDED_KEYS:
                    self._ended.popitem(last=False)

    def update_addr(self, conn: Connection, old: Address, new: Address) -> None:
        """The connection moved to ``new``: re-key the auxiliary address map."""
        key_old = (old, conn.peer_cid)
        if self.addr_map.get(key_old) == conn.local_cid:
            del self.addr_map[key_old]
        self.addr_map[(new, conn.peer_cid)] = conn.local_cid

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
            if first == wire.SHORT:
                cid_len = self.config.cid_length
                if len(data) < 1 + cid_len + 8:
                    raise wire.MalformedPacket("short datagram")
                conn = self.connections.get(data[1:1 + cid_len])
                if conn is None:
                    if self.foreign_cid is not None and self.foreign_cid(data, addr):
                        self.stats.handed_over += 1
                    else:
                        self.stats.dropped_unknown_cid += 1
                    return None
            elif first in wire.LONG_TYPES:
                conn = self._route_long(data, addr, now, local)
                if conn is None:
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

    def _route_long(self, data: bytes, addr: Address, now: float, local: int
                    ) -> Connection | None:
        hdr = wire.decode_long_header(data)
        if hdr.packet_type != wire.SYN:
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
        if len(self.accept_queue) + self.held >= self.config.backlog:
            self.stats.dropped_backlog_full += 1
            return None
        conn = Connection(self.config, is_client=False, local_cid=self.new_cid(),
                          remote_addr=addr, now=now, peer_cid=hdr.scid, version=hdr.version,
                          random_bytes=self.random_bytes, socket_id=local,
                          cid_taken=self.connections.__contains__,
                          cid_source=self.cid_source)
        self._track(conn)
        self.addr_map[key] = conn.local_cid
        self.accept_queue.append(conn)
        self.stats.connections_accepted += 1
        return conn

    # ------------------------------------------------------------------ sending
    def take_stateless(self) -> list[tuple[bytes, Address]]:
        out, self.stateless_out = self.stateless_out, []
        return out
