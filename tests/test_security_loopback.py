"""The security API on real sockets (127.0.0.1): keys, pinning, authorisation, plaintext
refusal, and a server process restarted mid-transfer (stateless reset)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import roamlink
from roamlink import Config, HandshakeFailed, KeyPair

from .conftest import run

SRC = str(Path(__file__).resolve().parent.parent / "src")


async def _echo_once(listener: roamlink.Listener) -> str | None:
    stream = await listener.accept()
    data = await stream.read(1000)
    stream.write(data.upper())
    await stream.drain()
    key = stream.peer_key
    stream.close()
    return key


def test_pinned_key_tofu_and_peer_keys() -> None:
    async def main() -> None:
        server_key, client_key = KeyPair.generate(), KeyPair.generate()
        async with await roamlink.listen("127.0.0.1", 0, key=server_key) as listener:
            assert listener.public_key == server_key.public
            port = listener.local_addr[1]
            task = asyncio.create_task(_echo_once(listener))
            stream = await roamlink.connect("127.0.0.1", port, server_key=server_key.public,
                                            client_key=client_key, early_data=b"hello")
            assert await stream.read(100) == b"HELLO"
            assert stream.peer_key == server_key.public
            assert await task == client_key.public
            stream.close()
            # without a pin: encrypted, and the key to pin is reported
            task = asyncio.create_task(_echo_once(listener))
            stream = await roamlink.connect("127.0.0.1", port)
            stream.write(b"x")
            assert await stream.read(10) == b"X"
            assert stream.peer_key == server_key.public and stream.stats().encrypted
            await task
            stream.close()
    run(main(), 30)


def test_wrong_key_unauthorised_and_plaintext_fail_fast() -> None:
    async def main() -> None:
        allowed = KeyPair.generate()
        async with await roamlink.listen("127.0.0.1", 0,
                                         authorized_clients=[allowed.public]) as listener:
            port = listener.local_addr[1]
            start = time.monotonic()
            with pytest.raises(HandshakeFailed) as info:
                await roamlink.connect("127.0.0.1", port,
                                       server_key=KeyPair.generate().public)
            assert info.value.reason == "server_key_mismatch"
            with pytest.raises(HandshakeFailed) as info:
                await roamlink.connect("127.0.0.1", port, server_key=listener.public_key)
            assert info.value.reason == "client_not_authorized"
            with pytest.raises(HandshakeFailed) as info:
                await roamlink.connect("127.0.0.1", port,
                                       config=Config(insecure_plaintext=True))
            assert info.value.reason == "plaintext_mismatch"
            assert time.monotonic() - start < 2.0  # answers, not timeouts
        plain = Config(insecure_plaintext=True)
        async with await roamlink.listen("127.0.0.1", 0, config=plain) as listener:
            assert listener.public_key is None
            with pytest.raises(HandshakeFailed) as info:
                await roamlink.connect("127.0.0.1", listener.local_addr[1])
            assert info.value.reason == "plaintext_mismatch"
    run(main(), 30)


_SERVER = """
import asyncio, sys
import roamlink
print("loaded", flush=True)
sys.stdin.readline()  # bind only when told: the restart itself then takes milliseconds
async def main():
    key = roamlink.KeyPair.load(sys.argv[1])
    async with await roamlink.listen("127.0.0.1", int(sys.argv[2]), key=key) as listener:
        print("ready", flush=True)
        async for stream in listener:
            async def sink(s):
                while await s.read(65536):
                    pass
            asyncio.get_running_loop().create_task(sink(stream))
asyncio.run(main())
"""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn_server(key_file: Path, port: int) -> subprocess.Popen[str]:
    """A server process with roamlink imported, waiting for a line on stdin to listen."""
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(key_file), str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "loaded"
    return proc


def _go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ready"


def test_server_restart_mid_transfer_resets_the_client_within_one_second(
        tmp_path: Path) -> None:
    key = KeyPair.generate()
    key_file = tmp_path / "server.key"
    key.save(key_file)
    port = _free_udp_port()
    first = _spawn_server(key_file, port)
    _go(first)
    second = _spawn_server(key_file, port)  # the restarted process, ready to bind
    try:
        async def main() -> float:
            stream = await roamlink.connect("127.0.0.1", port, server_key=key.public)
            chunk = os.urandom(64 * 1024)
            for _ in range(16):
                stream.write(chunk)
                await stream.drain()
            first.kill()
            first.wait()
            await asyncio.to_thread(_go, second)
            start = time.monotonic()
            with pytest.raises(roamlink.ConnectionReset):
                for _ in range(1000):
                    stream.write(chunk)
                    await stream.drain()
                    await asyncio.sleep(0.01)
            return time.monotonic() - start
        elapsed = run(main(), 30)
        assert elapsed < 1.0
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
