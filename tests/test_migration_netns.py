"""Real NAT: a 64 MiB transfer survives forced NAT rebindings, hash-exact (root / CI only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roamlink.testing.netpeer import expected_sha256
from tests.support.netns import NatTopology
from tests.support.paths import PACKAGE_PARENT

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(os.path.dirname(HERE), "src", "roamlink", "testing", "netpeer.py")
ENV = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)

pytestmark = pytest.mark.timeout(240)


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"peer exited early: {proc.poll()}"
    return line.strip()


def test_64mib_across_forced_nat_rebindings(nat_topology: NatTopology) -> None:
    topo = nat_topology
    size_mib, rebinds = 64, 3
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "env": ENV}
    server = topo.popen(topo.server_ns, [sys.executable, PEER, "server", topo.server_ip,
                                         "9000"], **pipes)
    assert _line(server) == "READY"
    client = topo.popen(topo.client_ns, [sys.executable, PEER, "client", topo.server_ip,
                                         "9000", str(size_mib), str(rebinds)], **pipes)
    try:
        assert _line(client) == "CONNECTED"
        ports = set()
        for k in range(1, rebinds + 1):
            assert _line(client) == f"CHECKPOINT {k}"
            dropped = topo.rebind()  # the NAT forgets the mapping: a new external port
            ports.update(m.external[1] for m in dropped)
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        client_result = json.loads(_line(client))
        result = json.loads(_line(server))
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    assert client_result["reply"] == "ok"
    assert result["bytes"] == size_mib * 1024 * 1024
    assert result["sha256"] == expected_sha256(size_mib)
    assert result["path_changes"] >= rebinds  # the server followed every rebinding
    assert len(ports) >= rebinds - 1 or not ports
    assert result["remote"][0] == topo.router_external_ip
