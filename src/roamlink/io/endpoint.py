"""The socket actor: the one place that owns a UDP socket and calls sendto/recvfrom.

It feeds every datagram to the :class:`~.dispatcher.Dispatcher` (routing by CID), sends what
the connections have to send, arms one timer per connection, and tells the API layer (through
the :class:`ConnectionObserver` it registered) that something happened. Sends are coalesced:
datagrams produced while handling one batch of input go out together at the end of the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Callable
from typing import Protocol, cast

from ..config import Config
from ..core.connection import Connection
from ..core.events import Address
from .dispatcher import Dispatcher, next_local_id

#: Every live endpoint by its local id: a connection's path names its socket by this id.
_ENDPOINTS: weakref.WeakValueDictionary[int, Endpoint] = weakref.WeakValueDictionary()
#: The API object of every connection, whichever socket serves it now.
_OBSERVERS: weakref.WeakKeyDictionary[Connection, ConnectionObserver] = (
    weakref.WeakKeyDictionary())

logger = logging.getLogger("roamlink.endpoint")


def endpoint_for(local_id: int, default: Endpoint) -> Endpoint:
    """The live endpoint with this local id (``default`` if it is gone)."""
    return _ENDPOINTS.get(local_id, default)


class ConnectionObserver(Protocol):
    """What the API layer gives the endpoint for each connection."""

    def on_activity(self) -> None:
        """Something changed (data, events, state); called after the connection was served."""


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket and the connections routed through it."""

    def __init__(self, config: Config, *, accept_new: bool = False,
                 dispatcher: Dispatcher | None = None) -> None:
        self.config = config
        if dispatcher is None:
            self.dispatcher = Dispatcher(config, accept_new=accept_new)
            self.local_id = self.dispatcher.local_id
        else:  # another socket of the same endpoint (e.g. a listener on several addresses)
            self.dispatcher = dispatcher
            self.local_id = next_local_id()
        _ENDPOINTS[self.local_id] = self
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.observers: dict[Connection, ConnectionObserver] = {}
        self.on_new_connection: Callable[[Connection], None] | None = None
        self._timers: dict[Connection, tuple[float, asyncio.TimerHandle]] = {}
        self._dirty: dict[Connection, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._closed = self.loop.create_future()
        self.socket_errors = 0
        self.owns_lifetime = False  # close the socket when the last connection ends

    # ------------------------------------------------------------------ creation
    @classmethod
    async def create(cls, config: Config, local_addr: Address, *, accept_new: bool = False,
                     family: int = 0, dispatcher: Dispatcher | None = None) -> Endpoint:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(config, accept_new=accept_new, dispatcher=dispatcher),
            local_addr=(local_addr[0], local_addr[1]), family=family)
        return protocol

    @property
    def family(self) -> int:
        sock = self.transport.get_extra_info("socket") if self.transport else None
        return int(sock.family) if sock is not None else socket.AF_INET

    @property
    def local_addr(self) -> Address:
        assert self.transport is not None
        addr: Address = self.transport.get_extra_info("sockname")
        return addr

    # ------------------------------------------------------------------ asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        disp = self.dispatcher
        conn = disp.datagram_received(data, addr, self.loop.time(), self.local_id)
        if disp.accept_queue:
            self._take_new_connections()
        if conn is not None:
            self._dirty[conn] = None
            self._schedule_flush()
        elif disp.stateless_out:
            self._schedule_flush()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable from a stale NAT mapping) never close anything
        self.socket_errors += 1
        logger.debug("socket error ignored: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    # ------------------------------------------------------------------ connections
    def _take_new_connections(self) -> None:
        queue = self.dispatcher.accept_queue
        while queue:
            conn = queue.popleft()
            if self.on_new_connection is not None:
                self.on_new_connection(conn)
            else:
                conn.abort(self.loop.time(), 0, "not accepting")
            self._dirty[conn] = None

    def connect(self, remote_addr: Address, *, early_data: bytes = b"",
                config: Config | None = None) -> Connection:
        conn = self.dispatcher.connect(remote_addr, self.loop.time(), early_data=early_data,
                                       config=config, local=self.local_id)
        self.mark(conn)
        return conn

    def attach(self, conn: Connection, observer: ConnectionObserver) -> None:
        self.observers[conn] = observer
        _OBSERVERS[conn] = observer

    def detach(self, conn: Connection) -> None:
        """Stop serving ``conn`` here (it moved to another socket); it stays open."""
        self.dispatcher.forget(conn)
        self.observers.pop(conn, None)
        timer = self._timers.pop(conn, None)
        if timer is not None:
            timer[1].cancel()
        if self.owns_lifetime and not self.observers:
            self.close()

    def mark(self, conn: Connection) -> None:
        """The application changed something on ``conn``: serve it at the end of this tick."""
        self._dirty[conn] = None
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        transport = self.transport
        if transport is None or transport.is_closing():
            self._dirty.clear()
            return
        for data, addr in self.dispatcher.take_stateless():
            transport.sendto(data, addr)
        while self._dirty:
            dirty = list(self._dirty)
            self._dirty.clear()
            for conn in dirty:
                self._serve(conn, transport)

    def _serve(self, conn: Connection, transport: asyncio.DatagramTransport) -> None:
        """Send what ``conn`` has to send, each datagram from the socket of its path."""
        now = self.loop.time()
        primary = _ENDPOINTS.get(conn.paths.local, self)
        primary._send(conn, now, primary.local_id)
        if conn.paths.has_work():
            for local in conn.paths.locals_with_work():
                other = _ENDPOINTS.get(local)
                if other is not None and other is not primary:
                    other._send(conn, now, local)
        self.dispatcher.sync_routes(conn)
        if primary is not self:
            primary.dispatcher.sync_routes(conn)
            stale = self._timers.pop(conn, None)
            if stale is not None:
                stale[1].cancel()
        primary._arm_timer(conn)
        observer = _OBSERVERS.get(conn)
        if observer is not None:
            observer.on_activity()
        if conn.is_closed:
            self._retire(conn)

    def _send(self, conn: Connection, now: float, local: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            datagrams = conn.datagrams_to_send(now, local)
        except Exception:
            logger.exception("connection %s failed while sending; aborting it",
                             conn.local_cid.hex())
            conn.abort(now, 1, "internal error")
            return
        for data, addr in datagrams:
            try:
                transport.sendto(data, addr)
            except OSError as exc:  # e.g. a vanished interface: the path is tested by timers
                self.socket_errors += 1
                logger.debug("sendto %s failed: %s", addr, exc)

    def _arm_timer(self, conn: Connection) -> None:
        deadline = conn.get_timer()
        current = self._timers.get(conn)
        if current is not None:
            if current[0] == deadline:
                return
            current[1].cancel()
            del self._timers[conn]
        if deadline is not None:
            handle = self.loop.call_at(deadline, self._on_timer, conn)
            self._timers[conn] = (deadline, handle)

    def _on_timer(self, conn: Connection) -> None:
        self._timers.pop(conn, None)
        try:
            conn.handle_timer(self.loop.time())
        except Exception:
            logger.exception("connection %s failed in its timer; aborting it",
                             conn.local_cid.hex())
            conn.abort(self.loop.time(), 1, "internal error")
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._serve(conn, transport)

    def _retire(self, conn: Connection) -> None:
        """``conn`` is closed: forget it on every socket that served it."""
        _OBSERVERS.pop(conn, None)
        for ep in {self, *_ENDPOINTS.values()}:
            if ep is self or conn in ep.observers or conn in ep._timers:
                ep.detach(conn)

    @property
    def live_connections(self) -> list[Connection]:
        return list(self.observers)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        _ENDPOINTS.pop(self.local_id, None)
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.transport is not None:
            self.transport.close()
        elif not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)
