"""The netns test infrastructure itself, exercised with plain UDP sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.support.netns as netns
from tests.support.netns import (
    BottleneckTopology,
    NatTopology,
    cleanup_stale,
    ensure_tools,
    list_namespaces,
)

# The fixtures (tests/netns_fixtures.py) are imported by tests/conftest.py.

pytestmark = pytest.mark.timeout(60)

SERVER_PORT = 5000


def _hello(topo: NatTopology):  # type: ignore[no-untyped-def]
    srv = topo.udp_agent(topo.server_ns, topo.server_ip, SERVER_PORT)
    cli = topo.udp_agent(topo.client_ns)
    return srv, cli


def test_server_sees_router_external_address(nat_topology: NatTopology) -> None:
    t = nat_topology
    srv, cli = _hello(t)
    assert cli.send((t.server_ip, SERVER_PORT), "ping") == {"ok": True}
    got = srv.recv(timeout=5)
    assert got is not None
    data, src = got
    assert data == "ping"
    assert src[0] == t.router_external_ip != t.client_ip
    # The mapping is visible in conntrack and matches what the server saw.
    maps = t.mappings()
    assert [m.external for m in maps] == [src]
    assert maps[0].client == (t.client_ip, cli.bound[1])
    # Replies through the mapping reach the client, from the server's real address.
    srv.send(src, "pong")
    assert cli.recv(timeout=5) == ("pong", (t.server_ip, SERVER_PORT))


def test_rebind_gives_new_source_port(nat_topology: NatTopology) -> None:
    t = nat_topology
    srv, cli = _hello(t)
    seen = []
    for i in range(3):
        cli.send((t.server_ip, SERVER_PORT), f"m{i}")
        got = srv.recv(timeout=5)
        assert got is not None and got[0] == f"m{i}"
        seen.append(got[1])
        m = t.wait_mapping(cli.bound[1], timeout=1)
        assert m is not None and m.external == got[1]
        old = t.rebind()
        assert [m.external for m in old] == [got[1]]
        assert t.mappings() == []
    assert all(ip == t.router_external_ip for ip, _ in seen)
    ports = [p for _, p in seen]
    assert len(set(ports)) == 3, ports


def test_reply_to_old_mapping_is_lost_and_refused(nat_topology: NatTopology) -> None:
    t = nat_topology
    srv, cli = _hello(t)
    cli.send((t.server_ip, SERVER_PORT), "a")
    got = srv.recv(timeout=5)
    assert got is not None
    old_addr = got[1]
    t.rebind()
    # Unconnected server socket: sendto the dead mapping succeeds, the client gets nothing,
    # and the ICMP port unreachable is NOT reported on an unconnected socket.
    assert srv.send(old_addr, "lost") == {"ok": True}
    assert cli.recv(timeout=0.5) is None
    assert srv.recv_raw(timeout=0.3) == {"timeout": True}
    # A connected socket to the dead mapping gets ECONNREFUSED from the ICMP error.
    conn = t.udp_agent(t.server_ns, t.server_ip, SERVER_PORT + 1)
    conn.connect(old_addr)
    assert conn.send_connected("x") == {"ok": True}
    r = conn.recv_raw(timeout=2)
    assert r.get("errno") == 111, r
    # Each later send draws another ICMP error (while the router's ICMP rate limit allows).
    assert conn.send_connected("y") == {"ok": True}
    assert "errno" in conn.recv_raw(timeout=2)
    # The client's next packet travels on a fresh mapping and arrives.
    cli.send((t.server_ip, SERVER_PORT), "b")
    got2 = srv.recv(timeout=5)
    assert got2 is not None and got2[0] == "b" and got2[1] != old_addr


def test_change_external_ip(nat_topology: NatTopology) -> None:
    t = nat_topology
    srv, cli = _hello(t)
    first_ip = t.router_external_ip
    cli.send((t.server_ip, SERVER_PORT), "a")
    got = srv.recv(timeout=5)
    assert got is not None and got[1][0] == first_ip
    t.change_external_ip()
    assert t.router_external_ip != first_ip
    cli.send((t.server_ip, SERVER_PORT), "b")
    got2 = srv.recv(timeout=5)
    assert got2 is not None and got2[1][0] == t.router_external_ip


def test_teardown_removes_namespaces_even_on_error() -> None:
    ok, reason = ensure_tools()
    if not ok:
        pytest.skip(f"netns unavailable: {reason}")
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), NatTopology() as t:
        names = t.namespaces
        t.popen(t.server_ns, ["sleep", "30"])
        assert set(names) <= set(list_namespaces())
        raise RuntimeError("boom")
    assert len(names) == 3
    assert not set(names) & set(list_namespaces())
    with BottleneckTopology() as b:
        bnames = b.namespaces
    assert len(bnames) == 3
    assert not set(bnames) & set(list_namespaces())


SINK = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(10)
n = 0; first = last = None
try:
    while True:
        d = s.recv(65535)
        if d == b"END":
            break
        now = time.monotonic()
        first = first or now
        last = now
        n += len(d)
        s.settimeout(1.0)
except socket.timeout:
    pass
dt = (last - first) if first and last and last > first else 0.0
print(n, dt, flush=True)
"""

BLAST = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = (sys.argv[1], int(sys.argv[2])); dur = float(sys.argv[3])
buf = b"x" * 1400; sent = 0; end = time.monotonic() + dur
while time.monotonic() < end:
    for _ in range(64):
        try:
            s.sendto(buf, dst); sent += len(buf)
        except OSError:
            pass
for _ in range(5):
    s.sendto(b"END", dst); time.sleep(0.05)
print(sent, flush=True)
"""


def test_bottleneck_limits_throughput(bottleneck_topology: BottleneckTopology) -> None:
    b = bottleneck_topology
    sink = b.python(b.b_ns, SINK, b.b_ip, "6000", stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == "ready"
    blast = b.run(b.a_ns, [sys.executable, "-c", BLAST, b.b_ip, "6000", "1.5"], timeout=20)
    assert blast.returncode == 0, blast.stderr
    out, _ = sink.communicate(timeout=20)
    received, dt = out.split()
    received_bytes, seconds = int(received), float(dt)
    sent_bytes = int(blast.stdout.strip())
    assert received_bytes > 0 and seconds > 0.2
    mbit = received_bytes * 8 / seconds / 1e6
    print(json.dumps({"sent_mbit": sent_bytes * 8 / 1.5 / 1e6, "received_mbit": mbit}))
    # Loose bound: 50 Mbit/s bottleneck, never near 200 Mbit/s whatever the machine speed.
    assert mbit < 200, mbit
    assert received_bytes <= sent_bytes
    assert "tbf" in b.qdisc_stats("b")


def test_delay_line_adds_rtt_and_keeps_nat(nat_topology_rtt20: NatTopology) -> None:
    t = nat_topology_rtt20
    srv, cli = _hello(t)
    rtts = []
    srcs = set()
    for i in range(4):
        if i == 2:
            t.rebind()
        t0 = time.monotonic()
        cli.send((t.server_ip, SERVER_PORT), f"p{i}")
        got = srv.recv(timeout=5)
        assert got is not None and got[0] == f"p{i}"
        srcs.add(got[1])
        srv.send(got[1], "r")
        assert cli.recv(timeout=5) == ("r", (t.server_ip, SERVER_PORT))
        rtts.append(time.monotonic() - t0)
    # Lower bound only (a delay line cannot be faster than its delay): not a flaky timing test.
    assert min(rtts) >= 0.019, rtts
    assert len(srcs) == 2  # rebinding works through the delay line too
    print(json.dumps({"rtt_ms": [round(r * 1000, 2) for r in rtts]}))


def test_bottleneck_with_delay(bottleneck_topology_delayed: BottleneckTopology) -> None:
    b = bottleneck_topology_delayed
    a_agent = b.udp_agent(b.a_ns)
    b_agent = b.udp_agent(b.b_ns, b.b_ip, 7000)
    t0 = time.monotonic()
    a_agent.send((b.b_ip, 7000), "x")
    got = b_agent.recv(timeout=5)
    assert got is not None
    b_agent.send(got[1], "y")
    assert a_agent.recv(timeout=5) is not None
    assert time.monotonic() - t0 >= 0.019  # 2 x 10 ms, lower bound only
    assert "tbf" in b.qdisc_stats("b") and "tbf" in b.qdisc_stats("a")


def test_cleanup_stale_removes_leftovers_of_killed_process() -> None:
    ok, reason = ensure_tools()
    if not ok:
        pytest.skip(f"netns unavailable: {reason}")
    code = (
        "import time\n"
        "from tests.support.netns import NatTopology\n"
        "t = NatTopology()\n"
        "print(' '.join(t.namespaces), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(netns.__file__).parents[2])},
    )
    try:
        assert child.stdout is not None
        names = child.stdout.readline().split()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert len(names) == 3 and set(names) <= set(list_namespaces())
    removed = cleanup_stale()
    assert set(names) <= set(removed)
    assert not set(names) & set(list_namespaces())


def test_ensure_tools_reports_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.sys, "platform", "linux")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    ok, reason = ensure_tools.__wrapped__()
    assert not ok and "root" in reason


def test_ensure_tools_installs_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.sys, "platform", "linux")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    calls: list[float] = []

    def fake_install(timeout: float) -> str | None:
        calls.append(timeout)
        return "no network"

    monkeypatch.setattr(netns, "_install_tools", fake_install)
    ok, reason = ensure_tools.__wrapped__(install_timeout=5.0)
    assert calls == [5.0]
    assert not ok and "install failed" in reason and "conntrack" in reason
