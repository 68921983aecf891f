"""Serving connections over a set of sockets: the one driver the endpoint and simnet share.

A connection is sans-I/O: something must feed it timers and carry away the datagrams it has
to send, each from the socket its path uses. That something is :class:`ConnectionDriver`.
The asyncio socket layer (:class:`~.endpoint.Endpoint`) and the simulated network
(:class:`~roamlink.testing.simnet.SimNetwork`) both serve their connections through it, so
the simulator exercises the very code that runs over real sockets.

A path names its local socket by an integer socket id. The driver is the explicit registry of
those ids: it hands them out and finds a socket by its id (a connection probing a new path
sends from the new socket, then moves there), and it knows each connection's observer (the
API object told when something happened), whichever socket serves the connection now.
Everything that must find another socket or a connection's observer is given the driver;
nothing is process-wide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from ..core.connection import Connection
from ..core.events import Address
from .dispatcher import Dispatcher

logger = logging.getLogger("roamlink.endpoint")

Datagrams = list[tuple[bytes, Address]]


class ConnectionObserver(Protocol):
    """What the API layer gives the driver for each connection.

    (Compiled, a call through a protocol-typed value is a generic method call, unless the
    object's class names the protocol as a base: then it is a native call. ``Stream``
    does; a structural observer, as a test's, still works through the generic call.)"""

    def on_activity(self) -> None:
        """Something changed (data, events, state); called after the connection was served."""


class DriverSocket(Protocol):
    """What the driver needs of one socket (a real one, or a simulated host).

    ``Endpoint`` names this protocol as its base, so that the compiled driver calls its
    methods natively (~0.3-0.5 k instructions saved per call, ten calls per round trip);
    the simulator's hosts satisfy it structurally and take the generic calls. Both run
    the same driver code."""

    socket_id: int
    dispatcher: Dispatcher

    def collect(self, datagrams: Datagrams) -> None:
        """Take datagrams to send from this socket (now, or at :meth:`transmit_collected`)."""

    def transmit_collected(self) -> None:
        """Send what :meth:`collect` took and has not sent yet."""

    def arm_timer(self, conn: Connection) -> None:
        """Follow ``conn.get_timer()``; when it is reached, call the driver's ``fire_timer``
        and ``serve`` with this socket."""

    def disarm_timer(self, conn: Connection) -> None:
        """Another socket serves ``conn`` now: forget its deadline here."""

    def serves(self, conn: Connection) -> bool:
        """Whether ``conn`` is attached here or has a deadline armed here."""

    def detach(self, conn: Connection) -> None:
        """Stop serving ``conn`` here (it closed, or moved to another socket)."""


S = TypeVar("S", bound=DriverSocket)


class ConnectionDriver(Generic[S]):
    """The sockets that may serve the same connections, and how a connection is served.

    ``contain_errors``: an exception raised by a connection aborts that connection (logged)
    instead of reaching the caller. The socket layer wants that (one bug must not take the
    socket down); the simulator does not (a test should see the traceback).
    """

    def __init__(self, *, contain_errors: bool = True) -> None:
        self.contain_errors = contain_errors
        self.sockets: dict[int, S] = {}
        self.observers: dict[Connection, ConnectionObserver] = {}
        self._last_id = 0

    # ------------------------------------------------------------------ registry
    def new_socket_id(self) -> int:
        """An id for a new socket, unique among this driver's sockets."""
        self._last_id += 1
        return self._last_id

    def add_socket(self, sock: S) -> None:
        self.sockets[sock.socket_id] = sock

    def remove_socket(self, sock: S) -> None:
        if self.sockets.get(sock.socket_id) is sock:
            del self.sockets[sock.socket_id]

    def socket_for(self, socket_id: int, default: S) -> S:
        """The live socket with this id (``default`` if it is gone)."""
        return self.sockets.get(socket_id, default)

    def sockets_serving(self, conn: Connection) -> Iterator[S]:
        """Every socket that serves ``conn`` (attached, or with its deadline armed)."""
        return (sock for sock in list(self.sockets.values()) if sock.serves(conn))

    # ------------------------------------------------------------------ serving
    def serve(self, conn: Connection, now: float, via: S, transmit: bool = False) -> None:
        """Collect what ``conn`` has to send, each datagram on the socket of its path; re-arm
        its timer; tell its observer; retire it once closed. ``via``: the socket that had
        input or a timer for it.

        ``transmit``: hand the datagrams to the socket at once, before the bookkeeping that
        follows (a single connection's write or timer: the peer waits for that reply, and the
        timer and the observer can run while it travels); otherwise the caller transmits, so
        that one pass over many connections batches their datagrams."""
        primary = self.sockets.get(conn.paths.socket_id, via)
        self._collect(conn, now, primary)
        if transmit:
            primary.transmit_collected()
        if conn.paths.has_work():  # probes on other sockets (path validation)
            for socket_id in conn.paths.sockets_with_work():
                other = self.sockets.get(socket_id)
                if other is not None and other is not primary:
                    self._collect(conn, now, other)
                    other.transmit_collected()
        via.dispatcher.sync_routes(conn)
        if primary is not via:
            primary.dispatcher.sync_routes(conn)
            primary.transmit_collected()
            via.disarm_timer(conn)
        primary.arm_timer(conn)
        observer = self.observers.get(conn)
        if observer is not None:
            observer.on_activity()
        if conn.is_closed:
            self.retire(conn, via)

    def _collect(self, conn: Connection, now: float, sock: S) -> None:
        try:
            datagrams = conn.datagrams_to_send(now, sock.socket_id)
        except Exception:
            self._failed(conn, now, "while sending")
            return
        if datagrams:
            sock.collect(datagrams)

    def fire_timer(self, conn: Connection, now: float) -> None:
        """``conn``'s deadline was reached: let it act (the caller then serves it)."""
        try:
            conn.handle_timer(now)
        except Exception:
            self._failed(conn, now, "in its timer")

    def _failed(self, conn: Connection, now: float, where: str) -> None:
        """``conn`` raised (called from an ``except`` block): abort it, or re-raise when
        errors are not contained."""
        if not self.contain_errors:
            raise
        logger.exception("connection %s failed %s; aborting it", conn.local_cid.hex(), where)
        conn.abort(now, 1, "internal error")

    def retire(self, conn: Connection, via: S) -> None:
        """``conn`` is closed: forget it on every socket that served it."""
        self.observers.pop(conn, None)
        via.detach(conn)
        for sock in self.sockets_serving(conn):
            if sock is not via:
                sock.detach(conn)
