"""Throughput of roamlink.tools.relay with no impairment, on 127.0.0.1.

The relay runs in its own process (its own core); a bare asyncio UDP sender and receiver run in
this process.  The receiver reports its datagram count back (through the relay) every 16
datagrams and the sender keeps at most --window datagrams unreported, so the sender cannot
simply overrun the socket buffers; a window that stalls (datagrams dropped by a full buffer)
is reopened after 50 ms.  For reference the same harness is also run without the relay.

Usage: PYTHONPATH=src python3 bench/relay_throughput.py [--seconds 3] [--size 1200]
       [--window 256] [--uvloop] [--no-baseline]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import socket
import struct
import sys
import time
from typing import Any, cast

ACK_EVERY = 16
STALL_CHECK = 0.05


def _install_loop(use_uvloop: bool) -> str:
    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    return "asyncio"


# ------------------------------------------------------------------------ relay process
def _relay_main(conn: multiprocessing.connection.Connection, target: tuple[str, int],
                use_uvloop: bool) -> None:
    from roamlink.tools.relay import start_relay

    _install_loop(use_uvloop)

    async def serve() -> None:
        relay = await start_relay(("127.0.0.1", 0), target)
        conn.send(relay.local_addr)
        cpu0 = time.process_time()
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(None))
        await stop
        loop.remove_reader(conn.fileno())
        conn.recv()
        stats: dict[str, Any] = dataclasses.asdict(relay.counters())
        stats["cpu_s"] = round(time.process_time() - cpu0, 3)
        conn.send(stats)
        relay.close()
        await relay.wait_closed()

    asyncio.run(serve())


# ------------------------------------------------------------------- sender / receiver
class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.count = 0
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        self.bytes += len(data)
        if self.count % ACK_EVERY == 0 and self.transport is not None:
            self.transport.sendto(struct.pack("!Q", self.count), addr)


class _Sender(asyncio.DatagramProtocol):
    def __init__(self, size: int, window: int) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.payload = b"\x00" * size
        self.window = window
        self.sent = 0
        self.acked = 0  # latest datagram count reported by the receiver
        self.lost = 0  # datagrams written off as dropped (never to be reported)
        self.stalls = 0
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.fill()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        (count,) = struct.unpack("!Q", data)
        if count > self.acked:
            self.acked = count
        self.fill()

    def fill(self) -> None:
        t = self.transport
        if t is None or not self.running:
            return
        while self.sent - self.lost - self.acked < self.window:
            t.sendto(self.payload)
            self.sent += 1

    def reopen(self) -> None:
        """Forget datagrams that will never be reported (dropped by a full buffer)."""
        self.stalls += 1
        self.lost = self.sent - self.acked
        self.fill()


async def _measure(target: tuple[str, int], receiver: _Receiver, size: int, window: int,
                   seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    st, sender = await loop.create_datagram_endpoint(
        lambda: _Sender(size, window), remote_addr=target)
    try:
        async def watchdog() -> None:
            last = -1
            while sender.running:
                await asyncio.sleep(STALL_CHECK)
                if sender.acked == last and sender.running:
                    sender.reopen()  # no report for a while: the window's datagrams were lost
                last = sender.acked

        wd = asyncio.ensure_future(watchdog())
        await asyncio.sleep(0.3)  # warm-up
        b0, n0, t0 = receiver.bytes, receiver.count, time.perf_counter()
        await asyncio.sleep(seconds)
        b1, n1, t1 = receiver.bytes, receiver.count, time.perf_counter()
        sender.running = False
        wd.cancel()
        await asyncio.sleep(0.1)  # let the tail arrive before the next run
        elapsed = t1 - t0
        return {
            "mb_per_s": round((b1 - b0) / elapsed / 1e6, 2),
            "datagrams_per_s": round((n1 - n0) / elapsed),
            "sent": sender.sent,
            "received": receiver.count,
            "stalls": sender.stalls,
        }
    finally:
        st.close()


async def _run(args: argparse.Namespace, loop_name: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rt, receiver = await loop.create_datagram_endpoint(_Receiver, local_addr=("127.0.0.1", 0))
    target = rt.get_extra_info("sockname")[:2]
    sock = rt.get_extra_info("socket")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
    result: dict[str, Any] = {"bench": "relay_throughput", "loop": loop_name,
                              "relay_loop": "uvloop" if args.relay_uvloop else "asyncio",
                              "size": args.size, "window": args.window,
                              "seconds": args.seconds}
    try:
        if not args.no_baseline:
            result["baseline"] = await _measure(target, receiver, args.size, args.window,
                                                args.seconds)
            receiver.count = receiver.bytes = 0  # the next sender starts counting from zero
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_relay_main, args=(child, target, args.relay_uvloop), daemon=True)
        proc.start()
        try:
            relay_addr = await loop.run_in_executor(None, _recv_with_timeout, parent, 30.0)
            result["relay"] = await _measure(tuple(relay_addr), receiver, args.size,
                                             args.window, args.seconds)
            parent.send("stop")
            result["relay_counters"] = await loop.run_in_executor(
                None, _recv_with_timeout, parent, 30.0)
        finally:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    finally:
        rt.close()
    result["mb_per_s"] = result["relay"]["mb_per_s"]
    rc = result["relay_counters"]
    handled = rc["up_received"] + rc["down_received"]
    if handled:
        result["relay_cpu_us_per_datagram"] = round(rc["cpu_s"] / handled * 1e6, 2)
    return result


def _recv_with_timeout(conn: multiprocessing.connection.Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError("relay process did not answer")
    return conn.recv()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=1200, help="datagram payload bytes")
    ap.add_argument("--window", type=int, default=256, help="unreported datagrams allowed")
    ap.add_argument("--uvloop", action="store_true", help="uvloop for the sender/receiver")
    ap.add_argument("--relay-uvloop", action="store_true", help="uvloop in the relay process")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without relay")
    args = ap.parse_args()
    if not 0 < args.seconds <= 60 or not 0 < args.size <= 65000 or not 0 < args.window <= 100000:
        sys.exit("bad arguments")
    loop_name = _install_loop(args.uvloop)
    result = asyncio.run(_run(args, loop_name))
    print(json.dumps(result), flush=True)
    if result["mb_per_s"] <= 0:
        sys.exit("nothing got through the relay")


if __name__ == "__main__":
    main()
