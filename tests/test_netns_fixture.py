"""The namespace NAT and bottleneck behave as the migration and recovery tests assume.

Runs for real as root (CI); skips elsewhere with the reason from netns.ensure_tools().
"""

from __future__ import annotations

import os
import subprocess
import sys

from roamlink.testing import netns

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_udp_helper.py")


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "helper process ended early"
    return line


def _say(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def test_nat_rebinding_changes_the_external_port(nat_topology: netns.NatTopology) -> None:
    topo = nat_topology
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    server = topo.popen(topo.server_ns, [sys.executable, HELPER, "server", "9000"], **pipes)
    client = topo.popen(topo.client_ns,
                        [sys.executable, HELPER, "client", topo.server_ip, "9000"], **pipes)
    try:
        assert _line(server) == "READY"
        _say(client, "send")
        first = _line(server).split()
        assert _line(client) == "REPLY"
        assert first[1] == topo.router_external_ip  # the server sees the NAT, not the client
        seen_ports = {first[2]}
        for _ in range(3):
            topo.rebind()
            _say(client, "send")
            src = _line(server).split()
            assert _line(client) == "REPLY"  # replies reach the client via the new mapping
            assert src[1] == topo.router_external_ip
            assert src[2] not in seen_ports  # same client socket, new external port
            seen_ports.add(src[2])
        # the old mapping is dead: what the server sends there never reaches the client
        _say(server, f"sendto {first[1]} {first[2]}")
        assert _line(server) == "SENT"
        _say(client, "recv")
        assert _line(client) == "TIMEOUT"
        # an address change with a new IP (a second external address)
        topo.rebind(new_ip=True)
        _say(client, "send")
        assert _line(server).split()[1] == topo.router_second_ip
        assert _line(client) == "REPLY"
    finally:
        for proc in (client, server):
            proc.kill()
            proc.wait(timeout=10)


def test_topologies_are_removed_even_when_the_body_fails() -> None:
    ok, reason = netns.ensure_tools()
    if not ok:
        import pytest

        pytest.skip(f"needs network namespaces: {reason}")
    before = set(netns.namespaces_with_prefix())
    try:
        with netns.NatTopology() as topo:
            created = set(topo.namespaces)
            assert created <= set(netns.namespaces_with_prefix())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert set(netns.namespaces_with_prefix()) == before
    assert not created & set(netns.namespaces_with_prefix())


def test_bottleneck_limits_the_rate(bottleneck_topology: netns.BottleneckTopology) -> None:
    topo = bottleneck_topology
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    sink = topo.popen(topo.b_ns, [sys.executable, HELPER, "sink", "9100", "1.0"], **pipes)
    blaster = topo.popen(topo.a_ns, [sys.executable, HELPER, "client", topo.b_ip, "9100"],
                         **pipes)
    try:
        assert _line(sink) == "READY"
        _say(blaster, "blast 1.5")
        received = int(_line(sink).split()[1])
        sent = int(_line(blaster).split()[1]) * 1200
        # 50 Mbit/s for ~1 s is ~6.25 MB; allow generous slack but well under the offered load
        assert 0 < received < 12_500_000
        assert sent > received
    finally:
        for proc in (blaster, sink):
            proc.kill()
            proc.wait(timeout=10)
