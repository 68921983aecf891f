"""``run_server`` with several worker processes, over real loopback sockets.

The server runs in its own process (``tests/workers_server.py``): forking the test runner
itself would copy its threads and state. Each stream starts with a hello line naming the
worker; at the end the server reports the SHA-256 of what it received and that worker's
hand-over counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import roamlink
from tests.support.paths import PACKAGE_PARENT

from .conftest import run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="SO_REUSEPORT worker groups are Linux-only")

SERVER = Path(__file__).with_name("workers_server.py")


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, kernel_steering: bool) -> None:
        self.proc = proc
        self.port = port
        self.kernel_steering = kernel_steering


@contextlib.contextmanager
def serve(workers: int, *args: str, stop: int = signal.SIGINT) -> Iterator[Server]:
    env = dict(os.environ)
    src = PACKAGE_PARENT
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, str(SERVER), str(workers), *args], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "server did not start"
        info = json.loads(proc.stdout.readline())
        yield Server(proc, info["port"], info["kernel_steering"])
        proc.send_signal(stop)
        assert proc.wait(timeout=15) == 0  # every worker stopped cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def read_json(stream: roamlink.Stream) -> dict[str, Any]:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.read(1)
        if not chunk:
            raise AssertionError(f"stream ended inside a line: {line!r}")
        line += chunk
    result: dict[str, Any] = json.loads(line)
    return result


async def _migrate(stream: roamlink.Stream) -> tuple[Any, ...]:
    """Move to a fresh local port. Moves follow each other as fast as paths validate, so the
    peer's replacement connection ID may still be on its way: then wait for it (the error
    says "yet"), as an application that moves this often would."""
    for _ in range(100):
        try:
            local, _ = await stream.migrate(local_addr=0)
            return tuple(local)
        except roamlink.MigrationError as exc:
            if "yet" not in str(exc):
                raise
            await asyncio.sleep(0.01)
    raise AssertionError("no spare connection ID within a second")


async def moving_transfer(port: int, moves: int, size: int) -> tuple[dict[str, Any],
                                                                      dict[str, Any], bytes]:
    """Send ``size`` bytes, moving to a fresh local port ``moves`` times on the way."""
    stream = await roamlink.connect("127.0.0.1", port)
    hello = await read_json(stream)
    payload = os.urandom(size)
    step = size // (moves + 1)
    port = stream.local_addr[1]
    for i in range(moves + 1):
        stream.write(payload[i * step:(i + 1) * step if i < moves else size])
        await stream.drain()
        if i < moves:
            local = await _migrate(stream)
            # every move a new local port (a new 4-tuple); the kernel may hand out a port
            # again once its socket closed, so only the step itself is checked
            assert local[1] != port
            port = local[1]
    stream.write_eof()
    result = await read_json(stream)
    await stream.wait_closed()
    return hello, result, hashlib.sha256(payload).digest()


@pytest.mark.parametrize("steering", ["kernel", "hand-over"])
def test_client_moving_to_20_ports_stays_on_its_worker(steering: str) -> None:
    args = () if steering == "kernel" else ("--no-kernel-steering",)
    with serve(4, *args) as server:
        assert server.kernel_steering == (steering == "kernel")
        hello, result, digest = run(moving_transfer(server.port, 20, 4 << 20), 90)
    assert result["sha256"] == digest.hex() and result["bytes"] == 4 << 20  # hash-exact
    assert result["worker"] == hello["worker"] and result["pid"] == hello["pid"]
    # the server followed the moves. Not necessarily every one: the client moves again as soon
    # as its own validation of the new path succeeds, and on a loaded machine that can be
    # before the server's challenge on that path was answered (the client closes the old
    # socket), so the server goes straight to the next path; and a hand-over can deliver an
    # old path's late packet after a newer one, which may count as one more move
    assert result["path_changes"] >= 10
    if steering == "kernel":  # the kernel delivered every packet to the right socket
        assert result["stats"]["handed_in"] == 0
    else:  # other workers read packets of the moved paths and passed them on
        assert result["stats"]["handed_in"] > 0


async def _hello(port: int) -> tuple[roamlink.Stream, dict[str, Any]]:
    stream = await roamlink.connect("127.0.0.1", port)
    return stream, await read_json(stream)


async def _finish(stream: roamlink.Stream, payload: bytes) -> dict[str, Any]:
    stream.write(payload)
    stream.write_eof()
    result = await read_json(stream)
    await stream.wait_closed()
    return result


def test_killed_worker_is_restarted_and_other_connections_survive() -> None:
    async def main(port: int) -> None:
        by_worker: dict[int, tuple[roamlink.Stream, dict[str, Any]]] = {}
        spare = []
        while len(by_worker) < 2:  # handshakes are hashed: open until both workers have one
            stream, hello = await _hello(port)
            if hello["worker"] in by_worker:
                spare.append(stream)
            else:
                by_worker[hello["worker"]] = (stream, hello)
            assert len(spare) < 40
        for stream in spare:
            stream.abort()
        (victim, v_hello), (survivor, s_hello) = by_worker[0], by_worker[1]
        payload = os.urandom(8 << 20)
        half = len(payload) // 2
        survivor.write(payload[:half])
        victim.write(os.urandom(1 << 20))
        await asyncio.sleep(0.05)
        os.kill(v_hello["pid"], signal.SIGKILL)  # mid-transfer
        result = await _finish(survivor, payload[half:])
        assert result["sha256"] == hashlib.sha256(payload).hexdigest()
        assert result["pid"] == s_hello["pid"]
        victim.abort()
        # the slot is served again, by a new process
        deadline = time.monotonic() + 15
        while True:
            stream, hello = await _hello(port)
            if hello["worker"] == 0:
                break
            stream.abort()
            assert time.monotonic() < deadline
        assert hello["pid"] != v_hello["pid"]
        data = os.urandom(100_000)
        result = await _finish(stream, data)
        assert result["sha256"] == hashlib.sha256(data).hexdigest()

    with serve(2, stop=signal.SIGTERM) as server:
        run(main(server.port), 90)


def test_connections_spread_over_workers() -> None:
    """A smaller real check of the spread (the 1,000-handshake one is in test_steering)."""
    async def main(port: int) -> list[int]:
        opened = await asyncio.gather(*(_hello(port) for _ in range(64)))
        for stream, _ in opened:
            stream.abort()
        return [hello["worker"] for _, hello in opened]

    with serve(4) as server:
        workers = run(main(server.port), 60)
    assert set(workers) == {0, 1, 2, 3}


@pytest.mark.parametrize("command", [["serve", "--echo"], ["perf", "server"]])
def test_cli_workers_json_events_name_the_worker(command: list[str]) -> None:
    env = dict(os.environ)
    src = PACKAGE_PARENT
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "roamlink", "--json", *command, "127.0.0.1:0",
            "--workers", "2"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()],
                     daemon=True).start()
    try:
        listening = json.loads(lines.get(timeout=20))
        assert listening["event"] == "listening" and listening["workers"] == 2
        assert listening["kernel_steering"] is True

        async def client() -> None:
            stream = await roamlink.connect("127.0.0.1", listening["port"])
            stream.write(b"RLPERF1\n" + bytes(10_000))
            stream.write_eof()
            await stream.read()
            await stream.wait_closed()

        run(client(), 30)
        events: list[dict[str, Any]] = []
        while not any(e["event"] in ("closed", "summary") for e in events):
            events.append(json.loads(lines.get(timeout=10)))
        connection = next(e for e in events if e["event"] == "connection")
        assert connection["worker"] in (0, 1)
        assert all(e["worker"] == connection["worker"] for e in events)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
