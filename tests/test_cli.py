"""The `roamlink` command, run as a subprocess over loopback (plus its pure helpers in-process).

Servers are started on port 0 and report their port in their first line; every process runs
under a timeout and is killed afterwards, so a broken build fails instead of hanging.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from roamlink.cli.common import parse_hostport
from roamlink.cli.transfer import Reply, unsafe_name_reason, verify
from tests.support.paths import PACKAGE_PARENT

ROOT = Path(__file__).resolve().parent.parent
SRC = PACKAGE_PARENT  # the roamlink under test (installed or src/)
TIMEOUT = 30.0


def _env(extra_path: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC if extra_path is None else f"{extra_path}{os.pathsep}{SRC}"
    env.pop("ROAMLINK_FORCE_TTY", None)
    env.update(extra)
    return env


def roamlink(*args: str, stdin: bytes = b"", timeout: float = TIMEOUT,
             env: dict[str, str] | None = None,
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*prefix, sys.executable, "-m", "roamlink", *args], input=stdin,
                          capture_output=True, timeout=timeout, cwd=ROOT,
                          env=env or _env())


def json_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


class Server:
    """A background `roamlink` process whose first report line tells its address."""

    def __init__(self, proc: subprocess.Popen[bytes], first: dict[str, Any]) -> None:
        self.proc = proc
        self.first = first
        self.addr = f"127.0.0.1:{first['port']}"

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, bytes, bytes]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


@contextmanager
def server(*args: str, reports_on_stderr: bool = False,
           env: dict[str, str] | None = None) -> Iterator[Server]:
    proc = subprocess.Popen([sys.executable, "-m", "roamlink", "--json", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env or _env())
    try:
        pipe = proc.stderr if reports_on_stderr else proc.stdout
        assert pipe is not None
        line = _read_line(pipe, proc, 20.0)
        srv = Server(proc, json.loads(line))
        assert srv.first["event"] == "listening"
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _read_line(pipe: Any, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line from ``pipe`` without blocking forever (the server may have failed)."""
    sel = selectors.DefaultSelector()
    sel.register(pipe, selectors.EVENT_READ)
    data = b""
    deadline = time.monotonic() + timeout
    fd = pipe.fileno()
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise AssertionError(f"no line from the server in time; got {data!r}")
        chunk = os.read(fd, 1)  # one byte at a time: leave the rest for communicate()
        if not chunk:
            _, err = proc.communicate(timeout=5)
            raise AssertionError(f"server exited early: {err.decode()}")
        data += chunk
    return data


def _free_udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# ----------------------------------------------------------------------------- happy paths
def test_send_file_is_stored_and_verified(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 123)
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    save = tmp_path / "inbox"
    save.mkdir()
    with server("serve", "127.0.0.1:0", "--save", str(save)) as srv:
        res = roamlink("--json", "send", str(src), srv.addr, "--interval", "0.2")
        assert res.returncode == 0, res.stderr.decode()
        reports = json_lines(res.stdout)
        final = reports[-1]
        assert final["event"] == "verified"
        assert final["sha256"] == hashlib.sha256(payload).hexdigest()
        assert final["size"] == len(payload)
        assert (save / "payload.bin").read_bytes() == payload
        assert not [p for p in save.iterdir() if p.name.startswith(".")]  # no temp file left

        # the same name again: refused (no --overwrite), the stored file is untouched
        other = tmp_path / "other" / "payload.bin"
        other.parent.mkdir()
        other.write_bytes(b"something else")
        res = roamlink("send", str(other), srv.addr)
        assert res.returncode == 4
        assert b"already exists" in res.stderr
        assert (save / "payload.bin").read_bytes() == payload

        # path traversal in the announced name: refused by the server, nothing written
        res = roamlink("send", str(other), srv.addr, "--name", "../escaped.bin")
        assert res.returncode == 4
        assert b"unsafe file name" in res.stderr
        assert not (tmp_path / "escaped.bin").exists()
        code, out, _ = srv.stop()
    events = [r["event"] for r in json_lines(out)]
    assert events.count("saved") == 1 and events.count("refused") == 2


def test_send_overwrite_and_plain_progress(tmp_path: Path) -> None:
    save = tmp_path / "inbox"
    save.mkdir()
    (save / "f.bin").write_bytes(b"old")
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    with server("serve", "0", "--save", str(save), "--overwrite", "--once") as srv:
        res = roamlink("send", str(src), srv.addr, "--interval", "0.05")
        assert srv.proc.wait(timeout=15) == 0  # --once: the exit status says it was stored
    assert res.returncode == 0, res.stderr.decode()
    text = res.stdout.decode()
    assert "size and SHA-256 match" in text
    assert "\x1b[" not in text  # piped: no escape codes
    assert (save / "f.bin").read_bytes() == src.read_bytes()


def test_connect_netcat_round_trip_through_echo() -> None:
    data = os.urandom(300_000) + b"last line\n"
    with server("serve", "0", "--echo") as srv:
        res = roamlink("connect", srv.addr, stdin=data)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == data  # end of stdin half-closed; the echo came back in full
    assert b"connected to" in res.stderr  # reports stay off stdout


def test_serve_prints_received_data_and_exits_once() -> None:
    data = b"hello over roamlink\n" * 1000
    with server("serve", "0", "--once", reports_on_stderr=True) as srv:
        res = roamlink("connect", srv.addr, stdin=data)
        assert res.returncode == 0, res.stderr.decode()
        out, _ = srv.proc.communicate(timeout=15)
    assert srv.proc.returncode == 0
    assert out == data


def test_sink_reports_what_it_received() -> None:
    data = os.urandom(1024 * 1024)
    with server("serve", "0", "--sink", "--once", "--interval", "0.1") as srv:
        res = roamlink("connect", srv.addr, stdin=data)
        assert res.returncode == 0, res.stderr.decode()
        out, _ = srv.proc.communicate(timeout=15)
    assert srv.proc.returncode == 0
    summary = [r for r in json_lines(out) if r["event"] == "summary"]
    assert summary and summary[0]["bytes"] == len(data) and summary[0]["bits_per_s"] > 0


def test_perf_two_seconds_reports_goodput() -> None:
    with server("perf", "server", "0", "--once") as srv:
        res = roamlink("--json", "perf", "client", srv.addr, "--seconds", "2",
                       "--interval", "0.5")
        assert res.returncode == 0, res.stderr.decode()
        assert srv.proc.wait(timeout=15) == 0
    reports = json_lines(res.stdout)
    intervals = [r for r in reports if r["event"] == "interval"]
    summary = reports[-1]
    assert summary["event"] == "summary"
    assert summary["goodput_bits_per_s"] > 0 and summary["bytes"] > 0
    assert len(intervals) >= 2
    assert {"retransmissions", "smoothed_rtt_ms"} <= set(summary)


def test_demo_migrates_and_checks_the_hash() -> None:
    res = roamlink("--json", "demo", "--size-mib", "2")
    assert res.returncode == 0, res.stderr.decode()
    reports = json_lines(res.stdout)
    by_event = {r["event"]: r for r in reports}
    assert "handshake" in by_event
    assert by_event["result"]["ok"] is True and by_event["result"]["migrated"] is True
    moved = by_event["path_validated"]
    assert moved["old"] != moved["new"]
    assert by_event["server_path_changed"]["new"] == moved["new"]  # the server saw the move
    assert by_event["bytes"]["bytes_before"] > 0 and by_event["bytes"]["bytes_after"] > 0


def test_demo_plain_text_timeline() -> None:
    res = roamlink("demo", "--size-mib", "1")
    assert res.returncode == 0, res.stderr.decode()
    text = res.stdout.decode()
    for needle in ("handshake complete", "PATH_CHALLENGE", "path validated", "hash check: OK"):
        assert needle in text


def test_relay_between_client_and_echo_server() -> None:
    data = os.urandom(500_000)
    with server("serve", "0", "--echo") as echo, \
            server("relay", "0", echo.addr, "--delay", "2ms", "--jitter", "1ms",
                   "--loss", "1%", "--duplicate", "1%", "--reorder", "1%",
                   "--rebind-every", "300ms", "--interval", "0.2") as relay:
        res = roamlink("connect", relay.addr, stdin=data)
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout == data
        time.sleep(1.0)  # the relay re-maps on a timer (300 ms), whether or not data flows
        _, out, _ = relay.stop(signal.SIGINT)
    counters = [r for r in json_lines(out) if r["event"] in ("counters", "summary")]
    last = counters[-1]
    assert last["up_forwarded"] > 0 and last["down_forwarded"] > 0
    assert last["rebinds"] >= 1


# ----------------------------------------------------------------------------- error paths
def test_port_in_use() -> None:
    with _free_udp_socket() as sock:
        port = sock.getsockname()[1]
        res = roamlink("serve", f"127.0.0.1:{port}", "--echo")
        relay = roamlink("relay", f"127.0.0.1:{port}", "127.0.0.1:9", "--duration", "1")
    assert res.returncode == 1
    assert res.stderr.decode().strip() == (f"roamlink: error: cannot listen on udp "
                                           f"127.0.0.1:{port}: address already in use "
                                           "(another server is running there?)")
    assert relay.returncode == 1 and b"address already in use" in relay.stderr


def test_wrong_kind_of_server_is_one_line_not_a_hang(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(200_000))
    with server("serve", "0", "--echo") as srv:
        send = roamlink("send", str(src), srv.addr)
        perf = roamlink("perf", "client", srv.addr, "--seconds", "0.5")
    assert send.returncode == 3 and b"serve --save" in send.stderr
    assert perf.returncode == 3 and b"perf server" in perf.stderr


def test_save_directory_must_exist(tmp_path: Path) -> None:
    res = roamlink("--json", "serve", "0", "--save", str(tmp_path / "nope"))
    assert res.returncode == 1
    assert res.stderr.decode().strip() == (f"roamlink: error: {tmp_path / 'nope'}: no such "
                                           "directory (create it first)")
    assert json_lines(res.stdout)[-1]["event"] == "error"  # --json: errors are objects too


def test_connect_timeout(tmp_path: Path) -> None:
    cfg = tmp_path / "fast.toml"
    cfg.write_text("connect_timeout = 0.5\n")
    with _free_udp_socket() as silent:  # bound, never answers
        port = silent.getsockname()[1]
        res = roamlink("connect", f"127.0.0.1:{port}", "--config", str(cfg))
    assert res.returncode == 3
    assert b"no answer within 0.5 s" in res.stderr
    assert b"Traceback" not in res.stderr


def test_version_mismatch(tmp_path: Path) -> None:
    cfg = tmp_path / "v2.toml"
    cfg.write_text("versions = [7]\n")
    with server("--config", str(cfg), "serve", "0", "--echo") as srv:
        res = roamlink("connect", srv.addr, stdin=b"x")
    assert res.returncode == 3
    assert b"protocol version mismatch: we speak [2], the server speaks [7]" in res.stderr


def test_file_not_found_and_debug_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    res = roamlink("send", str(missing), "127.0.0.1:9")
    assert res.returncode == 1
    assert res.stderr.decode().strip() == f"roamlink: error: {missing}: no such file or directory"
    res = roamlink("send", str(missing), "127.0.0.1:9", "--debug")
    assert res.returncode == 1 and b"Traceback" in res.stderr


def test_permission_denied(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    secret.chmod(0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that allow it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot provoke EACCES")
        prefix = (setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                  "--")
    res = roamlink("send", str(secret), "127.0.0.1:9", prefix=prefix)
    assert res.returncode == 1, res.stderr.decode()
    assert res.stderr.decode().strip() == f"roamlink: error: {secret}: permission denied"


def test_ctrl_c_is_one_line_and_exit_130() -> None:
    with server("serve", "0", "--sink") as srv:
        code, _, err = srv.stop(signal.SIGINT)
    assert code == 130
    assert err.decode().strip().endswith("roamlink: error: interrupted")
    assert b"Traceback" not in err


def test_config_unknown_key_and_bad_arguments(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("idle_timeout = 5\nbogus_key = 1\n")
    res = roamlink("demo", "--config", str(cfg))
    assert res.returncode == 2
    assert res.stderr.decode().strip() == (f"roamlink: error: config file {cfg}: "
                                           "unknown key 'bogus_key'")
    res = roamlink("relay", "0", "127.0.0.1:9", "--loss", "150%")
    assert res.returncode == 2 and b"--loss" in res.stderr
    res = roamlink("connect", "nowhere")
    assert res.returncode == 2 and b"expected HOST:PORT" in res.stderr


# ----------------------------------------------------------------------------- rendering
def test_works_without_rich(tmp_path: Path) -> None:
    """Even on a (pretend) terminal, a missing `rich` means plain lines, not a crash."""
    shim = tmp_path / "shim"
    (shim / "rich").mkdir(parents=True)
    (shim / "rich" / "__init__.py").write_text("raise ImportError('rich hidden by the test')\n")
    env = _env(str(shim), ROAMLINK_FORCE_TTY="1")
    probe = subprocess.run([sys.executable, "-c", "import roamlink.cli.output as o; "
                            "print(o.HAVE_RICH)"], env=env, capture_output=True, timeout=30)
    assert probe.stdout.strip() == b"False"
    res = roamlink("demo", "--size-mib", "1", env=env)
    assert res.returncode == 0, res.stderr.decode()
    assert b"hash check: OK" in res.stdout and b"\x1b[" not in res.stdout


def test_rich_progress_on_a_terminal(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1024 * 1024))
    save = tmp_path / "in"
    save.mkdir()
    with server("serve", "0", "--save", str(save), "--once") as srv:
        res = roamlink("send", str(src), srv.addr, env=_env(ROAMLINK_FORCE_TTY="1",
                                                            COLUMNS="120"))
    assert res.returncode == 0, res.stderr.decode()
    assert b"\x1b[" in res.stdout  # redrawn in place / coloured
    assert b"ETA" in res.stdout and b"MiB" in res.stdout


def test_help_of_every_command() -> None:
    for args in (["--help"], ["serve", "--help"], ["connect", "--help"], ["send", "--help"],
                 ["perf", "server", "--help"], ["perf", "client", "--help"],
                 ["relay", "--help"], ["demo", "--help"]):
        res = roamlink(*args)
        assert res.returncode == 0 and b"usage: roamlink" in res.stdout, args


# ----------------------------------------------------------------------------- helpers
def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:4433") == ("127.0.0.1", 4433)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    assert parse_hostport("4433", default_host="127.0.0.1") == ("127.0.0.1", 4433)
    for bad in ("4433", "host:port", "::1:80", "h:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_hostport(bad)


def test_unsafe_names() -> None:
    assert unsafe_name_reason("report.pdf") is None
    assert unsafe_name_reason("résumé v2.txt") is None
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", ".bashrc", "x\x00y", "x\ny", "a" * 300):
        assert unsafe_name_reason(bad) is not None, bad


def test_reply_round_trip_and_mismatch_message() -> None:
    digest = hashlib.sha256(b"abc").hexdigest()
    reply = Reply.decode(Reply(ok=True, size=3, sha256=digest, name="a b.txt").encode())
    assert reply == Reply(ok=True, size=3, sha256=digest, name="a b.txt")
    assert verify(3, digest, reply) is None
    problem = verify(4, "0" * 64, reply)
    assert problem is not None and "size differs" in problem and "SHA-256 differs" in problem
    assert Reply.decode(b"ERR disk full\n") == Reply(ok=False, message="disk full")


def test_stdin_reader_makes_nothing_for_a_closed_loop_to_drop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`connect`'s stdin thread hands a chunk to a loop that has just closed (the command
    ended: the peer finished, or ssh hung up): it stops quietly. It used to make a
    `Queue.put` coroutine first, which the closed loop never ran, and Python printed
    "coroutine 'Queue.put' was never awaited" on stderr, an ssh user's terminal."""
    import asyncio
    import gc
    import threading
    import warnings

    from roamlink.cli import connect_cmd

    read_end, write_end = os.pipe()
    os.write(write_end, b"typed after the peer left")
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop.close()
    with open(read_end, "rb", buffering=0) as stdin, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monkeypatch.setattr(sys, "stdin", stdin)
        room = threading.Semaphore(connect_cmd._STDIN_AHEAD)
        connect_cmd._stdin_reader(loop, queue, room)  # returns: the loop is closed
        gc.collect()
    os.close(write_end)
    assert queue.empty()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_stdin_reader_holds_back_a_fast_stdin() -> None:
    """At most _STDIN_AHEAD chunks are read ahead of what the connection took."""
    import asyncio
    import threading

    from roamlink.cli import connect_cmd

    async def main() -> tuple[int, int]:
        read_end, write_end = os.pipe()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        room = threading.Semaphore(connect_cmd._STDIN_AHEAD)
        old_stdin = sys.stdin
        sys.stdin = open(read_end, "rb", buffering=0)  # noqa: SIM115 (closed below)
        try:
            thread = threading.Thread(target=connect_cmd._stdin_reader,
                                      args=(loop, queue, room), daemon=True)
            thread.start()
            for _ in range(connect_cmd._STDIN_AHEAD * 3):  # a small write is one read
                os.write(write_end, b"x")
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)
            held = queue.qsize()
            for _ in range(held):  # the connection takes them: the reader goes on
                queue.get_nowait()
                room.release()
            os.close(write_end)
            chunks = [b""]
            while (chunk := await asyncio.wait_for(queue.get(), 5)) != b"":
                chunks.append(chunk)
                room.release()
            thread.join(5)
            return held, len(b"".join(chunks)) + held
        finally:
            sys.stdin.close()
            sys.stdin = old_stdin

    held, total = asyncio.run(main())
    assert held == connect_cmd._STDIN_AHEAD
    assert total == connect_cmd._STDIN_AHEAD * 3
