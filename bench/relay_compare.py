"""roamlink vs aioquic through the same user-space impairment relay, on real UDP sockets.

Issue 7: 10 ms each way, 1% random loss each way, 4 MiB from client to server; report both
goodputs and their ratio (target: roamlink >= 2x aioquic). Issue 15 adds delay jitter
(``--jitter 0,5,10``: each one-way delay varies by +- that many ms, in order with
``--jitter-mode fifo`` as on a cellular link, or reordering as netem), a bottleneck rate
(``--rate-mbit``) and several controllers in one run (``--cc vegas,newreno,bbr``).
Everything stays on 127.0.0.1. Each transfer ends with the server's SHA-256 of what it
received checked against the sender's.

Usage: PYTHONPATH=src python3 bench/relay_compare.py [--size MiB] [--delay s] [--loss p]
       [--runs n] [--cc vegas,newreno,bbr] [--jitter 0,5,10] [--jitter-mode fifo|reorder]
       [--rate-mbit R] [--no-aioquic]
Prints one JSON object per line (one per run and a summary per jitter).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import random
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _common import make_self_signed_cert

import roamlink
from roamlink import Config
from roamlink.tools.relay import Impairment, Relay
from roamlink.tools.relay import start_relay as project_start_relay

MiB = 1024 * 1024


# --------------------------------------------------------------------------------- relay
class _Relay:
    """The project's impairment relay (roamlink.tools.relay), as the benchmark uses it."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    @property
    def address(self) -> tuple[str, int]:
        return self.relay.local_addr

    def stats(self) -> dict[str, Any]:
        c = self.relay.counters()
        return {"forwarded": c.up_forwarded + c.down_forwarded, "dropped_loss": c.dropped_loss,
                "dropped_queue": c.dropped_queue}

    async def close(self) -> None:
        self.relay.close()
        await self.relay.wait_closed()


@dataclasses.dataclass(frozen=True)
class Path:
    """The impairment of each direction: one-way delay, jitter, loss, bottleneck rate."""

    delay: float
    loss: float
    jitter: float = 0.0
    jitter_mode: str = "reorder"
    rate_bps: float | None = None


async def start_relay(target: tuple[str, int], path: Path, seed: int) -> _Relay:
    """Same impairment both ways; seeded, so each run's loss pattern is reproducible."""
    impairment = Impairment(delay=path.delay, loss=path.loss, seed=seed, jitter=path.jitter,
                            jitter_mode=path.jitter_mode, rate=path.rate_bps)
    return _Relay(await project_start_relay(("127.0.0.1", 0), target, impairment=impairment))


# --------------------------------------------------------------------------------- roamlink
async def run_roamlink(payload: bytes, path: Path, seed: int, cc: str) -> dict[str, Any]:
    config = Config(congestion_control=cc)
    listener = await roamlink.listen("127.0.0.1", 0, config=config)
    relay = await start_relay(listener.local_addr[:2], path, seed)
    done: asyncio.Future[tuple[bytes, int, float]] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        stream = await listener.accept()
        h = hashlib.sha256()
        n = 0
        while data := await stream.read(1 << 20):
            h.update(data)
            n += len(data)
        done.set_result((h.digest(), n, time.perf_counter()))
        stream.write(b"ok")
        stream.write_eof()
        await stream.drain()
        await stream.wait_closed()

    server = asyncio.create_task(serve())
    host, port = relay.address
    start = time.perf_counter()
    stream = await roamlink.connect(host, port, config=config)
    for i in range(0, len(payload), 256 * 1024):
        stream.write(payload[i:i + 256 * 1024])
        await stream.drain()
    stream.write_eof()
    digest, n, end = await asyncio.wait_for(done, 300)
    st = stream.stats()
    assert await stream.read() == b"ok"
    await stream.wait_closed()
    await asyncio.wait_for(server, 30)
    listener.close()
    await listener.wait_closed()
    relay_stats = relay.stats()
    await relay.close()
    return {"impl": f"roamlink-{cc}", "bytes": n, "seconds": round(end - start, 3),
            "goodput_MBps": round(n / (end - start) / 1e6, 3),
            "exact": digest == hashlib.sha256(payload).digest(),
            "srtt_ms": round(st.smoothed_rtt * 1e3, 2), "min_rtt_ms": round(st.min_rtt * 1e3, 2),
            "lost": st.packets_lost, "retransmissions": st.retransmissions,
            "spurious": st.spurious_losses, "cwnd": st.cwnd,
            "packets_sent": st.packets_sent, "tail_loss_probes": st.tail_loss_probes,
            "congestion_events": st.congestion_events, "relay": relay_stats}


# --------------------------------------------------------------------------------- aioquic
async def run_aioquic(payload: bytes, path: Path, seed: int) -> dict[str, Any]:
    from aioquic.asyncio import connect, serve
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bytes, int, float]] = loop.create_future()

    class Sink(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._hash = hashlib.sha256()
            self._n = 0

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                self._hash.update(event.data)
                self._n += len(event.data)
                if event.end_stream:
                    self._quic.send_stream_data(event.stream_id, b"ok", end_stream=True)
                    self.transmit()
                    if not done.done():
                        done.set_result((self._hash.digest(), self._n, time.perf_counter()))

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_self_signed_cert(tmp)
        server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        server_cfg.load_cert_chain(cert, key)
        server = await serve("127.0.0.1", 0, configuration=server_cfg,
                             create_protocol=Sink)
    port = server._transport.get_extra_info("sockname")[1]  # noqa: SLF001
    relay = await start_relay(("127.0.0.1", port), path, seed)
    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["bench"],
                                   verify_mode=ssl.CERT_NONE)
    host, rport = relay.address
    start = time.perf_counter()
    async with connect(host, rport, configuration=client_cfg) as client:
        reader, writer = await client.create_stream()
        for i in range(0, len(payload), 256 * 1024):
            writer.write(payload[i:i + 256 * 1024])
            await writer.drain()
        writer.write_eof()
        digest, n, end = await asyncio.wait_for(done, 300)
        assert await asyncio.wait_for(reader.read(), 30) == b"ok"
    server.close()
    relay_stats = relay.stats()
    await relay.close()
    return {"impl": "aioquic", "bytes": n, "seconds": round(end - start, 3),
            "goodput_MBps": round(n / (end - start) / 1e6, 3),
            "exact": digest == hashlib.sha256(payload).digest(), "relay": relay_stats}


# --------------------------------------------------------------------------------- main
async def main(args: argparse.Namespace) -> None:
    payload = random.Random(42).randbytes(int(args.size * MiB))
    controllers = [c for c in args.cc.split(",") if c]
    rate = args.rate_mbit * 1e6 if args.rate_mbit else None
    for jitter_ms in (float(j) for j in args.jitter.split(",")):
        path = Path(args.delay, args.loss, jitter_ms / 1e3, args.jitter_mode, rate)
        results: dict[str, list[float]] = {}
        runners: list[tuple[str, Callable[[int], Any]]] = [
            (f"roamlink-{cc}", lambda s, cc=cc, p=path: run_roamlink(payload, p, s, cc))
            for cc in controllers]
        if not args.no_aioquic:
            runners.append(("aioquic", lambda s, p=path: run_aioquic(payload, p, s)))
        for run in range(args.runs):
            for name, runner in runners:
                res = await asyncio.wait_for(runner(run + 1), 600)
                res.update({"run": run, "delay_each_way_s": args.delay,
                            "loss_each_way": args.loss, "jitter_ms": jitter_ms,
                            "jitter_mode": args.jitter_mode, "rate_mbit": args.rate_mbit})
                print(json.dumps(res), flush=True)
                if not res["exact"]:
                    raise SystemExit(f"{name}: received data differs from what was sent")
                results.setdefault(name, []).append(res["goodput_MBps"])
        medians = {name: statistics.median(v) for name, v in results.items()}
        summary: dict[str, Any] = {
            "summary": True, "size_MiB": args.size, "delay_each_way_s": args.delay,
            "loss_each_way": args.loss, "jitter_ms": jitter_ms, "jitter_mode": args.jitter_mode,
            "rate_mbit": args.rate_mbit, "runs": args.runs, "MBps_median": medians}
        theirs = medians.get("aioquic")
        if theirs:
            summary["ratio_to_aioquic"] = {name: round(v / theirs, 2)
                                           for name, v in medians.items() if name != "aioquic"}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=4.0, help="MiB to send")
    parser.add_argument("--delay", type=float, default=0.010, help="one-way delay, s")
    parser.add_argument("--loss", type=float, default=0.01, help="loss each way")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cc", default="vegas",
                        help="comma-separated controllers (vegas, newreno, bbr)")
    parser.add_argument("--jitter", default="0", help="comma-separated jitters, ms (+-)")
    parser.add_argument("--jitter-mode", default="reorder", choices=["reorder", "fifo"])
    parser.add_argument("--rate-mbit", type=float, default=None, help="bottleneck, Mbit/s")
    parser.add_argument("--no-aioquic", action="store_true")
    asyncio.run(main(parser.parse_args()))
