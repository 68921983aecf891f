"""The socket actor: the one place that owns a UDP socket and calls send/receive on it.

It feeds every datagram to the :class:`~.dispatcher.Dispatcher` (routing by CID), sends what
the connections have to send, arms one timer per connection, and tells the API layer (through
the :class:`ConnectionObserver` it registered) that something happened.

Per-packet system calls dominate a Python transport's cost, so the socket is driven directly
(``loop.add_reader`` on a non-blocking socket) instead of through a ``DatagramProtocol``:

* every wake-up drains all readable datagrams, then serves each connection that got input once
  (one ACK for a whole batch, one send pass);
* on Linux, receiving uses ``UDP_GRO``: the kernel hands over up to 64 KiB of same-size
  datagrams from one sender in one ``recvmsg`` (the control message gives the segment size);
* sending groups runs of same-size datagrams to one address and passes each run to the kernel
  in one ``sendmsg`` with the ``UDP_SEGMENT`` control message (UDP GSO);
* where the platform lacks either, or ``Config.udp_offload`` is False, or the environment sets
  ``ROAMLINK_UDP_OFFLOAD=0``, it falls back to one ``recvfrom``/``sendto`` per datagram, and
  where the loop has no ``add_reader`` (e.g. Windows' proactor) to a ``DatagramProtocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import logging
import math
import os
import socket
import struct
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import Config
from ..core.connection import Connection
from ..core.events import Address
from .dispatcher import Dispatcher, next_local_id

logger = logging.getLogger("roamlink.endpoint")

#: Every live endpoint by its local id: a connection's path names its socket by this id.
_ENDPOINTS: weakref.WeakValueDictionary[int, Endpoint] = weakref.WeakValueDictionary()
#: The API object of every connection, whichever socket serves it now.
_OBSERVERS: weakref.WeakKeyDictionary[Connection, ConnectionObserver] = (
    weakref.WeakKeyDictionary())


def endpoint_for(local_id: int, default: Endpoint) -> Endpoint:
    """The live endpoint with this local id (``default`` if it is gone)."""
    return _ENDPOINTS.get(local_id, default)

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: Largest UDP payload the kernel takes in one send (and hands over in one GRO receive).
_MAX_UDP_PAYLOAD = 65507
#: The kernel refuses more segments than this in one GSO send (UDP_MAX_SEGMENTS).
_MAX_SEGMENTS = 64
#: Receive system calls per wake-up at most, so one busy socket cannot starve the loop.
_MAX_READS_PER_WAKEUP = 128
#: Datagrams queued while the socket's send buffer is full; beyond this they are dropped
#: (loss recovery resends them).
_MAX_BACKLOG = 8192
#: Shortest timer armed: event loops cannot sleep for less (see _arm_timer).
_MIN_TIMER_DELAY = 0.001
_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
#: Errors of a GSO send that mean "this path cannot segment": fall back to plain sends.
_GSO_ERRORS = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP,
                         errno.EMSGSIZE})


def offload_allowed(config: Config) -> bool:
    """Whether UDP GSO/GRO may be tried: the config allows it and the environment does not
    forbid it (``ROAMLINK_UDP_OFFLOAD=0`` forces the per-datagram path, e.g. in CI)."""
    if not config.udp_offload:
        return False
    return os.environ.get("ROAMLINK_UDP_OFFLOAD", "1").strip().lower() not in ("0", "false",
                                                                                "no", "off")


@dataclass
class IoStats:
    """System-call counters of one endpoint (how well batching works)."""

    recv_calls: int = 0
    datagrams_in: int = 0
    gro_batches: int = 0
    send_calls: int = 0
    datagrams_out: int = 0
    gso_batches: int = 0
    send_would_block: int = 0
    send_dropped: int = 0
    timers_fired: int = 0


class ConnectionObserver(Protocol):
    """What the API layer gives the endpoint for each connection."""

    def on_activity(self) -> None:
        """Something changed (data, events, state); called after the connection was served."""


class Endpoint:
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
        self.sock: socket.socket | None = None
        self._local_addr: Address | None = None
        self.observers: dict[Connection, ConnectionObserver] = {}
        self.on_new_connection: Callable[[Connection], None] | None = None
        # one event-loop timer for all connections: deadlines in a heap (stale entries are
        # skipped when they surface), the loop timer armed for the earliest
        self._timers: dict[Connection, float] = {}  # each connection's armed deadline
        self._timer_heap: list[tuple[float, int, Connection]] = []
        self._timer_seq = 0
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._dirty: dict[Connection, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._closed = self.loop.create_future()
        self._closing = False
        self._reading = False
        self._out: list[tuple[bytes, Address]] = []
        self._backlog: list[tuple[bytes, Address]] = []
        self._writer_armed = False
        self._transport: asyncio.DatagramTransport | None = None  # fallback path only
        self.gso = False
        self.gro = False
        self.io = IoStats()
        self.socket_errors = 0
        self.owns_lifetime = False  # close the socket when the last connection ends

    # ------------------------------------------------------------------ creation
    @classmethod
    async def create(cls, config: Config, local_addr: Address, *, accept_new: bool = False,
                     family: int = 0, dispatcher: Dispatcher | None = None) -> Endpoint:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(local_addr[0], local_addr[1], family=family,
                                       type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {local_addr!r}")
        fam, _, proto, _, sockaddr = infos[0]
        endpoint = cls(config, accept_new=accept_new, dispatcher=dispatcher)
        sock = socket.socket(fam, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            sock.bind(sockaddr)
            await endpoint._start(sock)
        except BaseException:
            sock.close()
            raise
        return endpoint

    @classmethod
    async def from_socket(cls, config: Config, sock: socket.socket, *,
                          accept_new: bool = False) -> Endpoint:
        """An endpoint on a socket bound by someone else (a server worker's inherited
        ``SO_REUSEPORT`` socket); the endpoint closes it when it closes."""
        endpoint = cls(config, accept_new=accept_new)
        sock.setblocking(False)
        await endpoint._start(sock)
        return endpoint

    async def _start(self, sock: socket.socket) -> None:
        self.sock = sock
        self._local_addr = sock.getsockname()
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        if offload_allowed(self.config) and sys.platform.startswith("linux"):
            self.gso = _probe_gso(sock)
            self.gro = _probe_gro(sock)
        try:
            self.loop.add_reader(sock.fileno(), self._on_readable)
            self._reading = True
        except NotImplementedError:  # a loop without readiness callbacks: use a transport
            self.gso = self.gro = False
            self._transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _FallbackProtocol(self), sock=sock)
        logger.debug("endpoint on %s: gso=%s gro=%s", self.local_addr, self.gso, self.gro)

    @property
    def local_addr(self) -> Address:
        assert self._local_addr is not None, "endpoint not started"
        return self._local_addr

    @property
    def family(self) -> int:
        return int(self.sock.family) if self.sock is not None else socket.AF_INET

    @staticmethod
    def now() -> float:
        """The clock the connections run on (``time.monotonic``, as asyncio's loop.time).

        Not ``loop.time()``: uvloop's is cached per loop iteration in whole milliseconds,
        which would blind the pacer and RTT samples to anything faster than a millisecond.
        """
        return time.monotonic()

    def io_stats(self) -> dict[str, int]:
        return dict(vars(self.io))

    # ------------------------------------------------------------------ receiving
    def pause_reading(self) -> None:
        """Stop taking datagrams off the socket (they queue in, then overflow, the kernel)."""
        if self._transport is not None:
            self._transport.pause_reading()  # type: ignore[attr-defined]  # (selector's has it)
        elif self._reading and self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()  # type: ignore[attr-defined]
        elif not self._reading and not self._closing and self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        disp = self.dispatcher
        dirty = self._dirty
        io = self.io
        gro = self.gro
        local = self.local_id
        now = self.now()
        for _ in range(_MAX_READS_PER_WAKEUP):
            try:
                if gro:
                    data, ancdata, _, addr = sock.recvmsg(_MAX_UDP_PAYLOAD + 1, _CMSG_SPACE)
                else:
                    data, addr = sock.recvfrom(_MAX_UDP_PAYLOAD + 1)
                    ancdata = None
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.error_received(exc)
                continue
            io.recv_calls += 1
            size = 0
            if ancdata:
                for level, kind, value in ancdata:
                    if level == SOL_UDP and kind == UDP_GRO:
                        size = _GRO_SIZE.unpack(value[:4])[0]
            if 0 < size < len(data):
                io.gro_batches += 1
                end = len(data)
                for pos in range(0, end, size):
                    io.datagrams_in += 1
                    conn = disp.datagram_received(data[pos:pos + size], addr, now, local)
                    if conn is not None:
                        dirty[conn] = None
            else:
                io.datagrams_in += 1
                conn = disp.datagram_received(data, addr, now, local)
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
        self._datagram_received(data, addr)

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        """Fallback path: one datagram from a DatagramProtocol."""
        self.io.recv_calls += 1
        self.io.datagrams_in += 1
        disp = self.dispatcher
        conn = disp.datagram_received(data, addr, self.now(), self.local_id)
        if disp.accept_queue:
            self._take_new_connections()
        if conn is not None:
            self._dirty[conn] = None
            self._schedule_flush()
        elif disp.stateless_out:
            self._schedule_flush()

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (e.g. port unreachable from a stale NAT mapping) never close anything."""
        self.socket_errors += 1
        logger.debug("socket error ignored: %s", exc)

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
                config: Config | None = None) -> Connection:
        conn = self.dispatcher.connect(remote_addr, self.now(), early_data=early_data,
                                       config=config, local=self.local_id)
        self.mark(conn)
        return conn

    def attach(self, conn: Connection, observer: ConnectionObserver) -> None:
        self.observers[conn] = observer
        _OBSERVERS[conn] = observer

    def detach(self, conn: Connection) -> None:
        """Stop serving ``conn`` here (it moved to another socket, or closed)."""
        self.dispatcher.forget(conn)
        self.observers.pop(conn, None)
        self._timers.pop(conn, None)  # (its heap entry is skipped when it surfaces)
        if self.owns_lifetime and not self.observers:
            self.close()

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
        if (conn.recovery.bytes_in_flight or self._closing or self._transport is not None
                or self._flush_handle is not None):
            self.mark(conn)
            return
        self._dirty.pop(conn, None)
        self._serve(conn)
        if self._out:
            out, self._out = self._out, []
            self._transmit(out)

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
        dirty = self._dirty
        while dirty:
            batch = list(dirty)
            dirty.clear()
            for conn in batch:
                self._serve(conn)
        if out:
            self._out = []
            self._transmit(out)

    def _serve(self, conn: Connection) -> None:
        """Collect what ``conn`` has to send, each datagram on the socket of its path."""
        now = self.now()
        primary = _ENDPOINTS.get(conn.paths.socket_id, self)
        primary._collect(conn, now, primary.local_id)
        if conn.paths.has_work():  # probes on other sockets (path validation)
            for local in conn.paths.sockets_with_work():
                other = _ENDPOINTS.get(local)
                if other is not None and other is not primary:
                    other._collect(conn, now, local)
                    other._transmit_collected()
        self.dispatcher.sync_routes(conn)
        if primary is not self:
            primary.dispatcher.sync_routes(conn)
            primary._transmit_collected()
            self._timers.pop(conn, None)
        primary._arm_timer(conn)
        observer = _OBSERVERS.get(conn)
        if observer is not None:
            observer.on_activity()
        if conn.is_closed:
            self._retire(conn)

    def _collect(self, conn: Connection, now: float, local: int) -> None:
        try:
            datagrams = conn.datagrams_to_send(now, local)
        except Exception:
            logger.exception("connection %s failed while sending; aborting it",
                             conn.local_cid.hex())
            conn.abort(now, 1, "internal error")
            return
        if datagrams:
            self._out.extend(datagrams)

    def _transmit_collected(self) -> None:
        if self._out and not self._closing:
            out, self._out = self._out, []
            self._transmit(out)

    # ------------------------------------------------------------------ sending
    def _transmit(self, datagrams: list[tuple[bytes, Address]]) -> None:
        """Send ``datagrams`` in order, coalescing same-size runs to one address (GSO)."""
        if self._closing:
            return
        if self._backlog:
            self._queue(datagrams, 0)
            return
        if self._transport is not None:
            for data, addr in datagrams:
                self._transport.sendto(data, addr)
            self.io.send_calls += len(datagrams)
            self.io.datagrams_out += len(datagrams)
            return
        sock = self.sock
        if sock is None:
            return
        io = self.io
        n = len(datagrams)
        i = 0
        while i < n:
            data, addr = datagrams[i]
            size = len(data)
            j = i + 1
            if self.gso:
                limit = min(n, i + _MAX_SEGMENTS, i + _MAX_UDP_PAYLOAD // max(size, 1))
                while j < limit:
                    nxt, naddr = datagrams[j]
                    nsize = len(nxt)
                    if naddr != addr or nsize > size:
                        break
                    j += 1
                    if nsize < size:
                        break  # a shorter datagram may only end a run
            try:
                if j - i > 1:
                    sock.sendmsg([d for d, _ in datagrams[i:j]],
                                 [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))], 0, addr)
                    io.gso_batches += 1
                else:
                    sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                io.send_would_block += 1
                self._queue(datagrams, i)
                return
            except OSError as exc:
                if j - i > 1 and exc.errno in _GSO_ERRORS:
                    logger.info("UDP GSO send failed (%s): sending one datagram per call", exc)
                    self.gso = False
                    continue  # resend this run without GSO
                self.socket_errors += 1  # e.g. a vanished interface: timers test the path
                logger.debug("send to %s failed: %s", addr, exc)
            io.send_calls += 1
            io.datagrams_out += j - i
            i = j

    def _queue(self, datagrams: list[tuple[bytes, Address]], start: int) -> None:
        """The socket's send buffer is full: keep the rest until it is writable again."""
        room = _MAX_BACKLOG - len(self._backlog)
        rest = datagrams[start:start + max(room, 0)] if start or room < len(datagrams) \
            else datagrams
        self.io.send_dropped += len(datagrams) - start - len(rest)
        self._backlog.extend(rest)
        if not self._writer_armed and self.sock is not None and not self._closing:
            self.loop.add_writer(self.sock.fileno(), self._on_writable)
            self._writer_armed = True

    def _on_writable(self) -> None:
        backlog, self._backlog = self._backlog, []
        if self.sock is not None:
            self.loop.remove_writer(self.sock.fileno())
        self._writer_armed = False
        if backlog and not self._closing:
            self._transmit(backlog)

    # ------------------------------------------------------------------ timers
    def _arm_timer(self, conn: Connection) -> None:
        deadline = conn.get_timer()
        timers = self._timers
        current = timers.get(conn)
        if deadline is None:
            if current is not None:
                del timers[conn]
            return
        if current is not None and current <= deadline:
            # the armed deadline comes no later than needed: keep it (no churn per packet);
            # when it fires early, the connection finds nothing due and is armed again
            return
        timers[conn] = deadline
        self._timer_seq += 1
        heap = self._timer_heap
        heapq.heappush(heap, (deadline, self._timer_seq, conn))
        if len(heap) > 4 * len(timers) + 64:  # too many stale entries: rebuild
            heap[:] = [(d, i, c) for i, (c, d) in enumerate(timers.items())]
            heapq.heapify(heap)
        if deadline < self._timer_at:
            self._schedule_timers(deadline)

    def _schedule_timers(self, when: float) -> None:
        if self._timer_handle is not None:
            self._timer_handle.cancel()
        self._timer_at = when
        now = self.now()
        delay = when - now
        if 0 < delay < _MIN_TIMER_DELAY:
            # no event loop sleeps less than a millisecond (epoll, libuv); uvloop would
            # instead fire at once and spin on, e.g., a pacing deadline microseconds away,
            # starving the peer process of CPU
            delay = _MIN_TIMER_DELAY
        self._timer_handle = self.loop.call_later(max(delay, 0.0), self._on_timers)

    def _on_timers(self) -> None:
        self._timer_handle = None
        self._timer_at = math.inf
        if self._closing:
            return
        heap, timers = self._timer_heap, self._timers
        now = self.now()
        due: list[Connection] = []
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if timers.get(conn) == deadline:
                del timers[conn]
                due.append(conn)
        try:
            for conn in due:
                try:
                    self._on_timer(conn, now)
                except Exception:  # e.g. an observer's callback: the others' timers go on
                    logger.exception("timer of connection %s failed", conn.local_cid.hex())
        finally:
            while heap and timers.get(heap[0][2]) != heap[0][0]:
                heapq.heappop(heap)  # stale
            if heap and heap[0][0] < self._timer_at and not self._closing:
                self._schedule_timers(heap[0][0])

    def _on_timer(self, conn: Connection, now: float) -> None:
        self.io.timers_fired += 1
        try:
            conn.handle_timer(now)
        except Exception:
            logger.exception("connection %s failed in its timer; aborting it",
                             conn.local_cid.hex())
            conn.abort(now, 1, "internal error")
        if not self._closing:
            self._serve(conn)
            if self._out:
                out, self._out = self._out, []
                self._transmit(out)

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
        if self._closing:
            return
        _ENDPOINTS.pop(self.local_id, None)
        if self._out:  # e.g. the CLOSE of the last connection, served just now
            pending = self._out[:]
            self._out.clear()  # (a _flush in progress holds this very list)
            self._transmit(pending)
        self._closing = True
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._timers.clear()
        self._timer_heap.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._backlog.clear()
        if self._transport is not None:
            self._transport.close()  # connection_lost resolves _closed
            return
        sock = self.sock
        if sock is not None:
            if self._reading:
                self.loop.remove_reader(sock.fileno())
                self._reading = False
            if self._writer_armed:
                self.loop.remove_writer(sock.fileno())
                self._writer_armed = False
            sock.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


class _FallbackProtocol(asyncio.DatagramProtocol):
    """Feeds an endpoint from a datagram transport (loops without ``add_reader``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.endpoint._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.endpoint.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        closed = self.endpoint._closed
        if not closed.done():
            closed.set_result(None)


def _probe_gso(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return hasattr(sock, "sendmsg")


def _probe_gro(sock: socket.socket) -> bool:
    if not hasattr(sock, "recvmsg"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True
