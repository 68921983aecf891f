"""Fuzz: random and mutated datagrams against live connections, in every connection state.

Simulator part (deterministic): for each state — ``handshake`` (a client waiting for its
SYN-ACK and the server's half-open connection), ``established``, ``validating`` (a path
validation in progress) and ``closing`` — a fresh simulated network is built per chunk: a
server, a *target* connection brought into that state, and a *bystander* connection moving
data both ways. Then ``--per-state`` datagrams are fed to both ends of the target, from
attacker addresses and from spoofed genuine addresses: random bytes, mutations (bit flips,
truncations, splices, extensions) of datagrams captured from the target's own traffic,
well-formed headers with random frames, and handshake packets with random fields.

Checked per chunk: no exception escapes (the socket layer's "failed on input" guard must never
fire: an ERROR log record counts as an escape), the bystander's transfer is hash-exact and the
bystander never leaves its state or drops a packet, and the simulation keeps running. The
target itself may leave its state (clear-text packets are not authenticated yet: a forged
CLOSE with its connection ID closes it); it is then replaced by a fresh target in the same
state, so every datagram counted reached a connection in that state.

Real-socket part: the same generator against a ``roamlink.listen`` socket on 127.0.0.1 (from
a plain UDP socket) while a bystander connection echoes data, hash-checked; afterwards the
listener still accepts a new connection.

Seeded and resumable: chunk ``i`` of a state is fully determined by ``(--seed, state, i)``;
``--state-file`` records finished chunks, and a later run with the same file continues.

Usage: python bench/fuzz.py [--per-state 100000] [--chunk 2000] [--socket 100000]
       [--seed 1] [--state-file fuzz-state.json] [--states established,closing]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

import roamlink  # noqa: E402
from roamlink import Config  # noqa: E402
from roamlink.core import wire  # noqa: E402
from roamlink.core.connection import Connection  # noqa: E402
from roamlink.core.states import State  # noqa: E402
from roamlink.testing.scenarios import Pump  # noqa: E402
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode  # noqa: E402

STATES = ("handshake", "established", "validating", "closing")
SERVER = ("10.0.0.1", 4433)
TARGET = ("10.0.0.2", 50000)
BYSTANDER = ("10.0.0.3", 50000)
ATTACKERS = [("10.6.6.6", 666), ("10.6.6.7", 4433), ("10.0.0.2", 50001), ("10.9.0.1", 1)]
#: the state each scenario keeps its target in (for the "fed while in state" count)
IN_STATE = {"handshake": (State.HANDSHAKING,),
            "established": (State.ESTABLISHED, State.VALIDATING_PATH),
            "validating": (State.VALIDATING_PATH,),
            "closing": (State.CLOSING,)}


class EscapeCounter(logging.Handler):
    """Counts ERROR records from roamlink: the socket layer logs an exception that escaped a
    connection (and aborts that connection) instead of crashing; for the fuzz it is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


# ------------------------------------------------------------------ the datagram generator
@dataclass
class Corpus:
    """What the generator knows: captured datagrams and the target's connection IDs."""

    captured: list[bytes] = field(default_factory=list)
    cids: list[bytes] = field(default_factory=list)
    cid_length: int = 8


def _random_frame(rng: random.Random) -> bytes:
    big = rng.choice((0, 1, 63, 64, 16383, 16384, 2**30, 2**62 - 1))
    small = rng.randrange(1 << rng.choice((6, 14, 20)))
    value = rng.choice((big, small))
    kind = rng.randrange(12)
    frame: wire.Frame
    if kind == 0:
        frame = wire.PushFrame(value, rng.randbytes(rng.randrange(64)), rng.random() < 0.2)
    elif kind == 1:
        top = rng.randrange(1 << rng.choice((4, 16, 40)))
        ranges, hi = [], top
        for _ in range(rng.randint(1, 40)):
            lo = max(0, hi - rng.randrange(50))
            ranges.append((lo, hi))
            hi = lo - 2 - rng.randrange(20)
            if hi < 0:
                break
        frame = wire.AckFrame(tuple(ranges), rng.randrange(1 << 20))
        try:
            return wire.encode_frame(frame)
        except Exception:
            return bytes((wire.ACK,)) + rng.randbytes(rng.randrange(20))
    elif kind == 2:
        frame = wire.PingFrame()
    elif kind == 3:
        frame = wire.PaddingFrame(rng.randrange(100))
    elif kind == 4:
        frame = wire.PathChallengeFrame(rng.randbytes(8))
    elif kind == 5:
        frame = wire.PathResponseFrame(rng.randbytes(8))
    elif kind == 6:
        frame = wire.CloseFrame(rng.choice((0, 1, 10, 0x100, value)),
                                rng.randbytes(rng.randrange(20)).decode("latin-1"))
    elif kind == 7:
        frame = wire.MaxDataFrame(value)
    elif kind == 8:
        frame = wire.DataBlockedFrame(value)
    elif kind == 9:
        frame = wire.NewConnectionIdFrame(rng.randrange(1 << rng.choice((3, 10, 30))),
                                          rng.randrange(8),
                                          rng.randbytes(rng.choice((0, 4, 8, 20))))
    elif kind == 10:
        frame = wire.RetireConnectionIdFrame(rng.randrange(1 << rng.choice((3, 10, 30))))
    else:
        return bytes((rng.randrange(256),)) + rng.randbytes(rng.randrange(16))
    try:
        return wire.encode_frame(frame)
    except Exception:  # a value the encoder refuses: raw bytes instead
        return rng.randbytes(rng.randrange(1, 16))


def _mutate(rng: random.Random, data: bytes, corpus: Corpus) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and b:  # flip bits
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # overwrite bytes
            i = rng.randrange(len(b))
            b[i:i + rng.randint(1, 8)] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 3:  # extend
            b += rng.randbytes(rng.randrange(1, 200))
        elif op == 4 and corpus.captured:  # splice with another capture
            other = rng.choice(corpus.captured)
            cut = rng.randrange(len(b) + 1)
            b = b[:cut] + other[rng.randrange(len(other) + 1):]
        elif op == 5 and b:  # insert / delete a run
            i = rng.randrange(len(b))
            if rng.random() < 0.5:
                b[i:i] = rng.randbytes(rng.randint(1, 16))
            else:
                del b[i:i + rng.randint(1, 16)]
        elif op == 6 and b:  # an interesting value for one byte
            b[rng.randrange(len(b))] = rng.choice((0, 1, 2, 5, 0x3F, 0x40, 0x7F, 0x80, 0xC0,
                                                   0xFF))
    return bytes(b[:65507])


def make_datagram(rng: random.Random, corpus: Corpus) -> bytes:
    """One hostile datagram: random, mutated, or well-formed with random content."""
    roll = rng.random()
    cid = rng.choice(corpus.cids) if corpus.cids else rng.randbytes(corpus.cid_length)
    if roll < 0.15:  # pure noise, with an interesting first byte half the time
        body = rng.randbytes(rng.choice((0, 1, 7, 16, 40, rng.randrange(1500))))
        if body and rng.random() < 0.5:
            body = bytes((rng.choice((wire.SHORT, wire.SYN, wire.SYN_ACK,
                                      wire.VERSION_NEGOTIATION)),)) + body[1:]
        return body
    if roll < 0.55 and corpus.captured:  # a mutated capture of the target's own traffic
        return _mutate(rng, rng.choice(corpus.captured), corpus)
    if roll < 0.65 and corpus.captured:  # a replayed capture (duplicates, old paths)
        return rng.choice(corpus.captured)
    if roll < 0.85:  # a short header with the target's CID and random frames
        pn = rng.choice((0, 1, rng.randrange(1000), rng.randrange(1 << 20), 2**63,
                         2**64 - 1))
        frames = b"".join(_random_frame(rng) for _ in range(rng.randint(0, 5)))
        return wire.encode_short_header(cid, pn) + frames
    # long headers with random fields
    ptype = rng.choice((wire.SYN, wire.SYN_ACK, wire.RETRY, wire.REJECT, wire.KEY_REQUEST,
                        wire.PLAIN_SYN, wire.PLAIN_SYN_ACK, rng.randrange(64)))
    version = rng.choice((1, 0, 2, 0xFFFFFFFF, rng.randrange(1 << 32)))
    dcid = rng.choice((b"", cid, rng.randbytes(rng.randrange(21))))
    scid = rng.randbytes(rng.choice((0, 4, 8, 20)))
    header = wire.encode_long_header(ptype, version, dcid, scid)
    frames = b"".join(_random_frame(rng) for _ in range(rng.randint(0, 4)))
    pad = bytes(max(0, 1200 - len(header) - len(frames))) if rng.random() < 0.5 else b""
    return header + frames + pad


# ------------------------------------------------------------------ the simulator part
@dataclass
class ChunkResult:
    state: str
    index: int
    fed: int = 0
    targets: int = 0  # target connections used (each replaced when it left the state)
    escapes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    target_end_state: str = ""


def _config() -> Config:
    # long draining (the closing target stays closing while it is fuzzed) and connect
    # timeouts (the handshaking target stays half-open)
    return Config(draining_period=600.0, connect_timeout=600.0, idle_timeout=600.0)


def run_chunk(state: str, index: int, count: int, seed: int) -> ChunkResult:
    """Feed ``count`` hostile datagrams to a target connection in ``state``; check that
    nothing escapes and the bystander is undisturbed."""
    chunk_seed = int.from_bytes(hashlib.sha256(f"{seed}/{state}/{index}".encode()).digest()[:8],
                                "big")
    rng = random.Random(chunk_seed)
    result = ChunkResult(state, index)
    escapes = EscapeCounter()
    log = logging.getLogger("roamlink")
    log.addHandler(escapes)
    try:
        _run_chunk(state, count, chunk_seed, rng, result)
    except Exception as exc:  # escaped through the simulator: the worst outcome
        result.escapes.append(f"{type(exc).__name__}: {exc}")
    finally:
        log.removeHandler(escapes)
    result.escapes.extend(escapes.records)
    return result


def _open_target(state: str, net: SimNetwork, server: SimNode, node: SimNode,
                 config: Config, rng: random.Random) -> list[Connection]:
    """A fresh target connection (both ends) brought into ``state`` on the running network."""
    if state == "handshake":
        # the SYN reaches the server, its SYN-ACK never returns: both ends stay half-open
        queue = server.dispatcher.accept_queue
        queue.clear()
        c = node.connect(SERVER, config=config)
        net.run_until(lambda: any(s.peer_cid == c.local_cid for s in queue), 2)
        targets = [c, *(s for s in queue if s.peer_cid == c.local_cid)]
        queue.clear()
        return targets
    c, s = _establish(net, node, server, config)
    warm = Pump(net, c, node, s, server, rng.randbytes(8_000), eof=False)
    net.run_until(lambda: (warm.step(), warm.done)[1], 10)
    if state == "validating":
        # an active migration towards an address that never answers: validating for long
        c.migrate(net.now, ("10.0.0.99", 4433), timeout=600.0)
        net.flush(node)
    elif state == "closing":
        c.abort(net.now, 0x100, "fuzz")  # the client closes; its peer drains
        net.flush(node)
    net.run(until=net.now + 0.02)
    return [c, s]


def _establish(net: SimNetwork, node: SimNode, server: SimNode, config: Config
               ) -> tuple[Connection, Connection]:
    """Like ``scenarios.establish``, but finds the server end by its peer CID: forged SYNs
    also put half-open connections in the accept queue."""
    c = node.connect(SERVER, config=config)
    queue = server.dispatcher.accept_queue

    def mine() -> Connection | None:
        return next((s for s in queue if s.peer_cid == c.local_cid and s.is_established),
                    None)

    if not net.run_until(lambda: c.is_established and mine() is not None, 30):
        raise RuntimeError("a target connection could not be established")
    s = mine()
    assert s is not None
    queue.clear()
    return c, s


def _in_state(state: str, targets: list[Connection]) -> bool:
    if state == "validating":  # the migrating end validates; the other stays established
        return (targets[0].state is State.VALIDATING_PATH
                and targets[1].state in IN_STATE["established"])
    if state == "closing":  # the aborting end is closing (its peer drains)
        return targets[0].state is State.CLOSING
    return all(t.state in IN_STATE[state] for t in targets)


def _run_chunk(state: str, count: int, chunk_seed: int, rng: random.Random,
               result: ChunkResult) -> None:
    config = _config()
    net = SimNetwork(seed=chunk_seed, default_link=LinkConfig(delay=0.005))
    server = net.add_node(SERVER, config, listen=True)
    target_node = net.add_node(TARGET, config)
    by_node = net.add_node(BYSTANDER, config)
    b, sb = _establish(net, by_node, server, config)
    if state == "handshake":
        net.link(SERVER[0], TARGET[0]).drop_if = lambda data, src, dst: data[:1] == b"\x02"
    by_state = (b.state, sb.state)
    by_dropped = (b.stats().dropped_packets, sb.stats().dropped_packets)
    payload = rng.randbytes(150_000)
    pumps = [Pump(net, b, by_node, sb, server, payload, eof=False),
             Pump(net, sb, server, b, by_node, payload[::-1], eof=False)]
    corpus = Corpus(cid_length=config.cid_length)
    targets: list[Connection] = []
    # feed the datagrams spread over simulated time, with the bystander moving data meanwhile;
    # a target that leaves the state (clear-text packets with its CID can close it) is
    # replaced by a fresh one, so every datagram counted hits a connection in the state
    gap = 0.0002
    while result.fed < count:
        if not targets or not _in_state(state, targets):
            result.targets += 1
            net.capture = True
            targets = _open_target(state, net, server, target_node, config, rng)
            net.capture = False
            corpus.captured = ([d for src, dst, d in net.captured if TARGET in (src, dst)]
                               or corpus.captured)[-200:]
            net.captured.clear()
            corpus.cids = [cid for conn in targets for cid in conn.routed_cids()]
            corpus.cids += [conn.peer_cid for conn in targets if conn.peer_cid]
            if not _in_state(state, targets):
                raise RuntimeError(f"could not bring a target into {state}: "
                                   f"{[t.state.value for t in targets]}")
        data = make_datagram(rng, corpus)
        dst = SERVER if rng.random() < 0.6 else TARGET
        src = rng.choice(ATTACKERS) if rng.random() < 0.7 else (
            TARGET if dst == SERVER else SERVER)
        net.send(src, dst, data)
        net.run(until=net.now + gap)
        result.fed += 1
        if result.fed % 64 == 0:
            for p in pumps:
                p.step()
    done = net.run_until(lambda: all((p.step(), p.done)[1] for p in pumps), 60)
    if not done or not all(p.exact() for p in pumps):
        result.failures.append("bystander transfer incomplete or not hash-exact")
    if (b.state, sb.state) != by_state:
        result.failures.append(f"bystander state moved: {by_state} -> {(b.state, sb.state)}")
    if (b.stats().dropped_packets, sb.stats().dropped_packets) != by_dropped:
        result.failures.append("the bystander saw hostile datagrams")
    result.target_end_state = "/".join(t.state.value for t in targets)


# ------------------------------------------------------------------ the real-socket part
async def fuzz_socket(count: int, seed: int) -> dict[str, Any]:
    """Hostile datagrams at a real listener while a bystander echoes, hash-checked."""
    rng = random.Random(seed)
    escapes = EscapeCounter()
    log = logging.getLogger("roamlink")
    log.addHandler(escapes)
    server_streams: list[roamlink.Stream] = []
    try:
        async with await roamlink.listen("127.0.0.1", 0) as listener:
            async def serve() -> None:
                async for stream in listener:
                    server_streams.append(stream)
                    asyncio.get_running_loop().create_task(_echo(stream))

            acceptor = asyncio.create_task(serve())
            port = listener.local_addr[1]
            victim = await roamlink.connect("127.0.0.1", port)
            victim.write(b"v" * 5000)
            bystander = await roamlink.connect("127.0.0.1", port)
            payload = rng.randbytes(4 * 1024 * 1024)
            reader = asyncio.create_task(bystander.readexactly(len(payload)))

            async def write_slowly() -> None:  # spread over the whole flood
                for i in range(0, len(payload), 65536):
                    bystander.write(payload[i:i + 65536])
                    await bystander.drain()
                    await asyncio.sleep(0.002)

            writer = asyncio.create_task(write_slowly())
            await asyncio.sleep(0.2)
            # hostile datagrams aim at the victim's CIDs (both ends), never the bystander's
            corpus = Corpus(cids=[bytes.fromhex(s.connection_id) for s in server_streams
                                  if s.remote_addr == victim.local_addr],
                            cid_length=Config().cid_length)
            corpus.cids.append(bytes.fromhex(victim.connection_id))
            # a few genuine-looking datagrams to mutate: SYNs and short packets of the victim
            for cid in corpus.cids:
                corpus.captured.append(wire.encode_short_header(cid, 5)
                                       + wire.encode_frame(wire.PingFrame()))
                corpus.captured.append(wire.encode_short_header(cid, 7)
                                       + wire.encode_frame(wire.PushFrame(0, b"x" * 100)))
            syn = wire.encode_long_header(wire.SYN, roamlink.PROTOCOL_VERSION, b"",
                                          rng.randbytes(8))
            corpus.captured.append(syn + bytes(1200 - len(syn)))
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sent = 0
            start = time.monotonic()
            try:
                while sent < count:
                    for _ in range(200):
                        with contextlib.suppress(BlockingIOError):
                            sock.sendto(make_datagram(rng, corpus) or b"\x00",
                                        ("127.0.0.1", port))
                        sent += 1
                    await asyncio.sleep(0.001)
            finally:
                sock.close()
            flood_s = time.monotonic() - start
            await asyncio.wait_for(writer, 120)
            echoed = await asyncio.wait_for(reader, 120)
            exact = hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            # the listener still works: a new connection opens and echoes
            fresh = await asyncio.wait_for(roamlink.connect("127.0.0.1", port), 10)
            fresh.write(b"ping")
            pong = await asyncio.wait_for(fresh.readexactly(4), 10)
            stats = listener.endpoint.dispatcher.stats
            for s in (victim, bystander, fresh):
                s.abort()
            acceptor.cancel()
            return {"event": "socket", "datagrams": sent, "flood_s": round(flood_s, 2),
                    "rate_per_s": round(sent / max(flood_s, 1e-9)),
                    "bystander_exact": exact, "new_connection_ok": pong == b"ping",
                    "bystander_dropped": bystander.stats().dropped_packets,
                    "escapes": len(escapes.records), "escape_messages": escapes.records[:5],
                    "dropped_malformed": stats.dropped_malformed,
                    "dropped_unknown_cid": stats.dropped_unknown_cid,
                    "ok": exact and pong == b"ping" and not escapes.records}
    finally:
        log.removeHandler(escapes)


async def _echo(stream: roamlink.Stream) -> None:
    with contextlib.suppress(roamlink.RoamlinkError):
        while data := await stream.read(65536):
            stream.write(data)
            await stream.drain()


# ------------------------------------------------------------------ driver
def load_progress(path: str | None, seed: int, chunk: int) -> dict[str, Any]:
    fresh: dict[str, Any] = {"seed": seed, "chunk": chunk, "done": {s: [] for s in STATES},
                             "totals": {s: {"fed": 0, "targets": 0, "escapes": 0,
                                            "failures": 0} for s in STATES},
                             "problems": []}
    if path is None or not os.path.exists(path):
        return fresh
    with open(path) as f:
        progress: dict[str, Any] = json.load(f)
    if progress.get("seed") != seed or progress.get("chunk") != chunk:
        raise SystemExit(f"{path} belongs to another run (seed/chunk differ); "
                         "use another --state-file")
    return progress


def save_progress(path: str | None, progress: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(progress, f)
    os.replace(tmp, path)


def fuzz_states(states: list[str], per_state: int, chunk: int, seed: int,
                state_file: str | None = None,
                report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the simulator part; return the progress record with totals."""
    progress = load_progress(state_file, seed, chunk)
    chunks = (per_state + chunk - 1) // chunk
    for state in states:
        done = set(progress["done"][state])
        for index in range(chunks):
            if index in done:
                continue
            count = min(chunk, per_state - index * chunk)
            res = run_chunk(state, index, count, seed)
            totals = progress["totals"][state]
            totals["fed"] += res.fed
            totals["targets"] += res.targets
            totals["escapes"] += len(res.escapes)
            totals["failures"] += len(res.failures)
            for problem in res.escapes + res.failures:
                progress["problems"].append(f"{state} chunk {index}: {problem}")
            progress["done"][state].append(index)
            save_progress(state_file, progress)
            if report is not None:
                report({"event": "chunk", "state": state, "chunk": index, "fed": res.fed,
                        "targets": res.targets, "escapes": len(res.escapes),
                        "failures": len(res.failures), "target_end": res.target_end_state})
    return progress


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-state", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--socket", type=int, default=100_000,
                        help="datagrams against the real listener socket (0: skip)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--states", default=",".join(STATES))
    parser.add_argument("--state-file", default=None,
                        help="progress file: finished chunks are skipped on the next run")
    parser.add_argument("--quiet", action="store_true", help="no per-chunk lines")
    args = parser.parse_args()
    states = [s for s in args.states.split(",") if s]
    for s in states:
        if s not in STATES:
            parser.error(f"unknown state {s!r} (choose from {', '.join(STATES)})")
    logging.getLogger("roamlink").setLevel(logging.WARNING)
    logging.getLogger("roamlink").propagate = False
    start = time.monotonic()
    progress = fuzz_states(states, args.per_state, args.chunk, args.seed, args.state_file,
                           None if args.quiet else lambda r: print(json.dumps(r), flush=True))
    sim_s = time.monotonic() - start
    ok = not progress["problems"]
    summary: dict[str, Any] = {"event": "summary", "seed": args.seed,
                               "simulator_seconds": round(sim_s, 1),
                               "states": progress["totals"],
                               "problems": progress["problems"][:20]}
    if args.socket:
        sock = asyncio.run(fuzz_socket(args.socket, args.seed))
        print(json.dumps(sock), flush=True)
        summary["socket"] = {k: sock[k] for k in ("datagrams", "escapes", "bystander_exact",
                                                   "new_connection_ok")}
        ok = ok and bool(sock["ok"])
    summary["ok"] = ok
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
