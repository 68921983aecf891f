"""``roamlink forward``, ``serve --forward`` and ``connect`` as a ProxyCommand, as subprocesses
on loopback, with 50 parallel curl downloads (across real NAT rebindings, with ssh too:
tests/test_forward_netns.py)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from roamlink.cli.main import main
from tests.support.real_clients import random_file, require_programs

from .test_cli import ROOT, _env, _read_line, json_lines, roamlink, server

pytestmark = pytest.mark.timeout(90)


@contextmanager
def http_server(directory: Path) -> Iterator[int]:
    """``python -m http.server``'s handler, in a thread, on a free loopback port."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def forwarder(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``roamlink --json forward 0 ...``: yields the process and its TCP port."""
    proc = subprocess.Popen([sys.executable, "-m", "roamlink", "--json", "forward", "0", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=_env())
    try:
        assert proc.stdout is not None
        first = json.loads(_read_line(proc.stdout, proc, 20.0))
        assert first["event"] == "listening" and first["idle_timeout"] == 600
        yield proc, first["port"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_http_through_forward_and_serve_forward(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "file.bin").write_bytes(body)
    with http_server(tmp_path) as http_port, \
            server("serve", "0", "--forward", f"127.0.0.1:{http_port}") as srv, \
            forwarder(srv.addr, "--once") as (fwd, port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/file.bin", timeout=30) as resp:
            got = resp.read()
        out, err = fwd.communicate(timeout=30)
        assert fwd.returncode == 0, err.decode()
        code, srv_out, _ = srv.stop()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    # (a first contact with this server also reports the key it learnt: trust on first use)
    events = [e for e in json_lines(out) if e["event"] != "server_key_learned"]
    assert [e["event"] for e in events] == ["opened", "closed"]
    closed = events[1]
    assert closed["outcome"] == "closed" and closed["bytes_received"] > len(body)
    assert 0 < closed["bytes_sent"] < 1000  # the request
    served = [e for e in json_lines(srv_out) if e["event"] == "closed"]
    assert served and served[0]["bytes_out"] == closed["bytes_received"]
    assert srv.first["mode"] == "forwarding" and srv.first["idle_timeout"] == 600


def test_refused_target_is_reported_by_forward_and_connect() -> None:
    with server("serve", "0", "--forward", f"127.0.0.1:{_closed_port()}") as srv:
        with forwarder(srv.addr, "--once") as (fwd, port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"hello")
                with pytest.raises(ConnectionResetError):  # reset, not an empty answer
                    while sock.recv(100):
                        pass
            out, _ = fwd.communicate(timeout=20)
        assert fwd.returncode == 3
        closed = json_lines(out)[-1]
        assert closed["event"] == "closed" and closed["outcome"] == "stream_reset"
        assert closed["code"] == 0x101 and "connection refused" in closed["reason"]
        res = roamlink("connect", srv.addr, stdin=b"x")
        _, srv_out, _ = srv.stop()
    assert res.returncode == 3 and res.stdout == b""
    assert res.stderr.decode().strip().endswith(
        "error: the server could not reach its forward target "
        "(code 0x101: forward target: connection refused)")
    assert any(e["event"] == "target_unreachable" for e in json_lines(srv_out))


def test_connect_ends_in_order_on_sighup_and_handles_a_broken_pipe() -> None:
    """What ssh does to its ProxyCommand: SIGHUP when it exits; or it closes our stdout."""
    with server("serve", "0", "--echo") as srv:
        proc = subprocess.Popen([sys.executable, "-m", "roamlink", "--json", "connect",
                                 srv.addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT, env=_env())
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ping\n"
        start = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - start < 5.0
        assert proc.returncode == 128 + signal.SIGHUP, err.decode()
        assert out == b"" and b"Traceback" not in err
        # a reader that goes away: exit 1, no message, no traceback
        big = b"y" * (4 * 1024 * 1024)
        res = subprocess.run(f"{sys.executable} -m roamlink connect {srv.addr} | head -c 10",
                             shell=True, input=big, capture_output=True, timeout=30,
                             cwd=ROOT, env=_env())
        assert res.stdout == b"y" * 10
        assert b"Traceback" not in res.stderr and b"error" not in res.stderr
        _, srv_out, _ = srv.stop()
    closed = [e for e in json_lines(srv_out) if e["event"] == "closed"]
    assert len(closed) == 2  # the server saw both connections end (not left to time out)
    assert all(e["seconds"] < 10 for e in closed)


def test_forward_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["forward", "8080"], ["serve", "0", "--forward", "127.0.0.1:22", "--echo"],
                 ["connect", "127.0.0.1:9", "--idle-timeout", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    assert "must be >= 0" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["forward", f"127.0.0.1:{busy.getsockname()[1]}", "127.0.0.1:9"]) == 1
    assert "address already in use" in capsys.readouterr().err
    for argv in (["forward", "--help"], ["serve", "--help"], ["connect", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0 and "--idle-timeout" in capsys.readouterr().out


def test_fifty_parallel_curl_downloads_through_forward(tmp_path: Path) -> None:
    require_programs("curl")
    n, size = 50, 1024 * 1024
    files = {f"f{i}.bin": random_file(tmp_path / f"f{i}.bin", size) for i in range(n)}
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
        procs.append(proc)
        return proc

    try:
        http = start([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                      "--directory", str(tmp_path)])
        assert http.stdout is not None
        line = _read_line(http.stdout, http, 20.0).decode()
        http_port = int(line.split(" port ")[1].split()[0])
        serve = start([sys.executable, "-m", "roamlink", "--json", "serve", "0", "--forward",
                       f"127.0.0.1:{http_port}"])
        assert serve.stdout is not None
        port = json.loads(_read_line(serve.stdout, serve, 20.0))["port"]
        forward = start([sys.executable, "-m", "roamlink", "--json", "forward", "0",
                         f"127.0.0.1:{port}"])
        assert forward.stdout is not None
        fport = json.loads(_read_line(forward.stdout, forward, 20.0))["port"]
        curls = [start(["curl", "-sS", "--fail", "-o", str(out_dir / name),
                        f"http://127.0.0.1:{fport}/{name}"]) for name in files]
        for curl in curls:
            _, err = curl.communicate(timeout=120)
            assert curl.returncode == 0, err.decode()
        got = {name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
               for name in files}
        assert got == files  # all 50 hash-exact
        time.sleep(0.5)
        forward.send_signal(signal.SIGTERM)
        out, _ = forward.communicate(timeout=20)
        closed = [e for e in json_lines(out) if e["event"] == "closed"]
        assert len(closed) == n and all(e["outcome"] == "closed" for e in closed)
        assert len({e["connection_id"] for e in closed}) == n  # one connection each
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
