"""roamlink vs aioquic through the same user-space impairment relay, on real UDP sockets.

Issue 7: 10 ms each way, 1% random loss each way, 4 MiB from client to server; report both
goodputs and their ratio (target: roamlink >= 2x aioquic). Everything stays on 127.0.0.1.
Each transfer ends with the server's SHA-256 of what it received checked against the sender's.

Usage: PYTHONPATH=src python3 bench/relay_compare.py [--size MiB] [--delay s] [--loss p]
       [--runs n] [--cc vegas|newreno]
Prints one JSON object per line (one per run and a summary).
"""

from __future__ import annotations

import argparse
import asyncio
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


async def start_relay(target: tuple[str, int], delay: float, loss: float, seed: int
                      ) -> _Relay:
    """Same delay and loss both ways; seeded, so each run's loss pattern is reproducible."""
    impairment = Impairment(delay=delay, loss=loss, seed=seed)
    return _Relay(await project_start_relay(("127.0.0.1", 0), target, impairment=impairment))


# --------------------------------------------------------------------------------- roamlink
async def run_roamlink(payload: bytes, delay: float, loss: float, seed: int, cc: str
                       ) -> dict[str, Any]:
    config = Config(congestion_control=cc)
    listener = await roamlink.listen("127.0.0.1", 0, config=config)
    relay = await start_relay(listener.local_addr[:2], delay, loss, seed)
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
            "congestion_events": st.congestion_events, "relay": relay_stats}


# --------------------------------------------------------------------------------- aioquic
async def run_aioquic(payload: bytes, delay: float, loss: float, seed: int) -> dict[str, Any]:
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
    relay = await start_relay(("127.0.0.1", port), delay, loss, seed)
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
    results: dict[str, list[float]] = {}
    runners: list[tuple[str, Callable[[int], Any]]] = [
        (f"roamlink-{args.cc}",
         lambda s: run_roamlink(payload, args.delay, args.loss, s, args.cc)),
        ("aioquic", lambda s: run_aioquic(payload, args.delay, args.loss, s)),
    ]
    for run in range(args.runs):
        for name, runner in runners:
            res = await asyncio.wait_for(runner(run + 1), 600)
            res.update({"run": run, "delay_each_way_s": args.delay, "loss_each_way": args.loss})
            print(json.dumps(res), flush=True)
            if not res["exact"]:
                raise SystemExit(f"{name}: received data differs from what was sent")
            results.setdefault(name, []).append(res["goodput_MBps"])
    ours = statistics.median(results[f"roamlink-{args.cc}"])
    theirs = statistics.median(results["aioquic"])
    print(json.dumps({"summary": True, "size_MiB": args.size, "delay_each_way_s": args.delay,
                      "loss_each_way": args.loss, "runs": args.runs,
                      f"roamlink_{args.cc}_MBps_median": ours, "aioquic_MBps_median": theirs,
                      "ratio": round(ours / theirs, 2) if theirs else None}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=4.0, help="MiB to send")
    parser.add_argument("--delay", type=float, default=0.010, help="one-way delay, s")
    parser.add_argument("--loss", type=float, default=0.01, help="loss each way")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cc", default="vegas", choices=["vegas", "newreno"])
    asyncio.run(main(parser.parse_args()))
