"""User-space UDP network-impairment relay (a small ``netem`` stand-in for loopback tests).

The kernel on the test machines has no ``tc netem``, so tests and benchmarks put this relay
between a UDP client and server.  It behaves like a lossy, delaying NAT box: every distinct
client source address gets its own upstream socket (a "mapping"), so the target sees one source
per client address, and :meth:`Relay.rebind` makes every client look as if its NAT forgot the
mapping (new source port towards the target; replies to the old port are dropped).

Layout: :class:`Impairment` is the configuration, :class:`ImpairmentModel` is the pure,
seeded decision logic (no sockets, no clocks: ``decide(now, size)`` returns release times), and
:class:`Relay` is the socket part.  Sockets are driven with ``loop.add_reader`` and delayed
datagrams wait in one heap per relay served by a single ``loop.call_at`` timer, so the
per-datagram cost stays a few dictionary look-ups and a ``sendto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import re
import socket
from collections import deque
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "Impairment",
    "ImpairmentModel",
    "Relay",
    "RelayCounters",
    "parse_duration",
    "parse_percent",
    "parse_rate",
    "start_relay",
]

logger = logging.getLogger(__name__)

_MAX_DATAGRAM = 65535
_BATCH = 64  # datagrams read per readiness callback before yielding to the loop
_SOCKET_BUFFER = 4 * 1024 * 1024


# ------------------------------------------------------------------------------ parsers
_NUMBER = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
_DURATION_RE = re.compile(_NUMBER + r"([a-zA-Zµ]*)\s*$")
_DURATION_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "usec": 1e-6,
    "ns": 1e-9,
    "m": 60.0,
    "min": 60.0,
}


def parse_duration(text: str) -> float:
    """Parse ``"20ms"``, ``"1.5s"``, ``"250us"`` (also ns, min) into seconds.

    A bare number is rejected (except ``0``) because ``--delay 20`` is ambiguous.
    """
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"invalid duration {text!r}: expected e.g. '20ms', '1.5s', '250us'")
    value = float(m.group(1))
    unit = m.group(2).lower()
    if not unit:
        if value == 0.0:
            return 0.0
        raise ValueError(f"invalid duration {text!r}: missing unit (s, ms, us, ns)")
    scale = _DURATION_UNITS.get(unit)
    if scale is None:
        raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (s, ms, us, ns)")
    return value * scale


_PERCENT_RE = re.compile(_NUMBER + r"(%?)\s*$")


def parse_percent(text: str) -> float:
    """Parse ``"1%"`` or a fraction ``"0.01"`` into a probability in [0, 1]."""
    m = _PERCENT_RE.match(text)
    if m is None:
        raise ValueError(f"invalid probability {text!r}: expected e.g. '1%' or '0.01'")
    value = float(m.group(1))
    if m.group(2):
        if value > 100.0:
            raise ValueError(f"invalid probability {text!r}: more than 100%")
        return value / 100.0
    if value > 1.0:
        raise ValueError(
            f"invalid probability {text!r}: a bare number is a fraction in [0, 1]; "
            f"write '{m.group(1)}%' for a percentage"
        )
    return value


_RATE_RE = re.compile(_NUMBER + r"([a-zA-Z]*)(/s)?\s*$")
_RATE_PREFIX = {
    "": 1.0,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1024.0,
    "mi": 1024.0**2,
    "gi": 1024.0**3,
}


def parse_rate(text: str) -> float:
    """Parse ``"50mbit"``, ``"10Mbit/s"``, ``"1gbit"``, ``"800kbit"`` into bits per second.

    Follows tc: ``...bit`` is bits per second (decimal prefixes, ``kibit`` etc. binary),
    ``...bps`` is BYTES per second.  A bare number is rejected as ambiguous.
    """
    m = _RATE_RE.match(text)
    if m is None:
        raise ValueError(f"invalid rate {text!r}: expected e.g. '50mbit', '10Mbit/s', '800kbit'")
    value = float(m.group(1))
    unit = m.group(2).lower()
    if not unit:
        raise ValueError(f"invalid rate {text!r}: missing unit (bit, kbit, mbit, gbit)")
    if unit.endswith("bit"):
        prefix, scale = unit[:-3], 1.0
    elif unit.endswith("bps"):
        prefix, scale = unit[:-3], 8.0
    else:
        raise ValueError(f"invalid rate {text!r}: unknown unit {unit!r} (kbit, mbit, gbit)")
    mult = _RATE_PREFIX.get(prefix)
    if mult is None:
        raise ValueError(f"invalid rate {text!r}: unknown prefix in {unit!r}")
    rate = value * mult * scale
    if rate <= 0.0:
        raise ValueError(f"invalid rate {text!r}: must be positive")
    return rate


# -------------------------------------------------------------------------- impairment
#: ``--jitter-mode`` values: independent per-datagram jitter (can reorder) or in-order jitter.
JITTER_MODES = ("reorder", "fifo")


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of the relay does to datagrams.

    delay/jitter are seconds (each datagram waits ``delay + U(-jitter, +jitter)``, never less
    than zero).  ``jitter_mode`` says what jitter does to order: ``"reorder"`` (the default,
    as netem) draws each datagram's delay independently, so a datagram can overtake the one
    before it; ``"fifo"`` never releases a datagram before the one that arrived ahead of it in
    the same direction, as a queue of varying depth on a cellular or Wi-Fi link does (the
    delay varies, the order holds).  loss/reorder/duplicate are probabilities.  A
    reordered datagram is held back an extra ``reorder_gap`` seconds so later ones overtake
    it.  rate (bits/s of UDP payload) adds serialization delay through a FIFO holding at most
    ``queue_packets`` datagrams; arrivals that find it full are dropped (tail drop).
    seed makes the decisions reproducible.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    rate: float | None = None
    queue_packets: int = 1000
    seed: int | None = None
    reorder_gap: float = 0.005
    jitter_mode: str = "reorder"

    def __post_init__(self) -> None:
        if self.jitter_mode not in JITTER_MODES:
            raise ValueError(f"jitter_mode must be one of {', '.join(JITTER_MODES)}, "
                             f"got {self.jitter_mode!r}")
        for name in ("delay", "jitter", "reorder_gap"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {v!r}")
        for name in ("loss", "reorder", "duplicate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        r = self.rate
        if r is not None and (not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0):
            raise ValueError(f"rate must be None or a positive number of bits/s, got {r!r}")
        q = self.queue_packets
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise ValueError(f"queue_packets must be an integer >= 1, got {q!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int)):
            raise ValueError(f"seed must be None or an int, got {s!r}")

    @property
    def is_identity(self) -> bool:
        """True when datagrams pass untouched (lets the relay skip the model entirely)."""
        return (
            self.delay == 0.0
            and self.jitter == 0.0
            and self.loss == 0.0
            and self.reorder == 0.0
            and self.duplicate == 0.0
            and self.rate is None
        )


class ImpairmentModel:
    """Pure decision logic for one direction: no sockets, no clock, seeded randomness.

    ``decide(now, size)`` returns the release times of the datagram: ``[]`` when dropped, one
    time normally, two when duplicated.  Counters say why.  Calls must have non-decreasing
    ``now`` for the rate limiter to be meaningful.
    """

    __slots__ = (
        "impairment",
        "rng",
        "_link_free",
        "_in_queue",
        "dropped_loss",
        "dropped_queue",
        "duplicated",
        "reordered",
        "_last_release",
    )

    def __init__(self, impairment: Impairment, rng: random.Random | None = None) -> None:
        self.impairment = impairment
        self.rng = rng if rng is not None else random.Random(impairment.seed)
        self._link_free = -math.inf  # when the serializer finishes its current backlog
        self._in_queue: deque[float] = deque()  # departure times of datagrams still queued
        self.dropped_loss = 0
        self.dropped_queue = 0
        self.duplicated = 0
        self.reordered = 0
        self._last_release = -math.inf  # fifo jitter: the previous datagram's release time

    def decide(self, now: float, size: int) -> list[float]:
        imp = self.impairment
        rnd = self.rng.random
        if imp.loss and rnd() < imp.loss:
            self.dropped_loss += 1
            return []
        base = now
        if imp.rate is not None:
            q = self._in_queue
            while q and q[0] <= now:
                q.popleft()
            if len(q) >= imp.queue_packets:
                self.dropped_queue += 1
                return []
            start = self._link_free if self._link_free > now else now
            base = start + size * 8.0 / imp.rate
            self._link_free = base
            q.append(base)
        t = base + imp.delay
        if imp.jitter:
            t = max(base, t + imp.jitter * (2.0 * rnd() - 1.0))
            if imp.jitter_mode == "fifo":
                if t < self._last_release:
                    t = self._last_release  # never overtake the datagram ahead
                self._last_release = t
        if imp.reorder and rnd() < imp.reorder:
            self.reordered += 1
            t += imp.reorder_gap
        if imp.duplicate and rnd() < imp.duplicate:
            self.duplicated += 1
            t2 = base + imp.delay
            if imp.jitter:
                t2 = max(base, t2 + imp.jitter * (2.0 * rnd() - 1.0))
                if imp.jitter_mode == "fifo":
                    t2 = max(t2, t)  # the copy follows the original
                    self._last_release = t2
            return [t, t2]
        return [t]


# ------------------------------------------------------------------------------- relay
@dataclass(frozen=True)
class RelayCounters:
    """Snapshot of a relay's counters.  "up" is client -> target, "down" is target -> client.

    ``forwarded`` counts datagrams actually handed to the kernel (duplicates included);
    dropped_loss/dropped_queue/duplicated/reordered sum both directions; dropped_send counts
    datagrams the kernel refused (full socket buffer, unreachable) or whose mapping vanished.
    """

    up_received: int = 0
    up_received_bytes: int = 0
    up_forwarded: int = 0
    up_forwarded_bytes: int = 0
    down_received: int = 0
    down_received_bytes: int = 0
    down_forwarded: int = 0
    down_forwarded_bytes: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    dropped_send: int = 0
    duplicated: int = 0
    reordered: int = 0
    rebinds: int = 0
    mappings: int = 0


@dataclass(eq=False, slots=True)
class _Mapping:
    """One client address and the upstream socket standing for it towards the target."""

    client: tuple[object, ...]
    sock: socket.socket | None = None
    fd: int = -1


@dataclass(slots=True)
class _Stats:
    up_received: int = 0
    up_received_bytes: int = 0
    up_forwarded: int = 0
    up_forwarded_bytes: int = 0
    down_received: int = 0
    down_received_bytes: int = 0
    down_forwarded: int = 0
    down_forwarded_bytes: int = 0
    dropped_send: int = 0
    rebinds: int = 0


def _resolve(addr: tuple[str, int]) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    infos = socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {addr!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, tuple(sockaddr)


def _tune(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)


class Relay:
    """A running relay; create it with :func:`start_relay`.

    Not thread-safe: use it from the event loop that started it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen_sock: socket.socket,
        target: tuple[object, ...],
        target_family: socket.AddressFamily,
        up: Impairment,
        down: Impairment,
        rebind_every: float | None,
    ) -> None:
        self._loop = loop
        self._sock = listen_sock
        self._fd = listen_sock.fileno()
        self._target = target
        self._target_family = target_family
        self.up_impairment = up
        self.down_impairment = down
        # One RNG stream per direction, so one direction's traffic does not change the other's
        # decisions; a shared (defaulted) seed is perturbed for the reverse direction.
        self._up = ImpairmentModel(up, random.Random(up.seed))
        down_seed = down.seed
        if down is up and down_seed is not None:
            down_seed ^= 0x5DEECE66D
        self._down = ImpairmentModel(down, random.Random(down_seed))
        self._up_identity = up.is_identity
        self._down_identity = down.is_identity
        self._mappings: dict[tuple[object, ...], _Mapping] = {}
        self._stats = _Stats()
        # Pending releases: (time, seq, is_up, mapping, data); seq keeps FIFO among equal times.
        self._heap: list[tuple[float, int, bool, _Mapping, bytes]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._rebind_timer: asyncio.TimerHandle | None = None
        self._rebind_every = rebind_every
        self._closed = False
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        self.local_addr: tuple[str, int] = tuple(listen_sock.getsockname()[:2])
        loop.add_reader(self._fd, self._on_listen_readable)
        if rebind_every is not None:
            self._rebind_timer = loop.call_later(rebind_every, self._periodic_rebind)

    # -- public -----------------------------------------------------------------------
    @property
    def target(self) -> tuple[str, int]:
        return (str(self._target[0]), int(self._target[1]))  # type: ignore[call-overload]

    @property
    def closed(self) -> bool:
        return self._closed

    def counters(self) -> RelayCounters:
        s, u, d = self._stats, self._up, self._down
        return RelayCounters(
            up_received=s.up_received,
            up_received_bytes=s.up_received_bytes,
            up_forwarded=s.up_forwarded,
            up_forwarded_bytes=s.up_forwarded_bytes,
            down_received=s.down_received,
            down_received_bytes=s.down_received_bytes,
            down_forwarded=s.down_forwarded,
            down_forwarded_bytes=s.down_forwarded_bytes,
            dropped_loss=u.dropped_loss + d.dropped_loss,
            dropped_queue=u.dropped_queue + d.dropped_queue,
            dropped_send=s.dropped_send,
            duplicated=u.duplicated + d.duplicated,
            reordered=u.reordered + d.reordered,
            rebinds=s.rebinds,
            mappings=len(self._mappings),
        )

    def mapping_ports(self) -> dict[tuple[str, int], int]:
        """Client address -> local port of its upstream socket (what the target sees)."""
        out: dict[tuple[str, int], int] = {}
        for client, m in self._mappings.items():
            if m.sock is not None:
                key = (str(client[0]), int(client[1]))  # type: ignore[call-overload]
                out[key] = int(m.sock.getsockname()[1])
        return out

    def rebind(self) -> None:
        """Give every mapping a fresh upstream socket (new source port seen by the target).

        The old socket is closed, so replies the target sends to it are lost, as with a NAT
        that forgot the mapping.  Datagrams already in flight towards the target go out on the
        new socket.
        """
        if self._closed:
            return
        for m in list(self._mappings.values()):
            old_sock, old_fd = m.sock, m.fd
            try:
                # Open the new socket before closing the old one so the port cannot be reused.
                self._open_upstream(m)
            except OSError:
                logger.exception("relay: cannot open upstream socket for %r", m.client)
                del self._mappings[m.client]
                m.sock, m.fd = old_sock, old_fd
                self._close_upstream(m)
                continue
            if old_sock is not None:
                self._loop.remove_reader(old_fd)
                old_sock.close()
        self._stats.rebinds += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for h in (self._timer, self._rebind_timer):
            if h is not None:
                h.cancel()
        self._timer = self._rebind_timer = None
        self._heap.clear()
        for m in self._mappings.values():
            self._close_upstream(m)
        self._mappings.clear()
        self._loop.remove_reader(self._fd)
        self._sock.close()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    # -- mappings ---------------------------------------------------------------------
    def _open_upstream(self, m: _Mapping) -> None:
        sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _tune(sock)
            # connect() binds an ephemeral port and makes the kernel drop datagrams that do
            # not come from the target.
            sock.connect(self._target)
        except BaseException:
            sock.close()
            raise
        m.sock = sock
        m.fd = sock.fileno()
        self._loop.add_reader(m.fd, self._on_upstream_readable, m)

    def _close_upstream(self, m: _Mapping) -> None:
        if m.sock is None:
            return
        self._loop.remove_reader(m.fd)
        m.sock.close()
        m.sock = None
        m.fd = -1

    def _mapping_for(self, client: tuple[object, ...]) -> _Mapping | None:
        m = _Mapping(client)
        try:
            self._open_upstream(m)
        except OSError:
            logger.exception("relay: cannot open upstream socket for %r", client)
            return None
        self._mappings[client] = m
        logger.debug("relay: new mapping %r -> port %s", client, m.sock and m.sock.getsockname())
        return m

    def _periodic_rebind(self) -> None:
        if self._closed or self._rebind_every is None:
            return
        self.rebind()
        self._rebind_timer = self._loop.call_later(self._rebind_every, self._periodic_rebind)

    # -- datagram path ----------------------------------------------------------------
    def _on_listen_readable(self) -> None:
        # Hot path: counters are accumulated in locals and stored once per batch.
        recvfrom = self._sock.recvfrom
        get = self._mappings.get
        identity = self._up_identity
        n = nbytes = fwd = fwd_bytes = failed = 0
        try:
            for _ in range(_BATCH):
                try:
                    data, client = recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # e.g. an ICMP error queued on the socket; nothing to forward
                size = len(data)
                n += 1
                nbytes += size
                m = get(client)
                if m is None:
                    m = self._mapping_for(client)
                    if m is None:
                        failed += 1
                        continue
                if not identity:
                    self._schedule(self._up, True, m, data)
                    continue
                sock = m.sock
                if sock is None:
                    failed += 1
                    continue
                try:
                    sock.send(data)
                except OSError:
                    failed += 1
                    continue
                fwd += 1
                fwd_bytes += size
        finally:
            st = self._stats
            st.up_received += n
            st.up_received_bytes += nbytes
            st.up_forwarded += fwd
            st.up_forwarded_bytes += fwd_bytes
            st.dropped_send += failed

    def _on_upstream_readable(self, m: _Mapping) -> None:
        sock = m.sock
        if sock is None:
            return
        recv = sock.recv
        sendto = self._sock.sendto
        client = m.client
        identity = self._down_identity
        n = nbytes = fwd = fwd_bytes = failed = 0
        try:
            for _ in range(_BATCH):
                try:
                    data = recv(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # ECONNREFUSED from an ICMP port-unreachable: target not listening
                size = len(data)
                n += 1
                nbytes += size
                if not identity:
                    self._schedule(self._down, False, m, data)
                    continue
                try:
                    sendto(data, client)
                except OSError:
                    failed += 1
                    continue
                fwd += 1
                fwd_bytes += size
        finally:
            st = self._stats
            st.down_received += n
            st.down_received_bytes += nbytes
            st.down_forwarded += fwd
            st.down_forwarded_bytes += fwd_bytes
            st.dropped_send += failed

    def _send_up(self, m: _Mapping, data: bytes) -> None:
        sock = m.sock
        if sock is None:
            self._stats.dropped_send += 1
            return
        try:
            sock.send(data)
        except OSError:
            self._stats.dropped_send += 1
            return
        self._stats.up_forwarded += 1
        self._stats.up_forwarded_bytes += len(data)

    def _send_down(self, m: _Mapping, data: bytes) -> None:
        try:
            self._sock.sendto(data, m.client)
        except OSError:
            self._stats.dropped_send += 1
            return
        self._stats.down_forwarded += 1
        self._stats.down_forwarded_bytes += len(data)

    def _schedule(self, model: ImpairmentModel, is_up: bool, m: _Mapping, data: bytes) -> None:
        now = self._loop.time()
        times = model.decide(now, len(data))
        if not times:
            return
        heap = self._heap
        for t in times:
            self._seq += 1
            heapq.heappush(heap, (t, self._seq, is_up, m, data))
        head = heap[0][0]
        if head < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = head
            self._timer = self._loop.call_at(head, self._release)

    def _release(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        heap = self._heap
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            _, _, is_up, m, data = heapq.heappop(heap)
            if is_up:
                self._send_up(m, data)
            else:
                self._send_down(m, data)
        if heap and not self._closed:
            self._timer_at = heap[0][0]
            self._timer = self._loop.call_at(self._timer_at, self._release)


async def start_relay(
    listen: tuple[str, int],
    target: tuple[str, int],
    impairment: Impairment = Impairment(),  # noqa: B008 - frozen, so a shared default is safe
    *,
    reverse: Impairment | None = None,
    rebind_every: float | None = None,
) -> Relay:
    """Start a relay listening on ``listen`` and forwarding to ``target``.

    ``impairment`` applies client -> target and, unless ``reverse`` is given, also
    target -> client.  ``rebind_every`` (seconds) calls :meth:`Relay.rebind` periodically.
    Addresses must be numeric (e.g. ``127.0.0.1`` or ``::1``); port 0 picks a free port.
    """
    if rebind_every is not None and not (math.isfinite(rebind_every) and rebind_every > 0):
        raise ValueError(f"rebind_every must be None or > 0 seconds, got {rebind_every!r}")
    loop = asyncio.get_running_loop()
    lfamily, laddr = _resolve(listen)
    tfamily, taddr = _resolve(target)
    sock = socket.socket(lfamily, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _tune(sock)
        if lfamily == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(laddr)
        return Relay(
            loop, sock, taddr, tfamily, impairment,
            reverse if reverse is not None else impairment, rebind_every,
        )
    except BaseException:
        sock.close()
        raise

