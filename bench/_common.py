"""Shared helpers for the benchmark scripts: child processes, timing, JSON output, certificates.

Every benchmark runs between two child processes (a server and a client) started by the
script's orchestrating process. A child speaks a tiny line protocol on stdout:
``PORT <n>`` once it listens, ``RESULT <json>`` when done; anything else is passed through.
Each child arms ``SIGALRM`` and ``PR_SET_PDEATHSIG`` so it can never outlive its timeout or
its parent; the orchestrator kills both children's process groups in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import hashlib
import json
import math
import os
import platform
import random
import resource
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

MiB = 1024 * 1024
CHUNK = 256 * 1024
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
SRC = os.path.join(ROOT, "src")
if SRC not in sys.path and os.environ.get("ROAMLINK_BENCH_INSTALLED", "") in ("", "0"):
    # run from a checkout without installing; ROAMLINK_BENCH_INSTALLED=1 measures the
    # installed package instead (e.g. the compiled build `pip install .` made)
    sys.path.insert(0, SRC)

# CLOCK_MONOTONIC is system-wide on Linux, so stamps taken in two processes compare directly.
now = time.monotonic


# ------------------------------------------------------------------ output
def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line (the only output format of the benchmark scripts)."""
    print(json.dumps(obj, sort_keys=False), flush=True)


def machine_info() -> dict[str, Any]:
    import roamlink

    return {"python": platform.python_version(), "roamlink_compiled": roamlink.compiled,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_1min": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rnd(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("no samples")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# ------------------------------------------------------------------ payload
def payload(size: int, seed: int = 7) -> bytes:
    """Deterministic incompressible bytes; sender and receiver derive the same stream."""
    rng = random.Random(seed)
    step = 16 * MiB  # randbytes() cannot make 256 MiB or more in one call
    return b"".join(rng.randbytes(min(step, size - off)) for off in range(0, size, step))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ certificates
def make_self_signed_cert(directory: str) -> tuple[str, str]:
    """Write a throw-away EC certificate for ``localhost`` (QUIC needs TLS); returns paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    t = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(t - datetime.timedelta(days=1))
            .not_valid_after(t + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


# ------------------------------------------------------------------ child side
def child_setup(timeout: float) -> None:
    """Make sure this child dies: on its own timeout, and when its parent dies."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, int(timeout + 0.999)))
    with contextlib.suppress(Exception):  # Linux only; best effort elsewhere
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    with contextlib.suppress(ValueError, OSError):  # many.py opens many sockets
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_loop(main: Coroutine[Any, Any, Any], use_uvloop: bool) -> Any:
    if use_uvloop:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def say_port(port: int) -> None:
    print(f"PORT {port}", flush=True)


def say_result(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def rss_kib() -> int:
    """This process's resident set size (VmRSS) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


async def stdin_lines() -> asyncio.StreamReader:
    """An asyncio reader over stdin (the orchestrator's command channel)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# ------------------------------------------------------------------ orchestrator side
class Child:
    """One child process, in its own process group, killed for sure on ``stop``."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.stderr_tail: list[str] = []

    @classmethod
    async def start(cls, script: str, args: Sequence[str], name: str) -> Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, script, *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            start_new_session=True, limit=1 << 24)
        child = cls(proc, name)
        asyncio.get_running_loop().create_task(child._drain_stderr())
        return child

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr_tail = (self.stderr_tail + [line.decode(errors="replace").rstrip()])[-8:]

    async def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next stdout line starting with ``prefix`` (other lines skipped)."""
        assert self.proc.stdout is not None

        async def find() -> str:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    await asyncio.sleep(0.05)  # let stderr catch up for the message
                    tail = " | ".join(self.stderr_tail[-3:])
                    raise RuntimeError(f"{self.name} exited before {prefix.strip()}: {tail}")
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith(prefix):
                    return line[len(prefix):]

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no {prefix.strip()} within {timeout:g} s") from None

    async def port(self, timeout: float = 30) -> int:
        return int(await self.expect("PORT ", timeout))

    async def result(self, timeout: float) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self.expect("RESULT ", timeout))
        return value

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())

    async def stop(self, grace: float = 5) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


async def run_pair(script: str, server_args: Sequence[str], client_args: Sequence[str],
                   timeout: float,
                   between: Callable[[Child, Child], Awaitable[None]] | None = None,
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a server child, then a client child told ``--port``; return both RESULTs.

    ``between`` (optional) runs after the client started and may talk to both children.
    Both children are gone when this returns or raises.
    """
    t = ["--timeout", str(timeout)]
    server = await Child.start(script, [*server_args, *t], "server")
    client: Child | None = None
    try:
        port = await server.port()
        client = await Child.start(script, [*client_args, *t, "--port", str(port)], "client")
        if between is not None:
            await asyncio.wait_for(between(server, client), timeout)
        client_result = await client.result(timeout)
        server_result = await server.result(timeout)
        return server_result, client_result
    finally:
        if client is not None:
            await client.stop(grace=2)
        await server.stop(grace=2)


# ------------------------------------------------------------------ uniform stream adapter
class ByteStream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...
    async def readexactly(self, n: int) -> bytes: ...
    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    async def drain(self) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class TcpStream:
    """asyncio's reader/writer pair behind the same methods as ``roamlink.Stream``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, n: int = -1) -> bytes:
        return await self.reader.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def write_eof(self) -> None:
        self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class DatagramStream(asyncio.DatagramProtocol):
    """A bare asyncio UDP socket behind the stream methods: no reliability, ordering,
    congestion or flow control, no encryption; one write is one datagram, an empty datagram
    is the end of the stream. On loopback nothing is lost, so it is the floor of any
    UDP-based transport on this event loop (``latency.py --only udp``)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: Any = None
        self.on_first: Callable[[DatagramStream], None] | None = None
        self.sock: socket.socket | None = None  # the connecting side's socket
        self._buf = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.peer is None:
            self.peer = addr
            if self.on_first is not None:
                self.on_first(self)
        if data:
            self._buf += data
        else:
            self._eof = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read(self, n: int = -1) -> bytes:
        if not self._buf and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        size = len(self._buf) if n < 0 else min(n, len(self._buf))
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(data), self.peer)


    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        # asyncio's transport drops an empty datagram, so it goes out on the socket itself
        assert self.sock is not None, "only the connecting side ends the stream"
        self.sock.sendto(b"", self.peer)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        return None


class SealedDatagramStream(DatagramStream):
    """:class:`DatagramStream` with roamlink's packet protection on every datagram: a 13-byte
    clear header (type, 8-byte CID, packet number) as associated data and the payload sealed
    by the same ``PacketProtection`` code a roamlink connection runs (ChaCha20-Poly1305). The
    floor of an *encrypted* UDP transport on this event loop and this ``cryptography`` build
    (``latency.py --only udp-sealed``); the keys are fixed, it is a benchmark, nothing more."""

    HEADER = struct.Struct("!B8sI")

    def __init__(self, *, server: bool) -> None:
        super().__init__()
        from roamlink.crypto.packet_protection import PacketProtection

        a, b = hashlib.sha256(b"udp-sealed a").digest(), hashlib.sha256(b"udp-sealed b").digest()
        self.protection = PacketProtection(b, a) if server else PacketProtection(a, b)
        self._next_pn = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data:  # (an empty datagram is the end of the stream, in the clear)
            if len(data) < self.HEADER.size:
                return
            pn = self.HEADER.unpack_from(data)[2]
            opened = self.protection.open(data, self.HEADER.size, pn, 0, 0.0)
            if opened is None or not opened:
                return
            data = opened
        super().datagram_received(data, addr)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.transport is not None
        pn, self._next_pn = self._next_pn, self._next_pn + 1
        header = self.HEADER.pack(0x40, b"\0" * 8, pn)
        self.transport.sendto(self.protection.seal(header, pn, bytes(data)), self.peer)


Handler = Callable[[ByteStream], Awaitable[None]]


async def stream_server(kind: str, handler: Handler) -> tuple[int, Callable[[], Awaitable[None]]]:
    """Listen on 127.0.0.1 with roamlink or TCP; run ``handler`` per connection.

    Returns the port and an async closer.
    """
    tasks: set[asyncio.Task[None]] = set()

    def spawn(stream: ByteStream) -> None:
        task = asyncio.get_running_loop().create_task(handler(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if kind == "roamlink" or kind.startswith("roamlink-"):
        import roamlink

        listener = await roamlink.listen("127.0.0.1", 0, config=roamlink_config(kind),
                                         key=bench_key())

        async def accept_loop() -> None:
            async for stream in listener:
                spawn(stream)

        acceptor = asyncio.get_running_loop().create_task(accept_loop())

        async def close_roamlink() -> None:
            acceptor.cancel()
            for task in list(tasks):
                task.cancel()
            listener.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), 5)

        return int(listener.local_addr[1]), close_roamlink
    if kind == "tcp":
        # A deep accept queue, so many.py's burst of handshakes is not met with SYN drops.
        server = await asyncio.start_server(lambda r, w: spawn(TcpStream(r, w)), "127.0.0.1", 0,
                                            backlog=4096)

        async def close_tcp() -> None:
            for task in list(tasks):
                task.cancel()
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

        return int(server.sockets[0].getsockname()[1]), close_tcp
    if kind in ("udp", "udp-sealed"):
        loop = asyncio.get_running_loop()
        factory: Callable[[], DatagramStream] = (
            DatagramStream if kind == "udp" else lambda: SealedDatagramStream(server=True))
        udp_transport, proto = await loop.create_datagram_endpoint(
            factory, local_addr=("127.0.0.1", 0))
        proto.on_first = spawn

        async def close_udp() -> None:
            for task in list(tasks):
                task.cancel()
            udp_transport.close()

        return int(udp_transport.get_extra_info("sockname")[1]), close_udp
    raise ValueError(f"unknown stream transport {kind!r}")


def bench_key() -> Any:
    """The benchmark server's static key, which the clients pin, as deployments do (a fixed,
    public, benchmark-only key: both child processes derive it). Unpinned, every connect
    would first ask for the key, and a listener answers such requests at most 100 times a
    second (its budget for stateless answers): ``many.py``'s 1,000 connections took 15 s."""
    import roamlink

    return roamlink.KeyPair.from_private_bytes(hashlib.sha256(b"roamlink bench key").digest())


def roamlink_config(kind: str) -> Any:
    """``roamlink`` uses the defaults (encrypted); ``roamlink-plain`` runs
    ``insecure_plaintext`` on both ends (what encryption costs, in the same run);
    ``roamlink-<controller>`` (e.g. ``roamlink-newreno``) selects a congestion controller, so
    controllers can be compared in one run."""
    import roamlink

    if kind == "roamlink-plain":
        return roamlink.Config(insecure_plaintext=True)
    if kind.startswith("roamlink-"):
        return roamlink.Config(congestion_control=kind.split("-", 1)[1])
    return roamlink.Config()


async def stream_connect(kind: str, port: int) -> ByteStream:
    if kind == "roamlink" or kind.startswith("roamlink-"):
        import roamlink

        return await roamlink.connect("127.0.0.1", port, config=roamlink_config(kind),
                                      server_key=bench_key())
    if kind == "tcp":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return TcpStream(reader, writer)
    if kind in ("udp", "udp-sealed"):
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        factory: Callable[[], DatagramStream] = (
            DatagramStream if kind == "udp" else lambda: SealedDatagramStream(server=False))
        _, stream = await loop.create_datagram_endpoint(factory, sock=sock)
        stream.peer, stream.sock = ("127.0.0.1", port), sock
        return stream
    raise ValueError(f"unknown stream transport {kind!r}")


def add_common_args(parser: Any, *, timeout: float) -> None:
    parser.add_argument("--uvloop", action="store_true", help="run both processes on uvloop")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help="seconds any one process may live")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    parser.add_argument("--role", help=argparse_suppress())
    parser.add_argument("--port", type=int, help=argparse_suppress())


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS
