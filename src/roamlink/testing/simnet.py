"""A deterministic simulated network for driving sans-I/O roamlink endpoints.

A virtual clock jumps from event to event (as trio's mock clock does), so a transfer of many
megabytes over a lossy, reordering, rebinding network runs in seconds and is exactly
reproducible from its seed. Nodes carry :class:`~roamlink.io.dispatcher.Dispatcher` objects, the
same routing code the asyncio socket layer uses, and connections are served by the same
:class:`~roamlink.io.driver.ConnectionDriver` (datagrams out on the socket of their path,
timers re-armed).

Links are one-way and configured per (source host, destination host) pair; a link may have
loss, delay, jitter, reordering, duplication and a bottleneck (rate + finite queue). A NAT can
be modelled by :meth:`SimNetwork.rebind`: the node's address changes, packets it sends leave
from the new address, and packets sent to its old address are dropped.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..config import Config
from ..core.connection import Connection
from ..core.events import Address
from ..core.handshake import make_client_handshake
from ..crypto.handshake import ServerCrypto
from ..crypto.noise import private_key
from ..io.dispatcher import Dispatcher
from ..io.driver import ConnectionDriver


@dataclass
class LinkConfig:
    """Impairments of one direction of a link."""

    delay: float = 0.01
    jitter: float = 0.0  # extra delay, uniform in [0, jitter], per packet
    #: "reorder": each packet's jitter is independent, so packets overtake one another (netem's
    #: default); "fifo": a packet never arrives before the one sent ahead of it on this link,
    #: as behind a queue of varying depth (cellular and Wi-Fi links): delay varies, order holds
    jitter_mode: Literal["reorder", "fifo"] = "reorder"
    loss: float = 0.0
    reorder: float = 0.0  # probability that a packet is held back by reorder_delay
    reorder_delay: float = 0.005
    duplicate: float = 0.0
    rate: float | None = None  # bottleneck, bytes per second
    queue_packets: int = 100  # bottleneck queue size
    #: token-bucket depth of the bottleneck, in bytes (Linux ``tbf``'s ``burst``): after the
    #: queue has been empty, up to this many bytes pass at once instead of one packet per
    #: ``size / rate``. 0: a plain serialiser.
    burst: int = 0
    #: optional filter: return False to drop (for attacks and targeted loss in tests)
    drop_if: Callable[[bytes, Address, Address], bool] | None = None


@dataclass
class HostStalls:
    """A busy host: the node's process is descheduled now and then.

    Runs last uniformly ``run_min``..``run_max`` seconds, stalls ``stall_min``..``stall_max``
    (drawn from a generator of their own, seeded per node). During a stall the node does
    nothing: datagrams wait in its socket until the stall ends, and timers fire then — what a
    process sharing its cores with others sees (the scheduler's time slices are milliseconds).
    """

    run_min: float = 0.005
    run_max: float = 0.03
    stall_min: float = 0.001
    stall_max: float = 0.01


@dataclass
class LinkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    queue_drops: int = 0
    duplicated: int = 0
    reordered: int = 0
    queue_delay_total: float = 0.0
    queue_samples: int = 0
    queue_delay_max: float = 0.0


@dataclass
class _Link:
    config: LinkConfig
    stats: LinkStats = field(default_factory=LinkStats)
    busy_until: float = 0.0  # when the bottleneck finishes its current backlog
    last_arrival: float = 0.0  # fifo jitter: the previous packet's arrival time
    #: token bucket (``burst``): bytes left after the last departure (it starts full)
    tokens: float = float("inf")
    queue_release: list[float] = field(default_factory=list)


class SimNode:
    """A host with one socket, carrying a Dispatcher (a DriverSocket for the driver)."""

    def __init__(self, net: SimNetwork, addr: Address, dispatcher: Dispatcher,
                 socket_id: int) -> None:
        self.net = net
        self.addr = addr
        self.dispatcher = dispatcher
        self.socket_id = socket_id  # this socket's id: a path is (socket_id, peer address)
        self.received: list[tuple[bytes, Address]] = []  # raw log when record=True
        self.record = False
        self.stalls: HostStalls | None = None
        self.held: list[tuple[Address, bytes]] = []  # datagrams that arrived during a stall
        self._stall_rng: random.Random | None = None
        self._stall_start = 0.0  # the current or next stall: [start, end)
        self._stall_end = 0.0

    def set_stalls(self, stalls: HostStalls | None, seed: int = 0) -> None:
        """Make this node a busy host (None: an idle one, the default)."""
        self.stalls = stalls
        if stalls is None:
            self._stall_rng = None
            return
        rng = self._stall_rng = random.Random(seed)
        self._stall_start = self.net.now + rng.uniform(stalls.run_min, stalls.run_max)
        self._stall_end = self._stall_start + rng.uniform(stalls.stall_min, stalls.stall_max)

    def stalled_until(self, now: float) -> float:
        """When the stall that ``now`` falls in ends (0.0: the node is running)."""
        rng, st = self._stall_rng, self.stalls
        if rng is None or st is None:
            return 0.0
        while now >= self._stall_end:
            self._stall_start = self._stall_end + rng.uniform(st.run_min, st.run_max)
            self._stall_end = self._stall_start + rng.uniform(st.stall_min, st.stall_max)
        return self._stall_end if now >= self._stall_start else 0.0

    @property
    def host(self) -> str:
        return self.addr[0]

    def connect(self, remote: Address, *, early_data: bytes = b"",
                config: Config | None = None, server_key: bytes | None = None,
                client_key: bytes | None = None, pin: bool = True) -> Connection:
        """Open a connection to ``remote``. Encrypted unless ``config`` says
        ``insecure_plaintext``; the server's key is pinned automatically when ``remote`` is a
        listening node of this network (``pin=False``: learn it on first use instead)."""
        cfg = config or self.dispatcher.config
        client_handshake = None
        if not cfg.insecure_plaintext:
            if server_key is None and pin:
                node = self.net.nodes.get(remote)
                crypto = node.dispatcher.server_crypto if node is not None else None
                server_key = crypto.public_key if crypto is not None else None
            client_handshake = make_client_handshake(cfg.psk, server_key, client_key)
        conn = self.dispatcher.connect(remote, self.net.now, early_data=early_data,
                                       config=config, socket_id=self.socket_id,
                                       client_handshake=client_handshake)
        self.net.flush(self)
        return conn

    def adopt(self, conn: Connection) -> None:
        """Make ``conn`` reachable through this socket too (before migrating to it)."""
        self.dispatcher.adopt(conn)

    def connections(self) -> list[Connection]:
        return list({id(c): c for c in self.dispatcher.connections.values()}.values())

    # ------------------------------------------------------------------ DriverSocket
    def collect(self, datagrams: list[tuple[bytes, Address]]) -> None:
        send, src = self.net.send, self.addr
        for data, addr in datagrams:
            send(src, addr, data)

    def transmit_collected(self) -> None:
        """Nothing waits: :meth:`collect` sends at once."""

    def arm_timer(self, conn: Connection) -> None:
        self.net.arm_timer(self, conn)

    def disarm_timer(self, conn: Connection) -> None:
        """The network keeps one deadline per connection, whichever node arms it."""

    def serves(self, conn: Connection) -> bool:
        return False  # a closed connection's routes went at sync_routes; no more to drop

    def detach(self, conn: Connection) -> None:
        self.dispatcher.forget(conn)


class SimNetwork:
    """Event-driven network simulator with a virtual clock."""

    def __init__(self, seed: int = 0, default_link: LinkConfig | None = None) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)  # the network's impairments
        self._id_rng = random.Random(seed ^ 0x5EED)  # CIDs and challenges, kept apart
        self.default_link = default_link or LinkConfig()
        self._links: dict[tuple[str, str], _Link] = {}
        self.nodes: dict[Address, SimNode] = {}
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        #: serves every node's connections (the socket layer's driver; errors propagate)
        self.driver: ConnectionDriver[SimNode] = ConnectionDriver(contain_errors=False)
        self._scheduled: dict[Connection, float] = {}
        self._seq = 0
        self.delivered_datagrams = 0
        #: hosts that answer a datagram to a port nobody listens on with ICMP port
        #: unreachable (delivered to the sender's socket at once)
        self.refusing_hosts: set[str] = set()
        #: when True, every datagram sent is appended to ``captured`` as (src, dst, data)
        self.capture = False
        self.captured: list[tuple[Address, Address, bytes]] = []

    # ------------------------------------------------------------------ topology
    def random_bytes(self, n: int) -> bytes:
        """Deterministic stand-in for os.urandom (separate from the impairment stream, so
        a change in how many IDs a connection draws does not reshuffle the network)."""
        return self._id_rng.getrandbits(8 * n).to_bytes(n, "big")

    def add_node(self, addr: Address, config: Config | None = None, *,
                 listen: bool = False, share_with: SimNode | None = None,
                 key: bytes | None = None,
                 authorized_clients: frozenset[bytes] | None = None) -> SimNode:
        """A host socket at ``addr``. ``share_with``: another socket of the same endpoint
        (one dispatcher, e.g. a server listening on several addresses).

        A listening node gets a static key (``key``, 32 private bytes; by default one derived
        from its address, so a node re-created at the same address -- a restarted server --
        has the same key) unless its config says ``insecure_plaintext``."""
        socket_id = self.driver.new_socket_id()
        if share_with is not None:
            disp = share_with.dispatcher
        else:
            cfg = config or Config()
            crypto = None
            if listen and not cfg.insecure_plaintext:
                raw = key or hashlib.blake2s(b"simnet server key " + repr(addr).encode()
                                             ).digest()
                crypto = ServerCrypto(private_key(raw), authorized=authorized_clients,
                                      psk=cfg.psk, replay_window=cfg.zero_rtt_window)
            disp = Dispatcher(cfg, accept_new=listen, random_bytes=self.random_bytes,
                              socket_id=socket_id, server_crypto=crypto)
        node = SimNode(self, addr, disp, socket_id)
        self.nodes[addr] = node
        self.driver.add_socket(node)
        return node

    def link(self, src_host: str, dst_host: str) -> LinkConfig:
        """The (mutable) configuration of the one-way link src -> dst."""
        return self._link(src_host, dst_host).config

    def set_link(self, src_host: str, dst_host: str, config: LinkConfig,
                 both_ways: bool = True) -> None:
        self._links[(src_host, dst_host)] = _Link(config)
        if both_ways:
            self._links[(dst_host, src_host)] = _Link(
                LinkConfig(**{k: getattr(config, k) for k in config.__dataclass_fields__}))

    def link_stats(self, src_host: str, dst_host: str) -> LinkStats:
        return self._link(src_host, dst_host).stats

    def _link(self, src: str, dst: str) -> _Link:
        link = self._links.get((src, dst))
        if link is None:
            d = self.default_link
            link = _Link(LinkConfig(**{k: getattr(d, k) for k in d.__dataclass_fields__}))
            self._links[(src, dst)] = link
        return link

    def rebind(self, node: SimNode, new_addr: Address) -> None:
        """The node's address changes (NAT rebinding / new network); old address goes dead."""
        del self.nodes[node.addr]
        node.addr = new_addr
        self.nodes[new_addr] = node

    # ------------------------------------------------------------------ events
    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, fn))

    def send(self, src: Address, dst: Address, data: bytes) -> None:
        if self.capture:
            self.captured.append((src, dst, data))
        link = self._link(src[0], dst[0])
        cfg, st = link.config, link.stats
        st.sent += 1
        if cfg.drop_if is not None and cfg.drop_if(data, src, dst):
            st.lost += 1
            return
        if cfg.loss and self.rng.random() < cfg.loss:
            st.lost += 1
            return
        copies = 1
        if cfg.duplicate and self.rng.random() < cfg.duplicate:
            copies = 2
            st.duplicated += 1
        depart = self.now
        if cfg.rate:
            # bottleneck: serialise after the current backlog, drop when the queue is full
            queue = link.queue_release
            while queue and queue[0] <= self.now:
                heapq.heappop(queue)
            if len(queue) >= cfg.queue_packets:
                st.queue_drops += 1
                return
            start = max(self.now, link.busy_until)
            if cfg.burst:
                # token bucket: tokens accrue at ``rate`` up to ``burst`` while it idles
                tokens = link.tokens + (start - link.busy_until) * cfg.rate
                if tokens > cfg.burst:
                    tokens = float(cfg.burst)
                if tokens >= len(data):
                    depart = start
                    link.tokens = tokens - len(data)
                else:
                    depart = start + (len(data) - tokens) / cfg.rate
                    link.tokens = 0.0
            else:
                depart = start + len(data) / cfg.rate
            link.busy_until = depart
            heapq.heappush(queue, depart)
            st.queue_delay_total += start - self.now
            if start - self.now > st.queue_delay_max:
                st.queue_delay_max = start - self.now
            st.queue_samples += 1
        for _ in range(copies):
            arrive = depart + cfg.delay
            if cfg.jitter:
                arrive += self.rng.uniform(0, cfg.jitter)
                if cfg.jitter_mode == "fifo":
                    if arrive < link.last_arrival:
                        arrive = link.last_arrival
                    link.last_arrival = arrive
            if cfg.reorder and self.rng.random() < cfg.reorder:
                arrive += cfg.reorder_delay
                st.reordered += 1
            self.call_at(arrive, _Deliver(self, src, dst, data, st))

    def deliver(self, src: Address, dst: Address, data: bytes) -> None:
        node = self.nodes.get(dst)
        if node is None:
            # nobody at that address (e.g. an old NAT mapping); a host that says so
            # answers with ICMP port unreachable, which reaches the sender's socket
            if dst[0] in self.refusing_hosts:
                sender = self.nodes.get(src)
                if sender is not None:
                    for refused in sender.dispatcher.unreachable(dst, self.now):
                        self.driver.serve(refused, self.now, sender)
            return
        if node.stalls is not None:
            resume = node.stalled_until(self.now)
            if resume:
                # the process is descheduled: the datagram waits in its socket, and when the
                # process runs again it reads everything waiting before it answers (as the
                # asyncio endpoint does with its batch of reads)
                if not node.held:
                    self.call_at(resume, lambda: self._resume(node))
                node.held.append((src, data))
                return
        conn = self._receive(node, src, data)
        if conn is not None:
            self.driver.serve(conn, self.now, node)

    def _receive(self, node: SimNode, src: Address, data: bytes) -> Connection | None:
        if node.record:
            node.received.append((data, src))
        self.delivered_datagrams += 1
        conn = node.dispatcher.datagram_received(data, src, self.now, node.socket_id)
        for out, addr in node.dispatcher.take_stateless():
            self.send(node.addr, addr, out)
        return conn

    def _resume(self, node: SimNode) -> None:
        """A stalled node runs again: it reads every datagram that waited, then answers."""
        held, node.held = node.held, []
        if self.nodes.get(node.addr) is not node:
            return  # rebound meanwhile: what was sent to the old address is gone
        conns: dict[Connection, None] = {}
        for src, data in held:
            conn = self._receive(node, src, data)
            if conn is not None:
                conns[conn] = None
        for conn in conns:
            self.driver.serve(conn, self.now, node)

    def flush(self, node: SimNode) -> None:
        """Send whatever the node's connections have to send, and re-arm their timers."""
        if node.stalls is not None:
            resume = node.stalled_until(self.now)
            if resume:
                self.call_at(resume, lambda: self.flush(node))
                return
        disp = node.dispatcher
        for data, addr in disp.take_stateless():
            self.send(node.addr, addr, data)
        for conn in node.connections():
            self.driver.serve(conn, self.now, node)

    def arm_timer(self, node: SimNode, conn: Connection) -> None:
        """Schedule ``conn``'s timer as an event (one per connection; stale ones do nothing)."""
        deadline = conn.get_timer()
        if deadline is not None and self._scheduled.get(conn) != deadline:
            self._scheduled[conn] = deadline
            # a deadline already past fires on the next step (never a zero-time loop)
            self.call_at(max(deadline, self.now + 1e-6), _Timer(self, node, conn, deadline))
        elif deadline is None:
            self._scheduled.pop(conn, None)

    def run(self, until: float | None = None, *,
            stop: Callable[[], bool] | None = None, max_events: int = 50_000_000) -> None:
        """Process events in time order until ``until``, ``stop()`` is true, or none remain."""
        events = self._events
        n = 0
        while events:
            when = events[0][0]
            if until is not None and when > until:
                self.now = until
                return
            _, _, fn = heapq.heappop(events)
            if when > self.now:
                self.now = when
            fn()
            n += 1
            if n >= max_events:
                raise RuntimeError("simulation did not settle (event budget exhausted)")
            if stop is not None and (n & 63) == 0 and stop():
                return
        if until is not None:
            self.now = max(self.now, until)

    def run_until(self, stop: Callable[[], bool], timeout: float) -> bool:
        """Run until ``stop()`` holds (checked after every event) or ``timeout`` sim-seconds."""
        deadline = self.now + timeout
        events = self._events
        while events and events[0][0] <= deadline:
            when, _, fn = heapq.heappop(events)
            self.now = max(self.now, when)
            fn()
            if stop():
                return True
        return stop()


class _Deliver:
    __slots__ = ("net", "src", "dst", "data", "stats")

    def __init__(self, net: SimNetwork, src: Address, dst: Address, data: bytes,
                 stats: LinkStats) -> None:
        self.net, self.src, self.dst, self.data, self.stats = net, src, dst, data, stats

    def __call__(self) -> None:
        self.stats.delivered += 1
        self.net.deliver(self.src, self.dst, self.data)


class _Timer:
    """A connection's timer; stale ones (the deadline moved) do nothing."""

    __slots__ = ("net", "node", "conn", "deadline")

    def __init__(self, net: SimNetwork, node: SimNode, conn: Connection, deadline: float) -> None:
        self.net, self.node, self.conn, self.deadline = net, node, conn, deadline

    def __call__(self) -> None:
        conn = self.conn
        scheduled = self.net._scheduled
        if scheduled.get(conn) != self.deadline:
            return  # superseded by a newer deadline
        net = self.net
        if self.node.stalls is not None:
            resume = self.node.stalled_until(net.now)
            if resume:
                # descheduled: the timer fires when the process runs again
                net.call_at(resume, self)
                return
        del scheduled[conn]
        if conn.get_timer() == self.deadline:
            net.driver.fire_timer(conn, net.now)
        net.driver.serve(conn, net.now, self.node)
