"""Stream: the asyncio face of one connection, shaped like asyncio's StreamReader/Writer.

Compiled with mypyc where a compiler is present (its ``on_activity``, ``read``, ``write`` and
``drain`` run on every round trip): no async generators and no subclasses of builtin or
interpreted classes here (those live in :mod:`.event_queue`), and a ``Stream`` has no
``__dict__`` and takes no weak references (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final

from ..core.connection import Connection
from ..core.events import (
    Address,
    ConnectionStats,
    ConnectionTerminated,
    Event,
    PathChanged,
    PathValidationFailed,
)
from ..core.wire import CloseCode
from ..errors import (
    ConnectionClosed,
    IncompleteRead,
    MigrationError,
    MigrationTimeout,
    RoamlinkError,
)
from ..io.driver import ConnectionObserver
from ..io.endpoint import Endpoint
from .addresses import parse_address, resolve
from .event_queue import EVENT_QUEUE_LIMIT, EventQueue, path_events

__all__ = ["EVENT_QUEUE_LIMIT", "EventQueue", "Stream"]

#: (``Final``: compiled, a static; ``asyncio.Future`` is a module attribute lookup per use)
_Future: Final = asyncio.Future


class Stream(ConnectionObserver):
    """A reliable, ordered byte stream over roamlink.

    Reading: ``read``/``readexactly`` (``b""`` at end of stream). Writing: ``write`` buffers,
    ``drain`` waits while more than ``Config.send_buffer_size`` bytes are unacknowledged,
    ``write_eof`` half-closes. ``close`` closes both directions in order (FIN/ACK each way);
    ``abort`` resets at once with an error code.
    """

    def __init__(self, endpoint: Endpoint, conn: Connection) -> None:
        self._endpoint = endpoint
        self._conn = conn
        loop = endpoint.loop
        self._loop = loop
        #: the loop's ``create_future`` is asyncio's own, an interpreted method that only
        #: calls ``Future(loop=loop)`` (~1 k instructions of frame per read that waits): make
        #: the future directly then (uvloop's is C; another loop may make its own futures)
        self._stock_futures = (isinstance(loop, asyncio.BaseEventLoop)
                               and type(loop).create_future
                               is asyncio.BaseEventLoop.create_future)
        self._handshake: asyncio.Future[None] = loop.create_future()
        #: until the handshake future is settled (spares ``on_activity`` two ``done()`` calls
        #: on every serve of an established connection)
        self._handshake_open = True
        self._closed: asyncio.Future[None] = loop.create_future()
        self._read_waiter: asyncio.Future[None] | None = None
        #: every coroutine blocked in drain() (asyncio's StreamWriter allows several)
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._event_listeners: list[EventQueue] = []
        self._migrations: dict[tuple[int, Address], asyncio.Future[Event]] = {}
        self._migration_waiters: dict[tuple[int, Address], int] = {}
        self.on_handshake: asyncio.Future[None] = self._handshake
        endpoint.attach(conn, self)

    # ------------------------------------------------------------------ endpoint callback
    def on_activity(self) -> None:
        conn = self._conn
        while True:
            event = conn.next_event()
            if event is None:
                break
            for queue in self._event_listeners:
                queue.offer(event)
            if isinstance(event, ConnectionTerminated):
                self._on_terminated(event.error)
            elif isinstance(event, PathChanged):
                _settle(self._migrations.get((event.new_socket_id, event.new_addr)), event)
            elif isinstance(event, PathValidationFailed):
                _settle(self._migrations.get((event.socket_id, event.addr)), event)
            elif self._handshake_open and conn.is_established:
                self._settle_handshake()
        if self._handshake_open and conn.is_established:
            self._settle_handshake()
        if conn.readable or conn.at_eof or conn.is_terminated:
            _wake(self._read_waiter)
        if self._drain_waiters and (conn.send_buffered <= conn.send_buffer_limit
                                    or conn.is_terminated):
            self._wake_drainers()

    def _settle_handshake(self) -> None:
        self._handshake_open = False
        if not self._handshake.done():  # (cancelled, e.g. by a connect() given up)
            self._handshake.set_result(None)

    def _on_terminated(self, error: RoamlinkError | None) -> None:
        self._handshake_open = False
        if not self._handshake.done():
            if error is None:
                error = ConnectionClosed("closed during the handshake")
            self._handshake.set_exception(error)
            self._handshake.exception()  # retrieved here; connect() re-raises it
        if not self._closed.done():
            self._closed.set_result(None)
        _wake(self._read_waiter)
        self._wake_drainers()
        for fut in self._migrations.values():
            if not fut.done():
                fut.set_exception(MigrationError("the connection closed during migration"))

    # ------------------------------------------------------------------ migration
    async def migrate(self, new_remote_addr: Address | str | None = None, *,
                      local_addr: Address | str | int | None = None,
                      timeout: float | None = None) -> tuple[Address, Address]:
        """Move the connection to a new path once it is proven; return ``(local, remote)``.

        ``new_remote_addr``: another address of the peer (e.g. a server listening on
        several). ``local_addr``: open a new local UDP socket there ("host:port", a tuple,
        or a port; port 0 picks one), validate the path from it, move the connection to it
        and close the old socket — what a client does when its network changes. The old
        path keeps carrying data meanwhile. On failure the connection stays on the old path
        and :class:`MigrationError` (or :class:`MigrationTimeout`) is raised.
        """
        conn = self._conn
        old = self._endpoint
        loop = self._loop
        remote: Address | None = None
        if new_remote_addr is not None:
            host, port = parse_address(new_remote_addr)
            _, remote = await resolve(host, port)
        new: Endpoint | None = None
        if local_addr is not None:
            family = old.family
            host, port = parse_address(local_addr, default_host=old.local_addr[0])
            try:
                new = await Endpoint.create(old.config, (host, port), family=family,
                                            driver=old.driver, scheduler=old.scheduler)
            except OSError as refused:  # (compiled: one name per except variable)
                raise MigrationError(f"cannot open a socket on {host}:{port}: {refused}") \
                    from refused
            # this socket serves this connection only: close it when the connection ends
            # (also on a server, whose listener socket itself stays open)
            new.owns_lifetime = True
            new.dispatcher.adopt(conn)
            new.attach(conn, self)
        try:
            cand = conn.migrate(old.now(), remote, new.socket_id if new else None, timeout)
        except MigrationError:
            if new is not None:
                new.detach(conn)
                new.close()
            raise
        key = cand.key
        existing = self._migrations.get(key)
        fut: asyncio.Future[Event] = existing if existing is not None else loop.create_future()
        self._migrations[key] = fut  # a repeated request shares the pending validation
        self._migration_waiters[key] = self._migration_waiters.get(key, 0) + 1
        old.mark(conn)
        limit = (timeout or conn.config.path_validation_timeout) + 5.0
        try:
            event = await asyncio.wait_for(asyncio.shield(fut), limit)
        except asyncio.CancelledError:
            # cancelled: give the attempt up, unless the connection already moved (then the
            # Stream must follow it to the new socket, or it would report the old one)
            if new is not None and conn.paths.socket_id == new.socket_id:
                previous, self._endpoint = self._endpoint, new
                if previous is not new:
                    previous.detach(conn)
            elif self._migration_waiters.get(key, 0) <= 1:  # nobody else waits for it
                conn.cancel_migration(cand)
                old.mark(conn)
                if new is not None:
                    new.detach(conn)
                    new.close()
            raise
        except (TimeoutError, MigrationError) as exc:
            if new is not None:
                new.detach(conn)
                new.close()
            if isinstance(exc, MigrationError):
                raise
            raise MigrationTimeout(f"no answer from the new path within {limit:.1f} s") from None
        finally:
            left = self._migration_waiters.pop(key, 1) - 1
            if left:
                self._migration_waiters[key] = left
            else:
                self._migrations.pop(key, None)
        if isinstance(event, PathValidationFailed):
            if new is not None:
                new.detach(conn)
                new.close()
            raise MigrationTimeout(f"path validation failed: {event.reason}")
        if new is not None:
            previous = self._endpoint  # not necessarily ``old``: migrations may overlap
            if conn.paths.socket_id == new.socket_id:
                self._endpoint = new
                if previous is not new:
                    previous.detach(conn)  # closes the old socket if nothing else uses it
            else:  # validated, but an overlapping migration has moved the connection since
                new.detach(conn)
                new.close()
        return self.local_addr, self.remote_addr

    def path_events(self) -> AsyncIterator[PathChanged | PathValidationFailed]:
        """Every later path change (and failed validation) of this connection, as an async
        iterator; it starts listening at once, so nothing after this call is missed."""
        return path_events(self.events(), self._event_listeners)

    # ------------------------------------------------------------------ reading
    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (``n < 0``: until end of stream); ``b""`` at end of stream.

        One reader at a time: like asyncio's ``StreamReader``, a second coroutine calling
        ``read`` while another waits for data gets ``RuntimeError`` (which of the two would
        get the next bytes is not defined, so interleaved readers would corrupt the stream).
        """
        if self._read_waiter is not None:
            raise RuntimeError("read() called while another coroutine is already waiting "
                               "for incoming data on this stream")
        if n == 0:
            return b""
        if n < 0:
            parts: list[bytes] = []
            while True:
                chunk = await self.read(1 << 20)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        conn = self._conn
        while not conn.readable:
            if conn.at_eof:
                return b""
            if conn.is_terminated:
                self._raise_if_failed()
                return b""
            waiter: asyncio.Future[None] = (_Future(loop=self._loop)
                                            if self._stock_futures
                                            else self._loop.create_future())
            self._read_waiter = waiter
            try:
                await waiter
            finally:
                self._read_waiter = None
        data = conn.read(n)
        if conn.credit_update_due:
            self._endpoint.mark(conn)  # tell the peer about the released credit
        return data

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; :class:`IncompleteRead` if the stream ends first."""
        if n <= 0:
            return b""
        chunk = await self.read(n)
        got = len(chunk)
        if got == n:  # the common case: one read has it all
            return chunk
        parts = [chunk]
        while got < n:
            if not chunk:
                raise IncompleteRead(b"".join(parts), n)
            chunk = await self.read(n - got)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self._conn.at_eof

    # ------------------------------------------------------------------ writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; raises :class:`ConnectionClosed` (or a subclass) once closed."""
        conn = self._conn
        conn.send(data if type(data) is bytes else bytes(data))
        self._endpoint.mark_written(conn)

    def writelines(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    async def drain(self) -> None:
        """Wait until the send buffer is below ``Config.send_buffer_size``.

        Several coroutines may wait at once (as with asyncio's ``StreamWriter``): all wake.
        """
        conn = self._conn
        limit = conn.send_buffer_limit
        while conn.send_buffered > limit:
            if conn.is_terminated:
                break
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._drain_waiters:  # cancelled: not woken
                    self._drain_waiters.remove(waiter)
        if conn.is_terminated and conn.error is not None and conn.send_buffered:
            raise conn.error

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: the peer reads ``b""`` after the data written so far."""
        self._conn.send_eof()
        self._endpoint.mark(self._conn)

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close in order: our FIN follows pending data; unread incoming data is discarded."""
        self._conn.close(self._endpoint.now())
        self._endpoint.mark(self._conn)

    def abort(self, code: int = CloseCode.APPLICATION_ERROR, reason: str = "") -> None:
        """Reset the connection at once; the peer's reads raise ConnectionReset(code)."""
        self._conn.abort(self._endpoint.now(), code, reason)
        self._endpoint.mark(self._conn)

    def is_closing(self) -> bool:
        return self._conn.is_terminated

    async def wait_closed(self) -> None:
        """Wait until the connection has ended (orderly, aborted or timed out)."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, RoamlinkError):
            self.abort(CloseCode.APPLICATION_ERROR, f"application error: {type(exc).__name__}")
        else:
            self.close()
        await self.wait_closed()

    # ------------------------------------------------------------------ information
    @property
    def local_addr(self) -> Address:
        """The local address of the socket the connection currently uses."""
        endpoint = self._endpoint
        return endpoint.driver.socket_for(self._conn.paths.socket_id, endpoint).local_addr

    @property
    def remote_addr(self) -> Address:
        return self._conn.remote_addr

    @property
    def connection_id(self) -> str:
        return self._conn.local_cid.hex()

    @property
    def peer_key(self) -> str | None:
        """The peer's static public key, base64 (WireGuard style): on a client, the server's
        key to pin (``connect(server_key=...)``); on a server, the client's key (for
        ``authorized_clients``). None with ``insecure_plaintext``."""
        key = self._conn.peer_key
        return base64.b64encode(key).decode("ascii") if key is not None else None

    @property
    def error(self) -> RoamlinkError | None:
        return self._conn.error

    def stats(self) -> ConnectionStats:
        return self._conn.stats()

    def events(self, limit: int = EVENT_QUEUE_LIMIT) -> EventQueue:
        """A queue that receives every later event of this connection (e.g. PathChanged).

        It holds at most ``limit`` events: if the application stops reading, the oldest are
        dropped (``queue.dropped`` counts them), so an unread queue cannot grow forever.
        """
        queue = EventQueue(limit)
        self._event_listeners.append(queue)
        return queue

    def __repr__(self) -> str:
        return (f"<roamlink.Stream {self.connection_id} {self._conn.state.value} "
                f"remote={self.remote_addr}>")

    # ------------------------------------------------------------------ helpers
    def _raise_if_failed(self) -> None:
        err = self._conn.error
        if err is not None and not (isinstance(err, ConnectionClosed)
                                    and type(err) is ConnectionClosed):
            raise err

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            _wake(waiter)


def _settle(fut: asyncio.Future[Event] | None, event: Event) -> None:
    if fut is not None and not fut.done():
        fut.set_result(event)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
