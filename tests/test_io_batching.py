"""The socket layer's batching: UDP GSO sends, UDP_GRO receives, drain per wake-up, fallbacks.

Real loopback transfers check that both paths (offload and forced fallback, and a mix of the
two ends) deliver intact data; fake sockets check how datagrams are grouped into system calls
and that a failing GSO send falls back instead of losing data. No timing asserts.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import sys
from typing import Any

import pytest

import roamlink
from roamlink import Config
from roamlink.api.stream import Stream
from roamlink.core.events import Address
from roamlink.io import udp_socket as udp_mod
from roamlink.io.clock import LoopScheduler
from roamlink.io.driver import ConnectionObserver, DriverSocket
from roamlink.io.endpoint import Endpoint
from roamlink.io.timer_heap import TimerHeap
from roamlink.io.udp_socket import SOL_UDP, UDP_GRO, UDP_SEGMENT, UdpSocket, offload_allowed
from roamlink.testing.clock import VirtualClock
from roamlink.testing.simnet import SimNode

from .conftest import run, virtual_pair

LINUX = sys.platform.startswith("linux")


def _kernel_has_offload() -> bool:
    if not LINUX:
        return False
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    finally:
        sock.close()
    return True


needs_offload = pytest.mark.skipif(
    not _kernel_has_offload() or not offload_allowed(Config()),
    reason="this kernel/platform has no UDP GSO/GRO, or ROAMLINK_UDP_OFFLOAD=0 forbids it")


async def _transfer(server_cfg: Config, client_cfg: Config, size: int
                    ) -> tuple[UdpSocket, UdpSocket]:
    """Send ``size`` bytes client -> server and back; return both sockets (stats kept)."""
    payload = os.urandom(size)
    async with await roamlink.listen("127.0.0.1", 0, config=server_cfg) as listener:
        async def serve() -> None:
            stream = await listener.accept()
            async with stream:
                data = await stream.readexactly(size)
                stream.write(hashlib.sha256(data).digest())
                await stream.drain()

        server = asyncio.create_task(serve())
        stream = await roamlink.connect("127.0.0.1", listener.local_addr[1], config=client_cfg)
        client_ep = stream._endpoint  # noqa: SLF001 - the test inspects the socket layer
        stream.write(payload)
        await stream.drain()
        digest = await stream.readexactly(32)
        assert digest == hashlib.sha256(payload).digest()
        stream.close()
        await stream.wait_closed()
        await server
        return listener.endpoint.udp, client_ep.udp


@needs_offload
def test_offload_batches_both_ways_on_loopback() -> None:
    async def main() -> None:
        server_ep, client_ep = await _transfer(Config(), Config(), 2 * 1024 * 1024)
        assert client_ep.gso and client_ep.gro and server_ep.gso and server_ep.gro
        assert client_ep.io.gso_batches > 0  # many datagrams left in one sendmsg
        assert client_ep.io.datagrams_out > client_ep.io.send_calls
        assert server_ep.io.gro_batches > 0  # and arrived coalesced in one recvmsg
        assert server_ep.io.datagrams_in > server_ep.io.recv_calls
        assert server_ep.errors == 0 and client_ep.io.send_dropped == 0

    run(main(), 60)


def test_forced_fallback_by_config() -> None:
    async def main() -> None:
        cfg = Config(udp_offload=False)
        server_ep, client_ep = await _transfer(cfg, cfg, 1024 * 1024)
        for ep in (server_ep, client_ep):
            assert not ep.gso and not ep.gro
            assert ep.io.gso_batches == 0 and ep.io.gro_batches == 0
            assert ep.io.datagrams_out == ep.io.send_calls  # one system call per datagram
            assert ep.io.datagrams_in == ep.io.recv_calls

    run(main(), 60)


def test_forced_fallback_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROAMLINK_UDP_OFFLOAD", "0")
    assert not offload_allowed(Config())
    monkeypatch.setenv("ROAMLINK_UDP_OFFLOAD", "1")
    assert offload_allowed(Config()) and not offload_allowed(Config(udp_offload=False))
    monkeypatch.setenv("ROAMLINK_UDP_OFFLOAD", "off")

    async def main() -> None:
        server_ep, client_ep = await _transfer(Config(), Config(), 256 * 1024)
        assert not (server_ep.gso or server_ep.gro or client_ep.gso or client_ep.gro)

    run(main(), 60)


@needs_offload
def test_gso_sender_to_receiver_without_gro() -> None:
    """The kernel splits GSO batches for a socket that did not ask for GRO: data intact."""
    async def main() -> None:
        server_ep, client_ep = await _transfer(Config(udp_offload=False), Config(),
                                               1024 * 1024)
        assert client_ep.gso and not server_ep.gro
        assert client_ep.io.gso_batches > 0
        assert server_ep.io.gro_batches == 0
        assert server_ep.io.datagrams_in == server_ep.io.recv_calls

    run(main(), 60)


def test_uvloop_echo() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        server_ep, client_ep = await _transfer(Config(), Config(), 512 * 1024)
        assert server_ep.io.datagrams_in > 0 and client_ep.io.datagrams_in > 0

    async def bounded() -> None:
        await asyncio.wait_for(main(), 60)

    uvloop.run(bounded())


# ---------------------------------------------------------------------- fake-socket checks
class FakeSocket:
    """Records send calls; optionally fails some. Borrows a real descriptor for the loop."""

    def __init__(self, fail: list[BaseException | None] | None = None) -> None:
        self.real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.calls: list[tuple[str, list[bytes], int, Address]] = []
        self.fail = list(fail or [])
        self.incoming: list[tuple[bytes, list[Any], Address]] = []

    def fileno(self) -> int:
        return self.real.fileno()

    def _maybe_fail(self) -> None:
        if self.fail:
            exc = self.fail.pop(0)
            if exc is not None:
                raise exc

    def sendmsg(self, buffers: list[bytes], ancdata: list[tuple[int, int, bytes]], flags: int,
                addr: Address) -> int:
        self._maybe_fail()
        ((level, kind, value),) = ancdata
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        segment = int.from_bytes(value, sys.byteorder)
        self.calls.append(("gso", list(buffers), segment, addr))
        return sum(len(b) for b in buffers)

    def sendto(self, data: bytes, addr: Address) -> int:
        self._maybe_fail()
        self.calls.append(("one", [data], len(data), addr))
        return len(data)

    def recvmsg(self, size: int, ancsize: int) -> tuple[bytes, list[Any], int, Address]:
        if not self.incoming:
            raise BlockingIOError
        data, anc, addr = self.incoming.pop(0)
        return data, anc, 0, addr

    def close(self) -> None:
        self.real.close()


def _fake_udp(sock: FakeSocket, *, gso: bool = True, gro: bool = False) -> UdpSocket:
    udp = UdpSocket(asyncio.get_running_loop(), lambda: None, lambda data, addr: None)
    udp.sock = sock  # type: ignore[assignment]
    udp.gso, udp.gro = gso, gro
    return udp


A: Address = ("127.0.0.1", 1111)
B: Address = ("127.0.0.1", 2222)


def test_runs_of_same_size_to_one_address_go_out_in_one_call() -> None:
    async def main() -> None:
        sock = FakeSocket()
        ep = _fake_udp(sock)
        big, small = b"x" * 1200, b"y" * 700
        ep.send([(big, A), (big, A), (small, A),  # a run may end with a shorter one
                      (big, A), (big, B), (big, B),  # a new address starts a new run
                      (small, B), (big, B)])  # ...and so does a longer datagram after it
        kinds = [(c[0], len(c[1]), c[2], c[3]) for c in sock.calls]
        assert kinds == [("gso", 3, 1200, A), ("one", 1, 1200, A), ("gso", 3, 1200, B),
                         ("one", 1, 1200, B)]
        assert ep.io.datagrams_out == 8 and ep.io.send_calls == 4 and ep.io.gso_batches == 2
        sock.close()

    run(main(), 10)


def test_runs_respect_kernel_limits() -> None:
    async def main() -> None:
        sock = FakeSocket()
        ep = _fake_udp(sock)
        ep.send([(b"a" * 100, A)] * 150)  # at most 64 segments per call
        assert [len(c[1]) for c in sock.calls] == [64, 64, 22]
        sock.calls.clear()
        ep.send([(b"b" * 1500, A)] * 100)  # at most 64 KiB per call
        sizes = [len(c[1]) for c in sock.calls]
        assert sum(sizes) == 100 and max(sizes) * 1500 <= 65507
        sock.close()

    run(main(), 10)


def test_gso_refused_by_the_kernel_falls_back_without_loss() -> None:
    async def main() -> None:
        sock = FakeSocket(fail=[OSError(errno.EIO, "no checksum offload")])
        ep = _fake_udp(sock)
        data = [(bytes([i]) * 1200, A) for i in range(5)]
        ep.send(data)
        assert not ep.gso
        assert [c[0] for c in sock.calls] == ["one"] * 5
        assert [c[1][0] for c in sock.calls] == [d for d, _ in data]
        sock.close()

    run(main(), 10)


def test_full_send_buffer_queues_until_writable() -> None:
    async def main() -> None:
        sock = FakeSocket(fail=[None, BlockingIOError()])
        ep = _fake_udp(sock, gso=False)
        data = [(bytes([i]) * 100, A) for i in range(4)]
        ep.send(data)
        assert len(sock.calls) == 1 and ep.io.send_would_block == 1
        ep.send([(b"late", A)])  # keeps the order behind the queued ones
        assert len(sock.calls) == 1
        assert ep.backlog == 4  # three waiting, and the late one behind them
        ep.on_writable()
        assert [c[1][0] for c in sock.calls] == [d for d, _ in data] + [b"late"]
        assert ep.backlog == 0
        sock.close()

    run(main(), 10)


def test_a_single_datagram_send_queues_and_counts_like_a_batch() -> None:
    async def main() -> None:
        # the one-datagram path (a request or a reply) skips the run search: it must still
        # count, queue behind a full send buffer and keep order
        sock = FakeSocket(fail=[None, BlockingIOError(), OSError(errno.ENETUNREACH, "gone")])
        ep = _fake_udp(sock)
        ep.send([(b"one", A)])
        assert sock.calls == [("one", [b"one"], 3, A)]
        assert ep.io.send_calls == 1 and ep.io.datagrams_out == 1
        ep.send([(b"two", B)])  # the kernel's buffer is full: kept for later
        assert ep.io.send_would_block == 1 and ep.backlog == 1
        ep.send([(b"three", A)])  # behind it, not before it
        assert ep.backlog == 2 and len(sock.calls) == 1
        ep.on_writable()  # the first one fails (a vanished route): counted, not raised
        assert [c[1][0] for c in sock.calls] == [b"one", b"three"] and ep.errors == 1
        assert ep.backlog == 0
        sock.close()

    run(main(), 10)


def test_gro_buffer_is_split_into_its_datagrams() -> None:
    async def main() -> None:
        sock = FakeSocket()
        ep = _fake_udp(sock, gro=True)
        # five datagrams coalesced with a segment size of 100 (the last one shorter)
        datagrams = [bytes([0x40]) + bytes([i]) * 99 for i in range(4)] + [b"\x40" + b"z" * 40]
        gro = (SOL_UDP, UDP_GRO, (100).to_bytes(4, sys.byteorder))
        sock.incoming.append((b"".join(datagrams), [gro], A))
        sock.incoming.append((b"\x40" + b"q" * 60, [], B))  # an ordinary datagram after it
        got = ep.receive_batch()
        assert got == [(d, A) for d in datagrams] + [(b"\x40" + b"q" * 60, B)]
        assert ep.io.recv_calls == 2 and ep.io.gro_batches == 1 and ep.io.datagrams_in == 6
        sock.close()

    run(main(), 10)


def test_reads_per_wakeup_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp_mod, "MAX_READS_PER_WAKEUP", 3)

    async def main() -> None:
        sock = FakeSocket()
        ep = _fake_udp(sock, gro=True)
        for _ in range(5):
            sock.incoming.append((b"\x40" + bytes(30), [], A))
        assert len(ep.receive_batch()) == 3
        assert ep.io.recv_calls == 3 and len(sock.incoming) == 2
        sock.close()

    run(main(), 10)


class CountingSocket:
    """A real socket whose receive calls are counted (and whose failures are seen)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.reads = 0
        self.would_block = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def recvmsg(self, size: int, ancsize: int) -> tuple[bytes, list[Any], int, Any]:
        self.reads += 1
        try:
            return self.real.recvmsg(size, ancsize)
        except BlockingIOError:
            self.would_block += 1
            raise

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        self.reads += 1
        try:
            return self.real.recvfrom(size)
        except BlockingIOError:
            self.would_block += 1
            raise


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIONREAD on Linux")
def test_a_wakeup_reads_what_waits_without_a_failing_read() -> None:
    """The kernel is asked whether another datagram waits (FIONREAD) instead of reading
    until EAGAIN: one message per wake-up costs one receive call, not two."""
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        udp = UdpSocket(asyncio.get_running_loop(), lambda: None, lambda data, addr: None)
        await udp.start(sock, offload=True)
        counting = CountingSocket(sock)
        udp.sock = counting  # type: ignore[assignment]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for size in (30, 1200, 5):
                sender.sendto(b"\x40" * size, sock.getsockname())
            await asyncio.sleep(0.05)  # (loopback delivers at once; be generous)
            got = udp.receive_batch()
            assert [len(d) for d, _ in got] == [30, 1200, 5]
            assert counting.reads == 3 and counting.would_block == 0
            sender.sendto(b"\x40", sock.getsockname())
            await asyncio.sleep(0.05)
            assert [d for d, _ in udp.receive_batch()] == [b"\x40"]
            assert counting.reads == 4 and counting.would_block == 0
        finally:
            udp.sock = sock
            udp.close()
            sender.close()

    run(main(), 10)


def test_write_on_an_idle_connection_leaves_at_once_later_ones_coalesce() -> None:
    async def main() -> None:
        clock = VirtualClock()
        listener, stream, server = await virtual_pair(clock, Config())
        async with listener:
            ep = stream._endpoint.udp  # noqa: SLF001 - the test inspects the socket layer
            await clock.sleep(0.5)  # the handshake's packets are acknowledged meanwhile
            assert stream.stats().bytes_in_flight == 0
            before = ep.io.datagrams_out
            stream.write(b"ping")  # nothing in flight: sent before the loop runs again
            assert ep.io.datagrams_out == before + 1
            stream.write(b"a")  # in flight now: these wait for the end of the tick...
            stream.write(b"b")
            assert ep.io.datagrams_out == before + 1
            # ...and arrive all the same
            assert await clock.run(server.readexactly(6), timeout=5) == b"pingab"
            assert ep.io.datagrams_out <= before + 3
            stream.close()
            server.close()
            await clock.run(stream.wait_closed(), timeout=30)

    run(main(), 30)


def test_the_socket_layer_names_the_driver_s_protocols_and_the_simulator_does_not() -> None:
    """Compiled, the driver's call through a protocol-typed value is native only when the
    object's class names the protocol as a base (``Endpoint``, ``Stream``: ten calls per
    round trip); the simulator's hosts and a structural observer (the test below) take the
    generic call through the same driver code, so the simulator tests keep covering it."""
    assert DriverSocket in Endpoint.__mro__ and ConnectionObserver in Stream.__mro__
    assert DriverSocket not in SimNode.__mro__


def test_an_idle_connection_s_write_is_on_the_wire_before_its_observer_runs() -> None:
    async def main() -> None:
        # the peer waits for this datagram: the timer re-arm and the observer (the Stream's
        # wake-ups) run after it left, not before (they overlap with its flight)
        clock = VirtualClock()
        listener, stream, server = await virtual_pair(clock, Config())
        async with listener:
            endpoint = stream._endpoint  # noqa: SLF001 - the test inspects the socket layer
            conn = stream._conn  # noqa: SLF001
            await clock.sleep(0.5)
            assert stream.stats().bytes_in_flight == 0
            seen: list[int] = []

            class Recorder:
                def on_activity(self) -> None:
                    seen.append(endpoint.udp.io.datagrams_out)
                    stream.on_activity()

            endpoint.driver.observers[conn] = Recorder()
            before = endpoint.udp.io.datagrams_out
            stream.write(b"ping")
            assert seen == [before + 1]
            endpoint.driver.observers[conn] = stream
            assert await clock.run(server.readexactly(4), timeout=5) == b"ping"
            stream.close()
            server.close()
            await clock.run(stream.wait_closed(), timeout=30)

    run(main(), 30)


class _Due:
    """A stand-in connection: only a deadline."""

    def __init__(self, name: str, at: float | None) -> None:
        self.name, self.at = name, at

    def get_timer(self) -> float | None:
        return self.at


def test_timers_closer_than_a_millisecond_wait_a_millisecond() -> None:
    """No loop sleeps less; uvloop would fire at once and spin (e.g. on pacing deadlines)."""
    clock = VirtualClock(100.0)
    timers: TimerHeap[_Due] = TimerHeap(clock, lambda key, now: None)
    soon, later = _Due("soon", 100.0001), _Due("later", 100.5)
    timers.arm(later)
    timers.arm(soon)
    assert timers.deadlines == {soon: soon.at, later: later.at}  # remembered as asked...
    assert clock.next_deadline() == 100.001  # ...but the one timer waits 1 ms


def test_endpoint_clock_is_monotonic_with_sub_millisecond_resolution() -> None:
    import time

    async def main() -> None:
        ep = Endpoint(Config())
        assert ep.now is time.monotonic and LoopScheduler.now is time.monotonic
        samples = {ep.now() for _ in range(1000)}
        assert len(samples) > 10  # not a per-iteration, millisecond-rounded cache

    run(main(), 10)


def test_one_timer_serves_every_connection_in_deadline_order() -> None:
    clock = VirtualClock()
    fired: list[tuple[str, float]] = []
    timers: TimerHeap[_Due] = TimerHeap(clock, lambda key, now: fired.append((key.name, now)))
    a, b, c, gone = _Due("a", 0.03), _Due("b", 0.01), _Due("c", 0.05), _Due("gone", 0.02)
    for key in (a, b, c, gone):
        timers.arm(key)
    c.at = 0.002  # moved earlier: re-armed
    timers.arm(c)
    a.at = 0.5  # moved later: the earlier deadline stays armed (fires early)
    timers.arm(a)
    gone.at = None  # nothing due any more: never fires
    timers.arm(gone)
    clock.advance(0.08)
    assert fired == [("c", 0.002), ("b", 0.01), ("a", 0.03)]
    assert not timers.deadlines and not timers.armed
    # re-arming over and over leaves a bounded heap (stale entries are dropped)
    keys = [_Due(str(i), 10.0) for i in range(10)]
    for _ in range(200):
        for key in keys:
            assert key.at is not None
            key.at -= 0.001
            timers.arm(key)
        assert len(timers) <= 4 * len(keys) + 65
    timers.close()
    assert not timers.armed and clock.next_deadline() is None


def test_a_failing_timer_callback_neither_stalls_nor_drops_the_others() -> None:
    clock = VirtualClock()
    fired: list[str] = []

    def on_due(key: _Due, now: float) -> None:
        fired.append(key.name)
        if key.name == "bad":
            raise RuntimeError("observer failed")

    timers: TimerHeap[_Due] = TimerHeap(clock, on_due)
    for key in (_Due("bad", 0.01), _Due("good", 0.01), _Due("later", 0.02)):
        timers.arm(key)
    clock.advance(1.0)
    assert fired == ["bad", "good", "later"]


def test_loop_without_add_reader_falls_back_to_a_datagram_transport() -> None:
    """E.g. Windows' proactor loop: the endpoint runs on a DatagramProtocol instead."""
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def no_readiness(*args: Any) -> None:
            raise NotImplementedError

        loop.add_reader = no_readiness  # type: ignore[method-assign]
        server_ep, client_ep = await _transfer(Config(), Config(), 256 * 1024)
        for ep in (server_ep, client_ep):
            assert ep.transport is not None and not ep.gso and not ep.gro
            assert ep.io.datagrams_in > 0 and ep.io.datagrams_out > 0

    run(main(), 60)
