"""Real clients and servers nobody here wrote, carried by roamlink across real NAT rebindings
in network namespaces: OpenSSH with ``roamlink connect`` as its ProxyCommand, and curl through
``roamlink forward`` to ``python -m http.server`` (50 parallel curls on loopback:
tests/test_forward_cli.py).

Root only (namespaces); as root on Debian the tests install curl and OpenSSH themselves.
Sizes are kept small for CI; ``ROAMLINK_FORWARD_FULL=1`` runs the
sizes of issue 14 (a 64 MiB file over ssh, 100 MiB over curl).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.real_clients import (
    SSHD,
    random_file,
    require_programs,
    ssh_options,
    sshd_config,
)

from .test_cli import ROOT, _env, _read_line, json_lines

pytestmark = pytest.mark.timeout(300)

PY = sys.executable
FULL = os.environ.get("ROAMLINK_FORWARD_FULL") == "1"
MiB = 1024 * 1024
ENV = _env()


class PacedReader(threading.Thread):
    """Reads a pipe to its end at no more than ``rate`` bytes/s, hashing as it goes; the
    pacing stretches the transfer so that several NAT rebindings land in the middle of it."""

    def __init__(self, pipe: IO[bytes], rate: float) -> None:
        super().__init__(daemon=True)
        self.fd = pipe.fileno()
        self.rate = rate
        self.count = 0
        self.digest = hashlib.sha256()

    def run(self) -> None:
        start = time.monotonic()
        while chunk := os.read(self.fd, 256 * 1024):
            self.digest.update(chunk)
            self.count += len(chunk)
            ahead = self.count / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def wait_for(self, n: int, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            assert proc.poll() is None or self.is_alive(), \
                f"client ended after {self.count} bytes"
            assert time.monotonic() < deadline, f"stalled at {self.count} bytes"
            time.sleep(0.01)


def _wait_for_text(pipe: IO[bytes], proc: subprocess.Popen[Any], text: bytes,
                   timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        line = _read_line(pipe, proc, max(0.1, deadline - time.monotonic()))
        if text in line:
            return


class Server:
    """``roamlink --json serve HOST:4433 --forward 127.0.0.1:PORT`` in the server namespace,
    its reports collected as they come."""

    def __init__(self, topo: Any, target_port: int) -> None:
        self.proc: subprocess.Popen[bytes] = topo.popen(
            topo.server_ns, [PY, "-m", "roamlink", "--json", "serve", f"{topo.server_ip}:4433",
                             "--forward", f"127.0.0.1:{target_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
        assert self.proc.stdout is not None
        assert json.loads(_read_line(self.proc.stdout, self.proc, 20.0))["event"] == "listening"
        self.events: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def moves(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "path_changed"]

    def wait_moves(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.moves()) < n:
            assert time.monotonic() < deadline, f"server saw {self.moves()}, wanted {n} moves"
            time.sleep(0.01)


def _transfer_across_rebindings(topo: Any, server: Server, client: subprocess.Popen[bytes],
                                size: int, seconds: float, rebinds: int = 3) -> PacedReader:
    """Read the client's output (paced), and rebind the NAT ``rebinds`` times while the
    server is still sending; each time, wait until the server has followed the client to
    its new address before going on."""
    assert client.stdout is not None
    reader = PacedReader(client.stdout, size / seconds)
    reader.start()
    # rebind within the first half of what the reader sees: up to ~10 MiB more is already
    # on its way in buffers (TCP, roamlink windows), and the server must still be sending
    for k in range(1, rebinds + 1):
        reader.wait_for(k * size // (2 * rebinds + 2), client)
        topo.rebind()  # the NAT forgets the client: its next packet leaves from a new port
        server.wait_moves(k)
    client.wait(timeout=120)
    reader.join(timeout=30)
    return reader


# ----------------------------------------------------------------------------- netns (root)
def test_ssh_with_proxycommand_survives_three_nat_rebindings(nat_topology: Any,
                                                            tmp_path: Path) -> None:
    """``ssh -o ProxyCommand='roamlink connect %h:4433' host cat FILE`` against ``serve
    --forward 127.0.0.1:22`` behind a NAT that rebinds the client three times mid-file."""
    topo = nat_topology
    size = (64 if FULL else 16) * MiB
    config, key = sshd_config(tmp_path)
    expected = random_file(tmp_path / "file.bin", size)
    sshd = topo.popen(topo.server_ns, [SSHD, "-D", "-e", "-f", str(config)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_text(sshd.stderr, sshd, b"Server listening")
    server = Server(topo, 22)
    proxy = f"{PY} -m roamlink connect -q %h:4433"
    ssh = topo.popen(topo.client_ns,
                     ["ssh", *ssh_options(key), "-o", f"ProxyCommand={proxy}",
                      f"root@{topo.server_ip}", f"cat {tmp_path / 'file.bin'}"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     env=ENV, cwd=ROOT)
    reader = _transfer_across_rebindings(topo, server, ssh, size,
                                         seconds=8.0 if FULL else 3.0)
    assert ssh.stderr is not None
    err = ssh.stderr.read()
    assert ssh.returncode == 0, err.decode()
    assert err == b""  # ssh never noticed; the proxy printed nothing
    assert reader.count == size and reader.digest.hexdigest() == expected
    moves = server.moves()
    assert len(moves) == 3 and len({m["new"] for m in moves}) == 3, moves


def test_curl_through_forward_survives_three_nat_rebindings(nat_topology: Any,
                                                            tmp_path: Path) -> None:
    require_programs("curl")
    topo = nat_topology
    size = (100 if FULL else 24) * MiB
    expected = random_file(tmp_path / "file.bin", size)
    http = topo.popen(topo.server_ns, [PY, "-u", "-m", "http.server", "8000", "--bind",
                                       "127.0.0.1", "--directory", str(tmp_path)],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _wait_for_text(http.stdout, http, b"Serving HTTP")
    server = Server(topo, 8000)
    forward = topo.popen(topo.client_ns, [PY, "-m", "roamlink", "--json", "forward", "18080",
                                          f"{topo.server_ip}:4433", "--once"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    assert json.loads(_read_line(forward.stdout, forward, 20.0))["event"] == "listening"
    curl = topo.popen(topo.client_ns, ["curl", "-sS", "--fail", "-o", "-",
                                       "http://127.0.0.1:18080/file.bin"],
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = _transfer_across_rebindings(topo, server, curl, size,
                                         seconds=8.0 if FULL else 3.0)
    assert curl.stderr is not None
    assert curl.returncode == 0, curl.stderr.read().decode()
    assert reader.count == size and reader.digest.hexdigest() == expected
    out, err = forward.communicate(timeout=30)
    assert forward.returncode == 0, err.decode()
    closed = json_lines(out)[-1]
    assert closed["event"] == "closed" and closed["outcome"] == "closed"
    assert closed["bytes_received"] > size
    assert len(server.moves()) == 3, server.moves()
