"""``run_server``: one port served by N worker processes, each packet steered by its CID.

One Python process uses one core. To use every core, a supervisor binds N UDP sockets to the
same address with ``SO_REUSEPORT`` (their order in the group is the bind order), attaches a
classic-BPF program to the group once (:mod:`roamlink.io.steering`), and forks N workers, each
running its own event loop on its inherited socket. Every CID a worker issues names that
worker, and the program makes the kernel deliver each short-header packet to the socket the
CID names -- also after the client's NAT re-mapped it, which the kernel's usual 4-tuple hash
would not survive. Handshakes (long headers) have no CID of ours yet: they are steered by the
client's CID, so every copy of a SYN (retransmitted or replayed, from any address) reaches
one worker.

Correctness never depends on the filter: where it cannot be attached (not Linux, a seccomp
profile, ``kernel_steering=False``), a worker that reads a packet another worker owns (by the
same rule) hands it over through that worker's inbox, a Unix datagram socket pair the
supervisor made before forking. Hand-overs are counted (:func:`worker_stats`).

The supervisor holds every socket and inbox open for the server's whole life, so a worker that
dies is restarted into the same slot (same group index, same inbox) and the packets queued for
it meanwhile are read by its successor. SIGINT or SIGTERM stops every worker cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FrameType

from ..config import Config
from ..core.events import Address
from ..errors import RoamlinkError
from ..io.endpoint import Endpoint
from ..io.steering import (
    MAX_WORKERS,
    SO_REUSEPORT,
    CidLayout,
    attach_reuseport_filter,
    reuseport_program,
)
from ..keys import KeyPair
from .listener import Listener, make_server_crypto
from .stream import Stream

logger = logging.getLogger("roamlink.workers")

Handler = Callable[[Stream], Awaitable[None]]

#: A worker gets this long to close its connections after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: A worker that dies sooner than this after its start is restarted only after this delay
#: (a handler that fails on import must not turn the supervisor into a fork loop).
_RESTART_HOLD_OFF = 1.0
#: Handed-over datagrams read per wake-up, so one busy inbox cannot starve the loop.
_MAX_INBOX_READS = 256
_INBOX_BUFFER = 4 * 1024 * 1024
_ADDR_HEADER = struct.Struct("!BBHII")  # address tuple length, host length, port, flow, scope


def default_workers() -> int:
    """Workers when none is given: one per CPU on Linux (the only platform that can steer
    ``SO_REUSEPORT`` groups), else 1."""
    if sys.platform.startswith("linux"):
        return max(1, os.cpu_count() or 1)
    return 1


@dataclass(frozen=True)
class ServerInfo:
    """What ``run_server`` tells its ``on_ready`` callback once the sockets are bound."""

    address: Address
    workers: int
    #: the filter is attached: the kernel steers short headers (else workers hand over)
    kernel_steering: bool


@dataclass
class WorkerStats:
    """Counters of one worker process (see :func:`worker_stats`)."""

    handed_out: int = 0  # datagrams read here that another worker owns, passed on
    handed_in: int = 0  # datagrams another worker read for us
    handover_dropped: int = 0  # a full inbox refused a hand-over (loss recovery resends)


@dataclass
class _Worker:
    """This process's slot, once it runs as a worker."""

    index: int
    workers: int
    kernel_steering: bool
    stats: WorkerStats = field(default_factory=WorkerStats)


_current: _Worker | None = None


def worker_index() -> int | None:
    """The index of the worker this code runs in (0..N-1), or None outside ``run_server``."""
    return _current.index if _current is not None else None


def worker_stats() -> dict[str, int]:
    """This worker's hand-over counters (all zero outside ``run_server``)."""
    stats = _current.stats if _current is not None else WorkerStats()
    return dict(vars(stats))


# --------------------------------------------------------------------------- hand-over codec
def encode_handover(data: bytes, addr: Address) -> bytes:
    """A datagram and its source address as one inbox message."""
    host = str(addr[0]).encode()
    flow = int(addr[2]) if len(addr) > 2 else 0
    scope = int(addr[3]) if len(addr) > 3 else 0
    return _ADDR_HEADER.pack(len(addr), len(host), int(addr[1]), flow, scope) + host + data


def decode_handover(msg: bytes) -> tuple[bytes, Address]:
    arity, host_len, port, flow, scope = _ADDR_HEADER.unpack_from(msg)
    start = _ADDR_HEADER.size
    host = msg[start:start + host_len].decode()
    addr: Address = (host, port, flow, scope) if arity == 4 else (host, port)
    return msg[start + host_len:], addr


# --------------------------------------------------------------------------- public entry
def run_server(handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
               workers: int | None = None, key: KeyPair | None = None,
               config: Config | None = None,
               kernel_steering: bool = True,
               on_ready: Callable[[ServerInfo], None] | None = None) -> None:
    """Serve roamlink on ``host:port`` with ``workers`` processes until SIGINT/SIGTERM.

    Blocking, in the style of ``uvicorn.run``: ``await handler(stream)`` runs in a worker for
    every stream it accepts, and the stream is closed when the handler returns. ``workers``
    defaults to :func:`default_workers`; with 1 the server runs in this process. ``key`` is the
    server's key pair for the encrypted handshake. ``kernel_steering=False`` leaves the
    filter off (every worker then hands foreign packets over; for tests and comparisons).
    ``on_ready`` is called in the supervisor once the port is bound (e.g. to learn port 0).
    """
    config = config or Config()
    if key is None and not config.insecure_plaintext:
        # one key for every worker (clients pin one), made before the workers fork
        key = KeyPair.generate()
        logger.info("no server key given: using the ephemeral public key %s", key.public)
    count = default_workers() if workers is None else workers
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, got {count}")
    if count > 1 and not hasattr(os, "fork"):
        raise ValueError("several workers need os.fork (use workers=1 on this platform)")
    CidLayout.from_config(config, count)  # reject a layout that cannot carry the worker
    socks = _bind_group(host, port, count)
    try:
        steered = False
        if count > 1 and kernel_steering:
            steered = _attach_filter(socks[0], CidLayout.from_config(config, count))
        info = ServerInfo(socks[0].getsockname(), count, steered)
        if count == 1:
            if on_ready is not None:
                on_ready(info)
            _run_in_process(handler, socks[0], config, key)
            return
        _Supervisor(handler, socks, config, key, steered, on_ready, info).run()
    finally:
        for sock in socks:
            sock.close()


def _bind_group(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` UDP sockets on one address; with several, a ``SO_REUSEPORT`` group whose
    indices are this bind order (port 0: the first picks the port, the rest join it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, proto, _, sockaddr = infos[0]
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)
            socks.append(sock)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            if not socks[1:]:
                sockaddr = sock.getsockname()  # the port the first one got
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _attach_filter(sock: socket.socket, layout: CidLayout) -> bool:
    if not sys.platform.startswith("linux"):
        logger.info("no SO_ATTACH_REUSEPORT_CBPF here: workers hand packets over")
        return False
    try:
        attach_reuseport_filter(sock, reuseport_program(layout))
    except OSError as exc:
        logger.warning("cannot attach the steering filter (%s): workers hand packets over",
                       exc)
        return False
    return True


def _run_in_process(handler: Handler, sock: socket.socket, config: Config,
                    key: KeyPair | None) -> None:
    global _current
    _current = _Worker(0, 1, False)
    try:
        asyncio.run(_serve(handler, sock, config, key, None, []))
    except KeyboardInterrupt:
        pass
    finally:
        _current = None


# --------------------------------------------------------------------------- supervisor
class _Supervisor:
    def __init__(self, handler: Handler, socks: list[socket.socket], config: Config,
                 key: KeyPair | None, steered: bool, on_ready: Callable[[ServerInfo], None] | None,
                 info: ServerInfo) -> None:
        self.handler = handler
        self.socks = socks
        self.config = config
        self.key = key
        self.steered = steered
        self.on_ready = on_ready
        self.info = info
        self.count = len(socks)
        self.inboxes: list[tuple[socket.socket, socket.socket]] = []
        self.pids: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> start time
        self.restart_at: dict[int, float] = {}  # slot -> when to restart it
        self.stop_signal: int | None = None

    def run(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.getsignal(sig)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            signal.signal(signal.SIGINT, self._on_stop)
            signal.signal(signal.SIGTERM, self._on_stop)
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select
            self._make_inboxes()
            if self.on_ready is not None:
                self.on_ready(self.info)
            for slot in range(self.count):
                self._spawn(slot, wake_r, wake_w)
            while self.stop_signal is None:
                timeout = 1.0
                if self.restart_at:
                    timeout = max(0.0, min(self.restart_at.values()) - time.monotonic())
                with contextlib.suppress(InterruptedError):
                    select.select([wake_r], [], [], timeout)
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                self._reap()
                now = time.monotonic()
                for slot, at in list(self.restart_at.items()):
                    if at <= now and self.stop_signal is None:
                        del self.restart_at[slot]
                        self._spawn(slot, wake_r, wake_w)
            self._stop_all()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            for a, b in self.inboxes:
                a.close()
                b.close()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum

    def _make_inboxes(self) -> None:
        """One Unix datagram pair per worker: it reads end 0, any worker writes to end 1."""
        for _ in range(self.count):
            rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for sock in (rx, tx):
                sock.setblocking(False)
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, opt, _INBOX_BUFFER)
            self.inboxes.append((rx, tx))

    def _spawn(self, slot: int, wake_r: int, wake_w: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            self.pids[pid] = slot
            self.started[slot] = time.monotonic()
            logger.info("worker %d started (pid %d)", slot, pid)
            return
        code = 1
        try:  # the child: never return into the supervisor's code
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            code = self._worker(slot)
        except BaseException:
            logger.exception("worker %d failed", slot)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _worker(self, slot: int) -> int:
        global _current
        for i, sock in enumerate(self.socks):
            if i != slot:
                sock.close()  # (only this process's copy: the supervisor keeps them)
        for i, (rx, _) in enumerate(self.inboxes):
            if i != slot:
                rx.close()
        _current = _Worker(slot, self.count, self.steered)
        inbox = self.inboxes[slot][0]
        outboxes = [tx for _, tx in self.inboxes]
        asyncio.run(_serve(self.handler, self.socks[slot], self.config, self.key, inbox,
                           outboxes))
        return 0

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            if self.stop_signal is not None:
                continue
            lived = time.monotonic() - self.started.get(slot, 0.0)
            logger.warning("worker %d (pid %d) ended (%s); restarting it", slot, pid,
                           _describe_status(status))
            delay = _RESTART_HOLD_OFF if lived < _RESTART_HOLD_OFF else 0.0
            self.restart_at[slot] = time.monotonic() + delay

    def _stop_all(self) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.02)
            else:
                self.pids.pop(pid, None)
        for pid in list(self.pids):
            logger.warning("worker pid %d did not stop in %.0f s; killing it", pid, STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# --------------------------------------------------------------------------- worker
async def _serve(handler: Handler, sock: socket.socket, config: Config, key: KeyPair | None,
                 inbox: socket.socket | None, outboxes: list[socket.socket]) -> None:
    """One worker's life: accept streams on ``sock`` until SIGINT/SIGTERM."""
    worker = _current
    assert worker is not None
    loop = asyncio.get_running_loop()
    endpoint = await Endpoint.from_socket(config, sock, accept_new=True,
                                          server_crypto=make_server_crypto(config, key))
    if worker.workers > 1:
        layout = CidLayout.from_config(config, worker.workers)
        endpoint.dispatcher.cid_source = layout.generator(worker.index)
        endpoint.dispatcher.foreign_cid = _HandOver(layout, worker, outboxes).offer
    listener = Listener(endpoint)
    if inbox is not None:
        loop.add_reader(inbox.fileno(), _read_inbox, inbox, endpoint, worker.stats)
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # (loops without signal support)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
    tasks: set[asyncio.Task[None]] = set()

    async def accept() -> None:
        async for stream in listener:
            task = asyncio.create_task(_run_handler(handler, stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.create_task(accept())
    try:
        await stop.wait()
    finally:
        acceptor.cancel()
        if inbox is not None:
            loop.remove_reader(inbox.fileno())
        listener.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), STOP_GRACE - 2.0)
        for task in tasks:
            task.cancel()
        endpoint.close()


async def _run_handler(handler: Handler, stream: Stream) -> None:
    try:
        await handler(stream)
    except asyncio.CancelledError:
        stream.abort()
        raise
    except RoamlinkError as exc:  # the peer reset, timed out...: its business, not a bug
        logger.info("connection %s ended: %s", stream.connection_id, exc)
        stream.abort()
        return
    except Exception:
        logger.exception("handler failed on connection %s", stream.connection_id)
        stream.abort()
        return
    stream.close()


class _HandOver:
    """Passes a datagram that another worker owns into that worker's inbox."""

    def __init__(self, layout: CidLayout, worker: _Worker,
                 outboxes: list[socket.socket]) -> None:
        self.layout = layout
        self.me = worker.index
        self.stats = worker.stats
        self.outboxes = outboxes

    def offer(self, data: bytes, addr: Address) -> bool:
        owner = self.layout.datagram_worker(data)
        if owner is None or owner == self.me:
            return False  # ours (a new SYN, or a connection that ended), or unparseable
        try:
            self.outboxes[owner].send(encode_handover(data, addr))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                logger.debug("hand-over to worker %d failed: %s", owner, exc)
            self.stats.handover_dropped += 1
            return True
        self.stats.handed_out += 1
        return True


def _read_inbox(inbox: socket.socket, endpoint: Endpoint, stats: WorkerStats) -> None:
    for _ in range(_MAX_INBOX_READS):
        try:
            msg = inbox.recv(70000)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("inbox read failed: %s", exc)
            return
        try:
            data, addr = decode_handover(msg)
        except (struct.error, UnicodeDecodeError):
            continue
        stats.handed_in += 1
        endpoint.receive_handed_over(data, addr)
