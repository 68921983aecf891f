"""Across machines: two servers behind an nftables balancer that routes by CID (root / CI).

The client's NAT rebinds three times mid-transfer. Each rebinding is a new flow for the
balancer, whose first packet is a short header: nftables reads the server id in its CID and
sends it to the same server as before. The other server receives not one packet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roamlink.testing.netpeer import expected_sha256
from tests.support.balancer import BalancedTopology
from tests.support.paths import PACKAGE_PARENT

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(os.path.dirname(HERE), "src", "roamlink", "testing", "netpeer.py")
SERVER = os.path.join(HERE, "workers_server.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [PACKAGE_PARENT, os.path.dirname(HERE)]))

pytestmark = pytest.mark.timeout(180)


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"process exited early: {proc.poll()}"
    return line.strip()


def test_balancer_keeps_every_packet_on_one_server_across_nat_rebindings(
        balanced_topology: BalancedTopology) -> None:
    topo = balanced_topology
    size_mib, rebinds = 16, 3
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "env": ENV}
    servers = []
    for server_id, (ns, ip) in enumerate(zip(topo.server_nss, topo.SERVER_IPS, strict=True)):
        proc = topo.popen(ns, [sys.executable, SERVER, "2", "--host", ip, "--port",
                               str(topo.PORT), "--server-id", str(server_id)], **pipes)
        servers.append(proc)
        assert json.loads(_line(proc))["port"] == topo.PORT
    client = topo.popen(topo.client_ns, [sys.executable, PEER, "client", topo.server_ip,
                                         str(topo.PORT), str(size_mib), str(rebinds)], **pipes)
    try:
        assert _line(client) == "CONNECTED"
        for k in range(1, rebinds + 1):
            assert _line(client) == f"CHECKPOINT {k}"
            topo.rebind()  # the NAT forgets the mapping: a new external port, a new flow
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        client_result = json.loads(_line(client))
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(timeout=10)
    hello, result = (json.loads(line) for line in client_result["reply"].splitlines())
    assert result["sha256"] == expected_sha256(size_mib)  # hash-exact
    assert result["bytes"] == size_mib << 20
    assert result["path_changes"] >= rebinds  # the server saw every new address
    assert result["worker"] == hello["worker"] and result["pid"] == hello["pid"]
    assert result["stats"]["handed_in"] == 0  # and inside it, the kernel steered by CID
    counts = topo.received()
    chosen = result["server_id"]
    assert counts[chosen][1] > size_mib << 20  # every data packet went there...
    assert counts[1 - chosen] == (0, 0), (counts, topo.ruleset())  # ...and none elsewhere
    by_cid, by_client_cid, by_hash = topo.rule_hits()
    assert (by_client_cid, by_hash) == (1, 0)  # the handshake's flow, by the client's CID
    assert by_cid >= rebinds  # each rebound flow was routed by the server id in its CID
