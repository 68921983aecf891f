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
from typing import Literal

from ..config import Config
from ..core.connection import Connection
from ..core.events import ConnectionStats
from .simnet import HostStalls, LinkConfig, LinkStats, SimNetwork, SimNode

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
              timeout: float = 30.0, config: Config | None = None) -> Flow:
    """Connect ``client`` to ``server`` and return a flow sending client -> server."""
    conn = client.connect(server.addr, config=config)
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


@dataclass
class BottleneckRun:
    """Figures of one :func:`run_bottleneck` scenario."""

    controller: str
    loss: float
    seconds: float
    rate: float
    goodputs: list[float]  # per flow, bytes/s over the measured stretch
    queue_delay: float  # average queueing delay at the bottleneck over the measured stretch
    queue_delay_max: float
    queue_drops: int
    exact: bool  # every flow ended with the receiver's hash equal to the sender's
    stats: list[ConnectionStats]  # senders' stats at the end of the measured stretch

    @property
    def goodput(self) -> float:
        return sum(self.goodputs)

    @property
    def utilisation(self) -> float:
        return self.goodput / self.rate

    def summary(self) -> dict[str, object]:
        st = self.stats[0]
        return {"cc": self.controller, "loss": self.loss, "sim_s": self.seconds,
                "goodput_MBps": [round(g / 1e6, 3) for g in self.goodputs],
                "of_bottleneck": round(self.utilisation, 3),
                "queue_delay_ms": round(self.queue_delay * 1e3, 2),
                "queue_delay_max_ms": round(self.queue_delay_max * 1e3, 2),
                "queue_drops": self.queue_drops, "exact": self.exact,
                "srtt_ms": round(st.smoothed_rtt * 1e3, 2),
                "min_rtt_ms": round(st.min_rtt * 1e3, 2), "cwnd": st.cwnd,
                "lost": st.packets_lost, "retransmissions": st.retransmissions,
                "spurious": st.spurious_losses, "congestion_events": st.congestion_events,
                "state": st.congestion_state}


def run_bottleneck(controller: str, *, loss: float = 0.0, seconds: float = 5.0,
                   rate: float = 100e6 / 8, queue_packets: int = 100, one_way_delay: float = 0.01,
                   flows: int = 1, stagger: float = 0.0, warmup: float = 0.0, seed: int = 1,
                   config: Config | None = None, finish_timeout: float = 60.0,
                   controllers: list[str] | None = None, jitter: float = 0.0,
                   jitter_mode: Literal["reorder", "fifo"] = "fifo", burst: int = 0,
                   stalls: HostStalls | None = None) -> BottleneckRun:
    """Bulk flows from one host to another through a bottleneck (issue 7's scenario).

    The forward link has the rate limit, the finite queue and ``loss``; the reverse link
    (ACKs) has the same delay and loss but no rate limit. Flow *i* starts ``i * stagger``
    seconds after the first; goodput and queueing delay are measured from ``warmup`` to
    ``seconds`` after the first flow started. Then every flow closes and must end hash-exact.
    ``controllers`` gives each flow's sender its own controller (default: ``controller``).
    ``jitter`` adds up to that much delay per packet in both directions (``jitter_mode``: in
    order, as a cellular link, or reordering, as netem). ``burst``: the bottleneck is a token
    bucket of that depth (``tbf``). ``stalls``: both hosts are busy (descheduled now and then,
    each on its own schedule).
    """
    cfg = (config or Config()).replace(congestion_control=controller)
    net = SimNetwork(seed=seed)
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    net.set_link("10.0.0.2", "10.0.0.1", LinkConfig(delay=one_way_delay, loss=loss, rate=rate,
                                                    queue_packets=queue_packets, jitter=jitter,
                                                    jitter_mode=jitter_mode, burst=burst),
                 both_ways=False)
    net.set_link("10.0.0.1", "10.0.0.2", LinkConfig(delay=one_way_delay, loss=loss,
                                                    jitter=jitter, jitter_mode=jitter_mode),
                 both_ways=False)
    client = net.add_node(("10.0.0.2", 5000), cfg)
    if stalls is not None:
        server.set_stalls(stalls, seed=seed * 2)
        client.set_stalls(stalls, seed=seed * 2 + 1)
    link = net.link_stats("10.0.0.2", "10.0.0.1")
    started: list[Flow] = []
    t0 = net.now
    for i in range(flows):
        if i:
            drive(net, started, t0 + i * stagger)
        own = cfg if controllers is None else cfg.replace(congestion_control=controllers[i])
        started.append(open_flow(net, client, server, seed=seed * 100 + i, config=own))
    drive(net, started, t0 + warmup)
    probe = QueueProbe(link)
    probe.start()
    max_before = link.queue_delay_max
    link.queue_delay_max = 0.0
    for f in started:
        f.mark("start")
    drive(net, started, t0 + seconds)
    for f in started:
        f.mark("end")
    stats = [f.stats() for f in started]
    delay, delay_max = probe.average(), link.queue_delay_max
    link.queue_delay_max = max(delay_max, max_before)
    ok = finish(net, started, timeout=finish_timeout)
    return BottleneckRun(controller, loss, seconds, rate,
                         [f.goodput("start", "end") for f in started], delay, delay_max,
                         link.queue_drops, ok and all(f.exact() for f in started), stats)
