"""The system calls of one UDP socket: batched receives (UDP GRO), batched sends (UDP GSO),
the backlog while the kernel's send buffer is full, and the fallbacks.

Per-packet system calls dominate a Python transport's cost, so the socket is driven directly
(``loop.add_reader`` on a non-blocking socket) instead of through a ``DatagramProtocol``:

* every wake-up drains all readable datagrams (:meth:`UdpSocket.receive_batch`);
* on Linux, receiving uses ``UDP_GRO``: the kernel hands over up to 64 KiB of same-size
  datagrams from one sender in one ``recvmsg`` (the control message gives the segment size);
* sending groups runs of same-size datagrams to one address and passes each run to the kernel
  in one ``sendmsg`` with the ``UDP_SEGMENT`` control message (UDP GSO);
* where the platform lacks either, or ``Config.udp_offload`` is False, or the environment sets
  ``ROAMLINK_UDP_OFFLOAD=0``, it falls back to one ``recvfrom``/``sendto`` per datagram, and
  where the loop has no ``add_reader`` (e.g. Windows' proactor) to a ``DatagramProtocol``.

This module knows nothing of connections: datagrams in, datagrams out.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..config import Config
from ..core.events import Address

logger = logging.getLogger("roamlink.endpoint")


def _fionread() -> tuple[Callable[..., object] | None, object]:
    """``fcntl.ioctl`` and the FIONREAD request, where the platform has them (not Windows)."""
    try:
        import fcntl
        import termios
    except ImportError:
        return None, 0
    request = getattr(termios, "FIONREAD", None)
    return (None, 0) if request is None else (fcntl.ioctl, int(request))


SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
#: Largest UDP payload the kernel takes in one send (and hands over in one GRO receive).
MAX_UDP_PAYLOAD: Final = 65507
#: The kernel refuses more segments than this in one GSO send (UDP_MAX_SEGMENTS).
MAX_SEGMENTS: Final = 64
#: Receive system calls per wake-up at most, so one busy socket cannot starve the loop.
MAX_READS_PER_WAKEUP = 128
#: Datagrams queued while the socket's send buffer is full; beyond this they are dropped
#: (loss recovery resends them).
MAX_BACKLOG: Final = 8192
#: Linux socket options that queue ICMP errors for an unconnected UDP socket (the socket
#: module does not name them).
_IP_RECVERR: Final = 11
_IPV6_RECVERR: Final = 25
_SEGMENT_SIZE: Final = struct.Struct("=H")
_GRO_SIZE: Final = struct.Struct("=i")
_CMSG_SPACE: Final = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
#: The ioctl that tells how many bytes the next datagram has (0: none waiting), where the
#: platform has it (Linux and the BSDs; not Windows), and its request number. (Both held as
#: objects: compiled, an ``int`` constant is boxed again at every call, and FIONREAD is above
#: the cached small ints.)
_FIONREAD: Final = _fionread()
_IOCTL: Final = _FIONREAD[0]
_FIONREAD_REQUEST: Final = _FIONREAD[1]
#: Errors of a GSO send that mean "this path cannot segment": fall back to plain sends.
_GSO_ERRORS: Final = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP,
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
    """System-call counters of one socket (how well batching works)."""

    recv_calls: int = 0
    datagrams_in: int = 0
    gro_batches: int = 0
    send_calls: int = 0
    datagrams_out: int = 0
    gso_batches: int = 0
    send_would_block: int = 0
    send_dropped: int = 0
    timers_fired: int = 0


class UdpSocket:
    """One non-blocking UDP socket on an event loop.

    ``on_readable()`` is called when datagrams wait (the owner then calls
    :meth:`receive_batch`); on the fallback path ``on_datagram(data, addr)`` is called per
    datagram instead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_readable: Callable[[], None],
                 on_datagram: Callable[[bytes, Address], None]) -> None:
        self.loop = loop
        self.on_readable = on_readable
        self.on_datagram = on_datagram
        self.sock: socket.socket | None = None
        self.local_addr: Address | None = None
        self.gso = False
        self.gro = False
        self.io = IoStats()
        self.errors = 0  # ICMP errors and failed sends, ignored (timers test the path)
        self.closed: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self._reading = False
        self._backlog: list[tuple[bytes, Address]] = []
        self._writer_armed = False
        self.transport: asyncio.DatagramTransport | None = None  # fallback path only
        #: told of ICMP port unreachable: the addresses concerned, or None when unknown
        self.on_unreachable: Callable[[set[Address] | None], None] | None = None
        self._recverr = False  # the kernel queues ICMP errors for us (report_unreachable)
        #: ask the kernel whether another datagram waits (FIONREAD) before reading again,
        #: instead of reading until EAGAIN: the failing read costs a system call, an
        #: exception and a traceback per wake-up, one per message on a request/response
        #: connection (set by ``start`` where the platform has the ioctl)
        self._ask_pending = False
        self._inq = array.array("i", [0])
        self._fd = -1  # the socket's descriptor, for FIONREAD (a method call per wake-up)
        #: MAX_READS_PER_WAKEUP when this socket was made (a module global that is not Final,
        #: so that tests can lower it, is a dictionary lookup per read compiled)
        self._max_reads = MAX_READS_PER_WAKEUP

    @property
    def family(self) -> int:
        return int(self.sock.family) if self.sock is not None else socket.AF_INET

    @property
    def backlog(self) -> int:
        """Datagrams waiting for room in the kernel's send buffer."""
        return len(self._backlog)

    async def start(self, sock: socket.socket, *, offload: bool) -> None:
        """Take over ``sock`` (bound, non-blocking) and start reading from it."""
        self.sock = sock
        self._fd = sock.fileno()
        self.local_addr = sock.getsockname()
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        if offload and sys.platform.startswith("linux"):
            self.gso = _probe_gso(sock)
            self.gro = _probe_gro(sock)
        self._ask_pending = _IOCTL is not None
        self._more_waiting(self._fd)  # (an ioctl that fails here turns the question off)
        try:
            self.loop.add_reader(sock.fileno(), self.on_readable)
            self._reading = True
        except NotImplementedError:  # a loop without readiness callbacks: use a transport
            self.gso = self.gro = False
            self.transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _FallbackProtocol(self), sock=sock)

    # ------------------------------------------------------------------ receiving
    def pause_reading(self) -> None:
        """Stop taking datagrams off the socket (they queue in, then overflow, the kernel)."""
        if self.transport is not None:
            self.transport.pause_reading()  # type: ignore[attr-defined]  # (selector's has it)
        elif self._reading and self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()  # type: ignore[attr-defined]
        elif not self._reading and not self._closing and self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self.on_readable)
            self._reading = True

    def receive_batch(self) -> list[tuple[bytes, Address]]:
        """Every datagram waiting now (at most MAX_READS_PER_WAKEUP system calls), GRO
        batches split into their datagrams, in arrival order."""
        sock = self.sock
        out: list[tuple[bytes, Address]] = []
        if sock is None:
            return out
        io = self.io
        gro = self.gro
        fd = self._fd if self._ask_pending else -1
        for i in range(self._max_reads):
            if i and fd >= 0 and not self._more_waiting(fd):
                break  # (the first read: the loop said the socket is readable)
            try:
                if gro:
                    data, ancdata, _, addr = sock.recvmsg(MAX_UDP_PAYLOAD + 1, _CMSG_SPACE)
                else:
                    data, addr = sock.recvfrom(MAX_UDP_PAYLOAD + 1)
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
                    out.append((data[pos:pos + size], addr))
            else:
                out.append((data, addr))
        io.datagrams_in += len(out)
        return out

    def _more_waiting(self, fd: int) -> bool:
        """Whether a datagram waits on ``fd``. False when the ioctl failed: the caller stops
        reading for now, and later wake-ups read until a read fails."""
        ioctl = _IOCTL
        if ioctl is None:
            return False
        inq = self._inq
        try:
            ioctl(fd, _FIONREAD_REQUEST, inq)
        except OSError:
            self._ask_pending = False
            return False
        return inq[0] > 0

    def report_unreachable(self) -> bool:
        """Ask the kernel to report ICMP errors for datagrams this (unconnected) socket sent
        (``IP_RECVERR``): a client whose SYN finds no listener then fails at once. Linux
        only; elsewhere (or on the fallback path) the handshake simply times out."""
        sock = self.sock
        if sock is None or not sys.platform.startswith("linux") or self.transport is not None:
            return False
        level, option = ((socket.IPPROTO_IPV6, _IPV6_RECVERR) if sock.family == socket.AF_INET6
                         else (socket.IPPROTO_IP, _IP_RECVERR))
        try:
            sock.setsockopt(level, option, 1)
        except OSError:
            return False
        self._recverr = True
        return True

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (e.g. port unreachable from a stale NAT mapping) never close anything
        here; a refusal is passed to ``on_unreachable`` with the addresses it concerns (None:
        unknown), and the owner decides (only a handshaking client acts on it)."""
        self.errors += 1
        logger.debug("socket error: %s", exc)
        if isinstance(exc, ConnectionRefusedError) and self.on_unreachable is not None:
            self.on_unreachable(self._unreachable_addresses())

    def _unreachable_addresses(self) -> set[Address] | None:
        """Destinations of the datagrams the kernel's error queue reports (IP_RECVERR)."""
        sock = self.sock
        if not self._recverr or sock is None:
            return None
        found: set[Address] = set()
        for _ in range(64):
            try:
                _, _, _, addr = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:  # (BlockingIOError: the queue is empty)
                break
            if addr:
                found.add(addr)
        return found

    # ------------------------------------------------------------------ sending
    def send(self, datagrams: list[tuple[bytes, Address]]) -> None:
        """Send ``datagrams`` in order, coalescing same-size runs to one address (GSO)."""
        if self._closing:
            return
        if self._backlog:
            self._queue(datagrams, 0)
            return
        if self.transport is not None:
            for data, addr in datagrams:
                self.transport.sendto(data, addr)
            self.io.send_calls += len(datagrams)
            self.io.datagrams_out += len(datagrams)
            return
        sock = self.sock
        if sock is None:
            return
        io = self.io
        n = len(datagrams)
        if n == 1:  # a request or a reply: one datagram, no run to look for
            data, addr = datagrams[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                io.send_would_block += 1
                self._queue(datagrams, 0)
                return
            except OSError as failed:  # (one name per except variable: see performance.md)
                self.errors += 1
                logger.debug("send to %s failed: %s", addr, failed)
            io.send_calls += 1
            io.datagrams_out += 1
            return
        i = 0
        while i < n:
            data, addr = datagrams[i]
            size = len(data)
            j = i + 1
            if self.gso:
                limit = min(n, i + MAX_SEGMENTS, i + MAX_UDP_PAYLOAD // max(size, 1))
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
                self.errors += 1  # e.g. a vanished interface: timers test the path
                logger.debug("send to %s failed: %s", addr, exc)
            io.send_calls += 1
            io.datagrams_out += j - i
            i = j

    def _queue(self, datagrams: list[tuple[bytes, Address]], start: int) -> None:
        """The socket's send buffer is full: keep the rest until it is writable again."""
        room = MAX_BACKLOG - len(self._backlog)
        rest = datagrams[start:start + max(room, 0)] if start or room < len(datagrams) \
            else datagrams
        self.io.send_dropped += len(datagrams) - start - len(rest)
        self._backlog.extend(rest)
        if not self._writer_armed and self.sock is not None and not self._closing:
            self.loop.add_writer(self.sock.fileno(), self.on_writable)
            self._writer_armed = True

    def on_writable(self) -> None:
        """The kernel has room again: send the backlog (in order, before anything newer)."""
        backlog, self._backlog = self._backlog, []
        if self.sock is not None:
            self.loop.remove_writer(self.sock.fileno())
        self._writer_armed = False
        if backlog and not self._closing:
            self.send(backlog)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Close the socket; queued datagrams are dropped. :attr:`closed` resolves."""
        if self._closing:
            return
        self._closing = True
        self._backlog.clear()
        if self.transport is not None:
            self.transport.close()  # connection_lost resolves closed
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
        if not self.closed.done():
            self.closed.set_result(None)


class _FallbackProtocol(asyncio.DatagramProtocol):
    """Feeds a UdpSocket from a datagram transport (loops without ``add_reader``)."""

    def __init__(self, udp: UdpSocket) -> None:
        self.udp = udp

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.udp.io.recv_calls += 1
        self.udp.io.datagrams_in += 1
        self.udp.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.udp.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.udp.closed.done():
            self.udp.closed.set_result(None)


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
