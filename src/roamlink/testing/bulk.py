"""Long bulk transfers over the simulated network, measured like a benchmark.

Used by the congestion-control tests and figures: one or more flows push generated data
through a (usually bottlenecked) link for a fixed stretch of simulated time, then close; the
result says how many bytes arrived in that stretch (goodput), how much queueing delay the
bottleneck saw, and whether the receiver's SHA-256 equals the sender's.

The payload is generated chunk by chunk from a seed and hashed on both sides as it goes, so a
30-second transfer at 100 Mbit/s does not hold hundreds of megabytes in memory.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from ..core.connection import Connection
from ..core.events import ConnectionStats
from .simnet import LinkStats, SimNetwork, SimNode

_CHUNK = 64 * 1024


@dataclass
class Flow:
    """One one-way bulk transfer from ``sender`` to ``receiver``."""

    net: SimNetwork
    sender: Connection
    sender_node: SimNode
    receiver: Connection
    receiver_node: SimNode
    seed: int = 0
    writing: bool = True
    written: int = 0
    delivered: int = 0
    _rng: random.Random = field(init=False)
    _sent_hash: hashlib._Hash = field(init=False)  # noqa: SLF001 - typing of hashlib objects
    _recv_hash: hashlib._Hash = field(init=False)
    _eof_sent: bool = False
    marks: dict[str, tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._sent_hash = hashlib.sha256()
        self._recv_hash = hashlib.sha256()

    def step(self) -> None:
        """Act like an application: keep the send buffer full, read whatever arrived."""
        sender = self.sender
        wrote = False
        if self.writing:
            limit = sender.config.send_buffer_size
            while sender.send_buffered < limit and not sender.is_terminated:
                chunk = self._rng.randbytes(_CHUNK)
                self._sent_hash.update(chunk)
                sender.send(chunk)
                self.written += len(chunk)
                wrote = True
        elif not self._eof_sent:
            sender.send_eof()
            self._eof_sent = True
            wrote = True
        if wrote:
            self.net.flush(self.sender_node)
        data = self.receiver.read()
        if data:
            self._recv_hash.update(data)
            self.delivered += len(data)
            self.net.flush(self.receiver_node)

    def mark(self, name: str) -> None:
        """Remember (now, bytes delivered) under ``name`` to compute goodput between marks."""
        self.marks[name] = (self.net.now, self.delivered)

    def goodput(self, start: str, end: str) -> float:
        """Application bytes per second delivered between two marks."""
        t0, b0 = self.marks[start]
        t1, b1 = self.marks[end]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def done(self) -> bool:
        return self._eof_sent and self.receiver.at_eof

    def exact(self) -> bool:
        """Everything written arrived, in order, byte for byte."""
        return (self.done and self.delivered == self.written
                and self._recv_hash.digest() == self._sent_hash.digest())

    def stats(self) -> ConnectionStats:
        return self.sender.stats()


def open_flow(net: SimNetwork, client: SimNode, server: SimNode, *, seed: int = 0,
              timeout: float = 30.0) -> Flow:
    """Connect ``client`` to ``server`` and return a flow sending client -> server."""
    conn = client.connect(server.addr)
    queue = server.dispatcher.accept_queue

    def ready() -> bool:
        return conn.is_established and bool(queue) and queue[0].is_established

    if not net.run_until(ready, timeout):
        raise AssertionError("handshake did not complete")
    return Flow(net, conn, client, queue.popleft(), server, seed=seed)


def drive(net: SimNetwork, flows: list[Flow], until: float, tick: float = 0.001) -> None:
    """Run the network until ``until``, letting every flow act every ``tick`` seconds."""
    def app() -> None:
        for f in flows:
            f.step()
        if net.now + tick <= until:
            net.call_at(net.now + tick, app)

    app()
    net.run(until=until)


def finish(net: SimNetwork, flows: list[Flow], timeout: float = 60.0,
           tick: float = 0.001) -> bool:
    """Stop writing, close every flow and run until all receivers saw the end of stream."""
    for f in flows:
        f.writing = False
    deadline = net.now + timeout
    while net.now < deadline:
        drive(net, flows, min(net.now + 0.5, deadline), tick)
        if all(f.done for f in flows):
            return True
    return all(f.done for f in flows)


@dataclass
class QueueProbe:
    """Average queueing delay a link added between two points in time."""

    stats: LinkStats
    _total: float = 0.0
    _samples: int = 0

    def start(self) -> None:
        self._total, self._samples = self.stats.queue_delay_total, self.stats.queue_samples

    def average(self) -> float:
        n = self.stats.queue_samples - self._samples
        return (self.stats.queue_delay_total - self._total) / n if n else 0.0
