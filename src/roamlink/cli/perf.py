"""``roamlink perf server|client``: an iperf-like throughput test.

Protocol (see docs/cli.md): the client sends ``b"RLPERF1\\n"`` and then data as fast as the
connection takes it for ``--seconds``, then ends its stream. The server counts the bytes from
the first to the last and answers with one JSON line ``{"bytes": N, "seconds": T}`` before it
ends its side. Goodput is what the receiver got, divided by the time it took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from typing import Any

from .. import compiled
from ..api import Stream
from ..config import Config
from ..errors import RoamlinkError
from .common import (
    EXIT_CONNECTION,
    EXIT_OK,
    CliError,
    close_quietly,
    describe_error,
    drain_unless,
    listen_address,
    remote_address,
    show,
)
from .output import Output, format_bits, format_bytes
from .trust import (
    add_client_key_options,
    add_server_key_options,
    open_server,
    open_trusted_stream,
)
from .workers import add_workers_option, serve_with_workers

MAGIC = b"RLPERF1\n"
_WRITE = 64 * 1024
_MAX_UNSENT = 256 * 1024


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("perf", help="iperf-like throughput test (perf server / perf client)",
                       description="Measure goodput, retransmissions and RTT between a "
                                   "`perf server` and a `perf client`.")
    roles = p.add_subparsers(dest="role", required=True, metavar="{server,client}")
    server = roles.add_parser("server", parents=parents, help="wait for perf clients",
                              description="Wait for perf clients and report what they send.")
    server.add_argument("listen", metavar="[HOST:]PORT", type=listen_address, nargs="?",
                        default=("127.0.0.1", 5201),
                        help="where to listen (default 127.0.0.1:5201; 0 picks a free port)")
    server.add_argument("--once", action="store_true", help="exit after one test")
    server.add_argument("--interval", type=float, default=1.0,
                        help="seconds between reports (0: only a summary)")
    add_server_key_options(server)
    server.set_defaults(func=run_server)
    add_workers_option(server, run_workers)
    client = roles.add_parser("client", parents=parents, help="send data to a perf server",
                              description="Send as fast as the connection allows for "
                                          "--seconds and report per interval and in total.")
    client.add_argument("target", metavar="HOST:PORT", type=remote_address, help="the server")
    client.add_argument("--seconds", "-t", type=_positive, default=10.0,
                        help="how long to send (default 10)")
    client.add_argument("--interval", "-i", type=_positive, default=1.0,
                        help="seconds between reports (default 1)")
    add_client_key_options(client)
    client.set_defaults(func=run_client)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


# ---------------------------------------------------------------------------- server
async def run_server(args: argparse.Namespace, config: Config, out: Output) -> int:
    listener, key_text, public_key = await open_server(args.listen, config,
                                                       args.server_key_file,
                                                       args.authorized_keys)
    tasks: set[asyncio.Task[None]] = set()
    try:
        addr = listener.local_addr
        out.report("listening", f"perf server listening on udp {show(addr)}; {key_text}",
                   host=str(addr[0]), port=addr[1], mode="perf", public_key=public_key)
        async for stream in listener:
            task = asyncio.create_task(_serve_test(stream, out, args.interval))
            if args.once:
                await task
                return EXIT_OK
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        listener.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 3.0)
    return EXIT_OK  # pragma: no cover


def run_workers(args: argparse.Namespace, config: Config, out: Output) -> int:
    """``perf server --workers N``: tests served by N processes sharing the port."""
    async def serve_test(stream: Stream) -> None:
        await _serve_test(stream, out, args.interval)

    return serve_with_workers(args, config, out, serve_test, "perf", "perf server")


async def _serve_test(stream: Stream, out: Output, interval: float) -> None:
    cid = stream.connection_id
    try:
        if await stream.readexactly(len(MAGIC)) != MAGIC:
            out.report("refused", f"connection {cid}: not a perf client", connection_id=cid)
            stream.abort(1, "not a perf client")
            return
        out.report("connection", f"perf test {cid} from {show(stream.remote_addr)}",
                   connection_id=cid, remote=show(stream.remote_addr))
        received = 0
        first: float | None = None
        last_time = time.monotonic()
        last = 0
        now = last_time
        while chunk := await stream.read(1 << 20):
            now = time.monotonic()
            if first is None:
                first = last_time = now
            received += len(chunk)
            if interval > 0 and now - last_time >= interval:
                rate = (received - last) / (now - last_time)
                out.report("interval", f"{cid}: {now - first:6.1f} s  "
                           f"{format_bytes(received - last):>10}  {format_bits(rate):>14}",
                           connection_id=cid, seconds=round(now - first, 3),
                           bytes=received - last, bits_per_s=round(rate * 8, 1))
                last, last_time = received, now
        elapsed = now - first if first is not None else 0.0
        stream.write((json.dumps({"bytes": received, "seconds": elapsed}) + "\n").encode())
        stream.write_eof()
        goodput = received / elapsed if elapsed > 0 else 0.0
        out.report("summary", f"{cid}: received {format_bytes(received)} in {elapsed:.2f} s "
                   f"= {format_bits(goodput)}", connection_id=cid, bytes=received,
                   seconds=round(elapsed, 3), bits_per_s=round(goodput * 8, 1))
        await close_quietly(stream)
    except RoamlinkError as exc:
        out.report("connection_failed", f"connection {cid}: {describe_error(exc)[0]}",
                   connection_id=cid, error=describe_error(exc)[0])


# ---------------------------------------------------------------------------- client
async def run_client(args: argparse.Namespace, config: Config, out: Output) -> int:
    stream = await open_trusted_stream(args.target, config, out, args)
    try:
        return await _run_test(stream, args.seconds, args.interval, out)
    finally:
        await close_quietly(stream)


async def _run_test(stream: Stream, seconds: float, interval: float, out: Output) -> int:
    variant = "compiled core" if compiled else "pure Python"
    out.report("connected", f"connected to {show(stream.remote_addr)}, sending for "
               f"{seconds:g} s ({variant})", remote=show(stream.remote_addr),
               connection_id=stream.connection_id, seconds=seconds, compiled=compiled)
    payload = os.urandom(_WRITE)
    stream.write(MAGIC)
    written = len(MAGIC)
    start = time.monotonic()
    deadline = start + seconds
    last_acked = 0
    last_retx = 0
    last_time = start
    intervals: list[dict[str, Any]] = []

    def acked() -> int:
        return max(0, written - stream.stats().send_buffered - len(MAGIC))

    async def reporter() -> None:
        nonlocal last_acked, last_retx, last_time
        while True:
            await asyncio.sleep(max(0.0, last_time + interval - time.monotonic()))
            now = time.monotonic()
            st = stream.stats()
            done = acked()
            rate = (done - last_acked) / (now - last_time)
            row: dict[str, Any] = {
                   "start": round(last_time - start, 3), "end": round(now - start, 3),
                   "bytes": done - last_acked, "bits_per_s": round(rate * 8, 1),
                   "retransmissions": st.retransmissions - last_retx,
                   "smoothed_rtt_ms": round(st.smoothed_rtt * 1e3, 3), "cwnd": st.cwnd}
            intervals.append(row)
            out.report("interval", f"{row['start']:5.1f}-{row['end']:5.1f} s  "
                       f"{format_bytes(done - last_acked):>10}  {format_bits(rate):>14}  "
                       f"retx {row['retransmissions']:>5}  rtt {row['smoothed_rtt_ms']:7.2f} ms"
                       f"  cwnd {format_bytes(st.cwnd)}", **row)
            last_acked, last_retx, last_time = done, st.retransmissions, now

    task = asyncio.create_task(reporter())
    try:
        while time.monotonic() < deadline:
            # Queue little beyond what is in flight, so the test ends on time: what is still
            # unsent at the deadline would otherwise stretch it (the window is not capped).
            if written - stream.stats().stream_bytes_sent > _MAX_UNSENT:
                await asyncio.sleep(0.001)
                continue
            stream.write(payload)
            written += len(payload)
            await drain_unless(stream, timeout=max(0.0, deadline - time.monotonic()))
        stream.write_eof()
        data = b""
        while chunk := await stream.read(4096):
            data += chunk
            if len(data) > 4096:
                break
    finally:
        task.cancel()
    try:
        result = json.loads(data.decode())
        received, recv_seconds = int(result["bytes"]), float(result["seconds"])
    except (ValueError, KeyError, TypeError):
        raise CliError(f"{show(stream.remote_addr)} did not answer like a perf server "
                       "(is it `roamlink perf server`?)", EXIT_CONNECTION) from None
    elapsed = time.monotonic() - start
    st = stream.stats()
    goodput = received / recv_seconds if recv_seconds > 0 else 0.0
    retx_pct = 100.0 * st.retransmissions / st.packets_sent if st.packets_sent else 0.0
    out.report(
        "summary",
        f"summary: {format_bytes(received)} delivered in {recv_seconds:.2f} s, goodput "
        f"{format_bits(goodput)}; {st.retransmissions} retransmissions ({retx_pct:.2f}% of "
        f"{st.packets_sent} packets), {st.packets_lost} lost; RTT smoothed "
        f"{st.smoothed_rtt * 1e3:.2f} ms, min {st.min_rtt * 1e3:.2f} ms",
        style="bold", bytes=received, seconds=round(recv_seconds, 3),
        total_seconds=round(elapsed, 3), goodput_bits_per_s=round(goodput * 8, 1),
        retransmissions=st.retransmissions, packets_sent=st.packets_sent,
        packets_lost=st.packets_lost, smoothed_rtt_ms=round(st.smoothed_rtt * 1e3, 3),
        min_rtt_ms=round(st.min_rtt * 1e3, 3), congestion_controller=st.congestion_controller,
        intervals=len(intervals))
    return EXIT_OK
