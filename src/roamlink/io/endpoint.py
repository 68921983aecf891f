"""The endpoint: one UDP socket and the connections routed through it, as asyncio sees them.

It coordinates four pieces, each in its own module:

* :class:`~.udp_socket.UdpSocket` makes the system calls (batched, UDP GSO/GRO, the backlog);
* :class:`~.dispatcher.Dispatcher` routes each datagram to its connection (by CID);
* :class:`~.driver.ConnectionDriver` serves a connection: its datagrams out, each on the
  socket of its path, its timer re-armed, its observer (the API object) told;
* :class:`~.timer_heap.TimerHeap` keeps every connection's deadline under one timer of the
  injected :class:`~.clock.Scheduler` (the event loop, or a virtual clock in tests).

A wake-up reads every waiting datagram, routes each, then serves each connection that got
input once (one ACK for a whole batch, one send pass, one GSO run for many datagrams).
Writes by the application are served at the end of the event-loop tick, except a write on an
idle connection, which leaves at once (see :meth:`Endpoint.mark_written`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..core.connection import Connection
from ..core.events import Address
from ..crypto.handshake import ClientHandshake, ServerCrypto
from .clock import LoopScheduler, Scheduler
from .dispatcher import Dispatcher
from .driver import ConnectionDriver, ConnectionObserver, DriverSocket
from .timer_heap import TimerHeap
from .udp_socket import IoStats, UdpSocket, offload_allowed

logger = logging.getLogger("roamlink.endpoint")

__all__ = ["ConnectionObserver", "Endpoint", "EndpointDriver", "IoStats", "offload_allowed"]

#: The driver type the socket layer uses: its sockets are endpoints.
EndpointDriver = ConnectionDriver["Endpoint"]



def numeric_sockaddr(host: str, port: int, family: int = 0) -> tuple[int, Address] | None:
    """``(family, socket address)`` of an IP literal, or None for a name. An IP literal needs
    no resolver: ``getaddrinfo`` runs in a worker thread, which costs a thread hand-off on a
    busy host and is invisible to a virtual clock (see roamlink.testing.clock)."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        if family and family != fam:
            continue
        try:
            socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        return fam, ((host, port) if fam == socket.AF_INET else (host, port, 0, 0))
    return None

class Endpoint(DriverSocket):
    """One UDP socket and the connections routed through it.

    ``driver``: the group of sockets this one belongs to (a listener's sockets on several
    addresses, a connection's old and new socket while it migrates); a new group by default.
    ``dispatcher``: share another socket's routing (a listener on several addresses).
    ``scheduler``: the clock and timers (the running loop's by default).
    """

    def __init__(self, config: Config, *, accept_new: bool = False,
                 dispatcher: Dispatcher | None = None, driver: EndpointDriver | None = None,
                 scheduler: Scheduler | None = None,
                 server_crypto: ServerCrypto | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.scheduler: Scheduler = scheduler or LoopScheduler(self.loop)
        #: the clock the connections run on (a plain function: called on every wake-up)
        self.now: Callable[[], float] = self.scheduler.now
        self.driver: EndpointDriver = driver or ConnectionDriver()
        self.socket_id = self.driver.new_socket_id()
        self.dispatcher = dispatcher or Dispatcher(config, accept_new=accept_new,
                                                   socket_id=self.socket_id,
                                                   server_crypto=server_crypto)
        self.udp = UdpSocket(self.loop, self._on_readable, self._datagram_received)
        self.observers: dict[Connection, ConnectionObserver] = {}
        self.on_new_connection: Callable[[Connection], None] | None = None
        self.timers: TimerHeap[Connection] = TimerHeap(
            self.scheduler, self._on_timer, lambda conn: f"connection {conn.local_cid.hex()}")
        self._dirty: dict[Connection, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._closing = False
        self._out: list[tuple[bytes, Address]] = []
        self.owns_lifetime = False  # close the socket when the last connection ends
        self.driver.add_socket(self)

    # ------------------------------------------------------------------ creation
    @classmethod
    async def create(cls, config: Config, local_addr: Address, *, accept_new: bool = False,
                     family: int = 0, dispatcher: Dispatcher | None = None,
                     driver: EndpointDriver | None = None,
                     scheduler: Scheduler | None = None,
                     server_crypto: ServerCrypto | None = None) -> Endpoint:
        """Bind a UDP socket at ``local_addr`` and start serving it."""
        numeric = numeric_sockaddr(str(local_addr[0]), int(local_addr[1]), family)
        sockaddr: Any
        if numeric is not None:
            fam, sockaddr = numeric
            proto = 0
        else:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(local_addr[0], local_addr[1], family=family,
                                           type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
            if not infos:
                raise OSError(f"cannot resolve {local_addr!r}")
            fam, _, proto, _, sockaddr = infos[0]
        endpoint = cls(config, accept_new=accept_new, dispatcher=dispatcher, driver=driver,
                       scheduler=scheduler, server_crypto=server_crypto)
        sock = socket.socket(fam, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            sock.bind(sockaddr)
            await endpoint.udp.start(sock, offload=offload_allowed(config))
        except BaseException:
            sock.close()
            endpoint.driver.remove_socket(endpoint)
            raise
        logger.debug("endpoint on %s: gso=%s gro=%s", endpoint.local_addr, endpoint.udp.gso,
                     endpoint.udp.gro)
        return endpoint

    @classmethod
    async def from_socket(cls, config: Config, sock: socket.socket, *,
                          accept_new: bool = False,
                          server_crypto: ServerCrypto | None = None) -> Endpoint:
        """An endpoint on a socket bound by someone else (a server worker's inherited
        ``SO_REUSEPORT`` socket); the endpoint closes it when it closes."""
        endpoint = cls(config, accept_new=accept_new, server_crypto=server_crypto)
        sock.setblocking(False)
        await endpoint.udp.start(sock, offload=offload_allowed(config))
        return endpoint

    @property
    def local_addr(self) -> Address:
        assert self.udp.local_addr is not None, "endpoint not started"
        return self.udp.local_addr

    @property
    def family(self) -> int:
        return self.udp.family

    def io_stats(self) -> dict[str, int]:
        """The socket's system-call counters (``self.udp`` has GSO/GRO state and errors)."""
        return dataclasses.asdict(self.udp.io)

    # ------------------------------------------------------------------ receiving
    def pause_reading(self) -> None:
        """Stop taking datagrams off the socket (they queue in, then overflow, the kernel)."""
        self.udp.pause_reading()

    def resume_reading(self) -> None:
        if not self._closing:
            self.udp.resume_reading()

    def _on_readable(self) -> None:
        # (methods called on their objects, not through a local bound method: compiled, the
        # former is a direct C call, the latter a generic call that parses its arguments)
        disp = self.dispatcher
        dirty = self._dirty
        socket_id = self.socket_id
        now = self.now()
        for data, addr in self.udp.receive_batch():
            conn = disp.datagram_received(data, addr, now, socket_id)
            if conn is not None:
                dirty[conn] = None
        if disp.accept_queue:
            self._take_new_connections()
        if dirty or disp.stateless_out:
            self._flush()

    def receive_handed_over(self, data: bytes, addr: Address) -> None:
        """A datagram that another worker process read for one of our CIDs: route it as if
        this socket had read it from ``addr`` (replies leave from this socket, which shares
        the address)."""
        self.udp.io.recv_calls += 1
        self.udp.io.datagrams_in += 1
        self._datagram_received(data, addr)

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        """Fallback path: one datagram from a DatagramProtocol."""
        disp = self.dispatcher
        conn = disp.datagram_received(data, addr, self.now(), self.socket_id)
        if disp.accept_queue:
            self._take_new_connections()
        if conn is not None:
            self._dirty[conn] = None
            self._schedule_flush()
        elif disp.stateless_out:
            self._schedule_flush()

    def report_unreachable(self) -> None:
        """A client's socket: have ICMP port unreachable reported, so that a connect() to a
        port nobody listens on fails with ConnectionRefused in about a second."""
        self.udp.on_unreachable = self._on_unreachable
        self.udp.report_unreachable()

    def _on_unreachable(self, addrs: set[Address] | None) -> None:
        now = self.now()
        if addrs is None:  # the kernel did not say which address: our clients' peers
            addrs = {c.remote_addr for c in self.observers if c.is_client}
        for addr in addrs:
            for conn in self.dispatcher.unreachable(addr, now):
                self._dirty[conn] = None
        if self._dirty:
            self._schedule_flush()

    # ------------------------------------------------------------------ connections
    def _take_new_connections(self) -> None:
        queue = self.dispatcher.accept_queue
        while queue:
            conn = queue.popleft()
            if self.on_new_connection is not None:
                self.on_new_connection(conn)
            else:
                conn.abort(self.now(), 0, "not accepting")
            self._dirty[conn] = None

    def connect(self, remote_addr: Address, *, early_data: bytes = b"",
                config: Config | None = None,
                client_handshake: ClientHandshake | None = None) -> Connection:
        conn = self.dispatcher.connect(remote_addr, self.now(), early_data=early_data,
                                       config=config, socket_id=self.socket_id,
                                       client_handshake=client_handshake)
        self.mark(conn)
        return conn

    def attach(self, conn: Connection, observer: ConnectionObserver) -> None:
        self.observers[conn] = observer
        self.driver.observers[conn] = observer

    def detach(self, conn: Connection) -> None:
        """Stop serving ``conn`` here (it moved to another socket, or closed)."""
        self.dispatcher.forget(conn)
        self.observers.pop(conn, None)
        self.timers.disarm(conn)
        if self.owns_lifetime and not self.observers:
            self.close()

    def serves(self, conn: Connection) -> bool:
        return conn in self.observers or conn in self.timers

    def mark(self, conn: Connection) -> None:
        """The application changed something on ``conn``: serve it at the end of this tick."""
        self._dirty[conn] = None
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def mark_written(self, conn: Connection) -> None:
        """The application wrote to ``conn``: send at once if nothing of it is in flight.

        Nagle's rule the other way round: a request on an idle connection leaves now (as
        asyncio's TCP_NODELAY sockets do), saving an event-loop pass on every round trip;
        writes made while data is in flight are coalesced at the end of the tick.
        """
        if (conn.recovery.bytes_in_flight or self._closing or self.udp.transport is not None
                or self._flush_handle is not None):
            self.mark(conn)
            return
        dirty = self._dirty
        if conn in dirty:  # (``in`` and ``del`` are native; ``dict.pop`` a generic call)
            del dirty[conn]
        self.driver.serve(conn, self.now(), self, True)  # sent before the observer runs
        self.transmit_collected()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._closing:
            self._dirty.clear()
            return
        out = self._out
        out.extend(self.dispatcher.take_stateless())
        driver = self.driver
        now = self.now
        while self._dirty:
            # (a fresh dict for what serving marks, not a list copy of this one and a clear)
            batch = self._dirty
            self._dirty = {}
            for conn in batch:
                driver.serve(conn, now(), self)
        if out:
            self._out = []
            self.udp.send(out)

    # ------------------------------------------------------------------ DriverSocket
    def collect(self, datagrams: list[tuple[bytes, Address]]) -> None:
        self._out.extend(datagrams)

    def transmit_collected(self) -> None:
        if self._out and not self._closing:
            out, self._out = self._out, []
            self.udp.send(out)

    def arm_timer(self, conn: Connection) -> None:
        # (the deadline read here, where ``conn`` is typed: a native call, where the heap's
        # generic key would make it a generic one)
        self.timers.arm_at(conn, conn.get_timer())

    def disarm_timer(self, conn: Connection) -> None:
        self.timers.disarm(conn)

    def _on_timer(self, conn: Connection, now: float) -> None:
        self.udp.io.timers_fired += 1
        self.driver.fire_timer(conn, now)
        if not self._closing:
            self.driver.serve(conn, self.now(), self, True)
            self.transmit_collected()

    @property
    def is_closing(self) -> bool:
        """Closed, or closing: it serves nothing any more."""
        return self._closing

    @property
    def live_connections(self) -> list[Connection]:
        return list(self.observers)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        if self._closing:
            return
        self.driver.remove_socket(self)
        if self._out:  # e.g. the CLOSE of the last connection, served just now
            pending = self._out[:]
            self._out.clear()  # (a _flush in progress holds this very list)
            self.udp.send(pending)
        self._closing = True
        self.timers.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.udp.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.udp.closed)
