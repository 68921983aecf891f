"""One-way bulk transfer over loopback: roamlink vs asyncio TCP, aioquic, qh3 and raw UDP.

"roamlink" is encrypted (the default; aioquic and qh3 encrypt too, so that is the like-for-like
figure); "roamlink-plain" runs ``insecure_plaintext`` on both ends, so the cost of encryption
shows in the same run.

Each run uses two fresh processes: a receiver (server) and a sender (client). Goodput is
the bytes the receiver got and verified (count and SHA-256) divided by the time from the
sender starting to connect to the receiver seeing the last byte (CLOCK_MONOTONIC is shared
by both processes). raw_udp is the ceiling of a bare asyncio UDP socket pair: the sender
blasts 1200-byte datagrams, the receiver counts them and times first to last datagram.

Usage: python bench/compare.py [--size-mib 64] [--repeat 3] [--only roamlink,tcp,...]
       [--uvloop] [--quick] [--timeout s] [--interleave]

``roamlink-<controller>`` (``roamlink-newreno``, ``roamlink-vegas``, ``roamlink-bbr``) runs
roamlink with that congestion controller; ``--interleave`` runs the transports in turn
(run 0 of each, then run 1 of each, ...) so a changing machine load hits them alike.
Prints one JSON line per run, one per transport (median) and a final summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import os
import ssl
import sys
import tempfile
from typing import Any

from _common import (
    CHUNK,
    MiB,
    add_common_args,
    child_setup,
    emit,
    machine_info,
    median,
    now,
    payload,
    rnd,
    run_loop,
    run_pair,
    say_port,
    say_result,
    sha256_hex,
    stream_connect,
    stream_server,
)

TRANSPORTS = ("roamlink", "roamlink-plain", "tcp", "aioquic", "qh3", "raw_udp")
UDP_SIZE = 1200
UDP_IDLE_END = 1.0  # receiver gives up this long after the last datagram
SCRIPT = os.path.abspath(__file__)


def _numeric_stats(stream: Any) -> dict[str, Any]:
    stats = getattr(stream, "stats", None)
    if stats is None:
        return {}
    st = stats()
    if not dataclasses.is_dataclass(st):
        return {}
    return {k: v for k, v in dataclasses.asdict(st).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


# ================================================================== receivers (server child)
async def recv_stream(kind: str, expect: int, expect_sha: str) -> None:
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handle(stream: Any) -> None:
        t_accept = now()
        digest = hashlib.sha256()
        got = 0
        while chunk := await stream.read(1 << 20):
            digest.update(chunk)
            got += len(chunk)
        t_last = now()
        stream.write(b"ok")
        stream.write_eof()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stream.drain(), 10)
        if not done.done():
            done.set_result({"bytes": got, "sha256": digest.hexdigest(), "t_accept": t_accept,
                             "t_last": t_last, "stats": _numeric_stats(stream)})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stream.wait_closed(), 10)

    port, close = await stream_server(kind, handle)
    say_port(port)
    result = await done
    await asyncio.sleep(0.05)  # let the "ok" go out before tearing down
    await close()
    result["ok"] = result["bytes"] == expect and result["sha256"] == expect_sha
    say_result(result)


async def recv_quic(kind: str, expect: int, expect_sha: str, cert: str, key: str) -> None:
    if kind == "aioquic":
        from aioquic.asyncio import serve
        from aioquic.asyncio.protocol import QuicConnectionProtocol
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
    else:
        from qh3.asyncio import serve  # type: ignore[no-redef]
        from qh3.asyncio.protocol import QuicConnectionProtocol  # type: ignore[no-redef]
        from qh3.quic.configuration import QuicConfiguration  # type: ignore[no-redef]
        from qh3.quic.events import (  # type: ignore[no-redef]
            ConnectionTerminated,
            QuicEvent,
            StreamDataReceived,
        )

    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()
    closed: asyncio.Future[None] = loop.create_future()

    class Sink(QuicConnectionProtocol):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._digest = hashlib.sha256()
            self._got = 0
            self._t_first: float | None = None

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                if self._t_first is None:
                    self._t_first = now()
                self._digest.update(event.data)
                self._got += len(event.data)
                if event.end_stream:
                    t_last = now()
                    self._quic.send_stream_data(event.stream_id, b"ok", end_stream=True)
                    self.transmit()
                    if not done.done():
                        done.set_result({"bytes": self._got, "sha256": self._digest.hexdigest(),
                                         "t_accept": self._t_first, "t_last": t_last})
            elif isinstance(event, ConnectionTerminated) and not closed.done():
                closed.set_result(None)

    config = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Sink)
    say_port(int(server._transport.get_extra_info("sockname")[1]))
    result = await done
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, 3)
    server.close()
    result["ok"] = result["bytes"] == expect and result["sha256"] == expect_sha
    say_result(result)


class _UdpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.announced: int | None = None
        self.end = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data.startswith(b"END") and len(data) == 11:
            self.announced = int.from_bytes(data[3:], "big")
            if not self.end.done():
                self.end.set_result(None)
            return
        t = now()
        if not self.count:
            self.t_first = t
        self.t_last = t
        self.count += 1
        self.bytes += len(data)


async def recv_udp(expect: int) -> None:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(_UdpSink, local_addr=("127.0.0.1", 0))
    say_port(int(transport.get_extra_info("sockname")[1]))
    expected_count = -(-expect // UDP_SIZE)
    while not sink.end.done() and sink.count < expected_count:
        before = sink.count
        await asyncio.wait([sink.end], timeout=UDP_IDLE_END)
        if sink.count and sink.count == before:
            break  # idle: the end marker itself was lost
    transport.close()
    say_result({"bytes": sink.bytes, "datagrams": sink.count, "t_accept": sink.t_first,
                "t_last": sink.t_last, "announced": sink.announced,
                "ok": sink.bytes > 0})


# ================================================================== senders (client child)
async def send_stream(kind: str, port: int, data: bytes) -> None:
    t_start = now()
    stream = await stream_connect(kind, port)
    t_connected = now()
    view = memoryview(data)
    for off in range(0, len(data), CHUNK):
        stream.write(view[off:off + CHUNK])
        await stream.drain()
    stream.write_eof()
    t_sent = now()
    reply = await stream.read()
    stats = _numeric_stats(stream)
    stream.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream.wait_closed(), 10)
    say_result({"t_start": t_start, "t_connected": t_connected, "t_sent": t_sent,
                "reply_ok": reply == b"ok", "stats": stats})


async def send_quic(kind: str, port: int, data: bytes) -> None:
    if kind == "aioquic":
        from aioquic.asyncio import connect
        from aioquic.quic.configuration import QuicConfiguration
    else:
        from qh3.asyncio import connect  # type: ignore[no-redef]
        from qh3.quic.configuration import QuicConfiguration  # type: ignore[no-redef]

    config = QuicConfiguration(is_client=True, alpn_protocols=["bench"],
                               verify_mode=ssl.CERT_NONE, server_name="localhost")
    t_start = now()
    async with connect("127.0.0.1", port, configuration=config) as client:
        t_connected = now()
        reader, writer = await client.create_stream()
        # qh3's StreamWriter has no protocol, so its drain() raises; yield to the loop instead.
        can_drain = getattr(writer, "_protocol", None) is not None
        view = memoryview(data)
        for off in range(0, len(data), CHUNK):
            writer.write(bytes(view[off:off + CHUNK]))
            if can_drain:
                await writer.drain()
            else:
                await asyncio.sleep(0)
        writer.write_eof()
        t_sent = now()
        reply = await reader.read()
    say_result({"t_start": t_start, "t_connected": t_connected, "t_sent": t_sent,
                "reply_ok": reply == b"ok"})


class _UdpSource(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.resumed.set()

    def pause_writing(self) -> None:
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()

    def error_received(self, exc: Exception) -> None:  # ECONNREFUSED etc.: keep blasting
        pass


async def send_udp(port: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    transport, source = await loop.create_datagram_endpoint(
        _UdpSource, remote_addr=("127.0.0.1", port))
    t_start = now()
    view = memoryview(data)
    sent = 0
    for i, off in enumerate(range(0, len(data), UDP_SIZE)):
        transport.sendto(view[off:off + UDP_SIZE])
        sent += 1
        if i % 64 == 63:
            await source.resumed.wait()
            await asyncio.sleep(0)
    t_sent = now()
    for _ in range(5):  # the end marker may be dropped like any datagram
        await asyncio.sleep(0.02)
        transport.sendto(b"END" + sent.to_bytes(8, "big"))
    await asyncio.sleep(0.02)
    transport.close()
    say_result({"t_start": t_start, "t_sent": t_sent, "datagrams_sent": sent, "reply_ok": True})


# ================================================================== orchestrator
def child_main(args: argparse.Namespace) -> int:
    child_setup(args.timeout)
    size = int(args.size_mib * MiB)
    kind = args.transport
    if args.role == "recv":
        if kind == "raw_udp":
            coro = recv_udp(size)
        elif kind in ("aioquic", "qh3"):
            coro = recv_quic(kind, size, args.sha, args.cert, args.key)
        else:
            coro = recv_stream(kind, size, args.sha)
    else:
        data = payload(size)
        if kind == "raw_udp":
            coro = send_udp(args.port, data)
        elif kind in ("aioquic", "qh3"):
            coro = send_quic(kind, args.port, data)
        else:
            coro = send_stream(kind, args.port, data)
    run_loop(coro, args.uvloop)
    return 0


async def run_transfer(kind: str, size_mib: float, sha: str, cert: tuple[str, str],
                       use_uvloop: bool, timeout: float) -> dict[str, Any]:
    """One run of one transport in two fresh processes; the run's JSON fields."""
    common = ["--transport", kind, "--size-mib", repr(size_mib)]
    if use_uvloop:
        common.append("--uvloop")
    recv_args = ["--role", "recv", *common, "--sha", sha, "--cert", cert[0], "--key", cert[1]]
    server, client = await run_pair(SCRIPT, recv_args, ["--role", "send", *common], timeout)
    size = int(size_mib * MiB)
    out: dict[str, Any] = {"bytes": server["bytes"]}
    if kind == "raw_udp":
        seconds = server["t_last"] - server["t_accept"]
        sent = client["datagrams_sent"]
        out.update(datagrams_sent=sent, datagrams_received=server["datagrams"],
                   loss=rnd(1 - server["datagrams"] / sent, 4) if sent else None,
                   ok=server["ok"])
    else:
        seconds = server["t_last"] - client["t_start"]
        out.update(ok=bool(server["ok"] and client["reply_ok"] and server["bytes"] == size),
                   handshake_ms=rnd((client["t_connected"] - client["t_start"]) * 1e3, 3))
        if client.get("stats"):
            out["sender_stats"] = client["stats"]
    out["seconds"] = rnd(seconds, 4)
    out["mb_per_s"] = rnd(server["bytes"] / seconds / 1e6 if seconds > 0 else None)
    return out


def parse_args(argv: list[str] | None, *, repeat: int, only: str,
               description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size-mib", type=float, default=None, help="MiB to send (64)")
    parser.add_argument("--repeat", type=int, default=None, help=f"runs per transport ({repeat})")
    parser.add_argument("--only", default=only, help="comma-separated transports")
    parser.add_argument("--interleave", action="store_true",
                        help="alternate the transports run by run")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any run failed (a smoke test: timing never fails it)")
    add_common_args(parser, timeout=180)
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    parser.add_argument("--sha", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size_mib is None:
        args.size_mib = 1.0 if args.quick else 64.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else repeat
    return args


async def compare(args: argparse.Namespace, bench: str) -> dict[str, Any]:
    """Run every selected transport ``repeat`` times; emit run, per-transport, summary lines."""
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    size = int(args.size_mib * MiB)
    sha = sha256_hex(payload(size))
    loop_name = "uvloop" if args.uvloop else "asyncio"
    medians: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="roamlink-bench-") as tmp:
        from _common import make_self_signed_cert

        cert: tuple[str, str] = ("", "")
        cert_error = ""
        if {"aioquic", "qh3"} & set(kinds):
            try:
                cert = make_self_signed_cert(tmp)
            except Exception as exc:  # e.g. cryptography not installed: QUIC runs report it
                cert_error = f"certificate: {type(exc).__name__}: {exc}"
        all_rates: dict[str, list[float]] = {k: [] for k in kinds}
        all_errors: dict[str, list[str]] = {k: [] for k in kinds}
        if args.interleave:
            order = [(k, i) for i in range(args.repeat) for k in kinds]
        else:
            order = [(k, i) for k in kinds for i in range(args.repeat)]
        for kind, i in order:
            rates = all_rates[kind]
            errors = all_errors[kind]
            line: dict[str, Any] = {"bench": bench, "transport": kind, "run": i,
                                    "size_mib": args.size_mib, "loop": loop_name}
            if kind not in TRANSPORTS and not kind.startswith("roamlink-"):
                line["error"] = f"unknown transport {kind!r}"
            elif cert_error and kind in ("aioquic", "qh3"):
                line["error"] = cert_error
            else:
                try:
                    line.update(await asyncio.wait_for(
                        run_transfer(kind, args.size_mib, sha, cert, args.uvloop,
                                     args.timeout), args.timeout + 30))
                except Exception as exc:  # one broken transport must not hide the rest
                    line["error"] = f"{type(exc).__name__}: {exc}"
            if line.get("error"):
                errors.append(line["error"])
            elif line["ok"] and line["mb_per_s"]:
                rates.append(line["mb_per_s"])
            elif not line["ok"]:
                line["error"] = "data not verified"
                errors.append(line["error"])
            emit(line)
        for kind in kinds:
            rates, errors = all_rates[kind], all_errors[kind]
            medians[kind] = median(rates)
            if args.repeat > 1 or bench == "compare":
                summary_line: dict[str, Any] = {
                    "bench": bench, "transport": kind, "summary": "transport",
                    "runs": len(rates), "mb_per_s_median": rnd(medians[kind]),
                    "mb_per_s_runs": rates, "ok": bool(rates)}
                if errors:
                    summary_line["error"] = errors[0]
                emit(summary_line)
    final: dict[str, Any] = {"bench": bench, "summary": bench, "size_mib": args.size_mib,
                             "repeat": args.repeat, "loop": loop_name,
                             "mb_per_s": {k: rnd(v) for k, v in medians.items()},
                             **machine_info()}
    ours = medians.get("roamlink")
    ratios: dict[str, float | None] = {}
    for other in ("roamlink-plain", "aioquic", "qh3", "raw_udp", "tcp"):
        if other in medians:
            theirs = medians[other]
            ratios[f"roamlink/{other}"] = (rnd(ours / theirs, 4) if ours and theirs else None)
    final["ratios"] = ratios
    final["errors"] = sum(len(e) for e in all_errors.values())
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, repeat=3, only=",".join(TRANSPORTS),
                      description=__doc__.splitlines()[0] if __doc__ else "")
    if args.role:
        return child_main(args)
    final = asyncio.run(compare(args, "compare"))
    emit(final)
    if args.strict and final["errors"]:
        return 1
    return 0 if any(final["mb_per_s"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
