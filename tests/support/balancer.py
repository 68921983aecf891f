"""Two server hosts behind a CID-routing load balancer, behind the client's NAT (netns).

::

    client ns --- NAT router ns (SNAT, rebind()) --- balancer ns (VIP) --+-- server A ns
                                                                         +-- server B ns

The balancer's nftables rule set is :func:`balancer_ruleset`, the one docs/scaling.md shows:
short headers are DNATed to the server named in the CID's server-id byte, SYNs by a byte of
the client's CID, anything else by a hash of the client's address. Everything lives inside
namespaces this module creates (10.200.0.0/16 exists only there); see ``netns.py``.
"""

from __future__ import annotations

import shutil
import subprocess

from .netns import NatTopology, NetnsError, _install_tools, _veth

#: Where the server id sits in a short-header datagram: byte 1 starts the CID, whose first
#: octet holds configuration bits; the server id follows (Config.server_id_length = 1).
SERVER_ID_PAYLOAD_BYTE = 2


def balancer_ruleset(vip: str, port: int, servers: list[str]) -> str:
    """nftables rules: CID-routed short headers and SYNs, anything else spread by a hash.

    ``@th,64,8`` is the first UDP payload byte (after the 8-byte UDP header): a short header
    has the bits 0xC0 equal to 0x40, and ``@th,80,8`` (payload byte 2) is its server id. A
    client's SYN has an empty destination CID (payload byte 5, ``@th,104,8``, is 0), so the
    client's CID starts at payload byte 7 (``@th,120,8``): routing SYNs by that random byte
    sends every copy of a SYN (a retransmission after a NAT rebinding, a replay) to one
    server. DNAT is stateful: it decides on a flow's first packet, so after a NAT rebinding
    the new flow's first packet (a short header) is routed by its CID.
    """
    by_id = ", ".join(f"{i} : {ip}" for i, ip in enumerate(servers))
    n = len(servers)
    if n & (n - 1) == 0:  # a power of two: the low bits of the byte pick the server
        syn_key = f"@th,120,8 & {n - 1}"
        by_byte = by_id
    else:  # any other count: a map of all 256 values (byte mod n)
        syn_key = "@th,120,8"
        by_byte = ", ".join(f"{b} : {servers[b % n]}" for b in range(256))
    sid_bits = (8 + SERVER_ID_PAYLOAD_BYTE) * 8
    match = f"ip daddr {vip} udp dport {port}"
    return f"""
table ip roamlink_lb {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {match} @th,64,8 & 0xc0 == 0x40 counter \\
            dnat to @th,{sid_bits},8 map {{ {by_id} }}
        {match} @th,64,8 & 0xc0 != 0x40 @th,104,8 == 0 counter \\
            dnat to {syn_key} map {{ {by_byte} }}
        {match} counter \\
            dnat to jhash ip saddr . udp sport mod {len(servers)} map {{ {by_id} }}
    }}
}}
"""


def ensure_nft(install_timeout: float = 600.0) -> tuple[bool, str]:
    """``nft`` present (installed with apt-get as the other netns tools are, if missing)."""
    if shutil.which("nft") is None:
        err = _install_tools(install_timeout)
        if shutil.which("nft") is None:
            return False, f"nft missing and install failed: {err}"
    return True, ""


class BalancedTopology(NatTopology):
    """The NAT topology whose server host is a load balancer in front of two servers.

    ``server_ip`` (the balancer's address) is the service address clients use; the servers
    are ``SERVER_IPS`` (server id i is ``SERVER_IPS[i]``).
    """

    SERVER_IPS = ("10.200.3.2", "10.200.4.2")
    _BALANCER_SIDE_IPS = ("10.200.3.1", "10.200.4.1")
    PORT = 4433

    def _build(self) -> None:
        super()._build()
        self.balancer_ns = self.server_ns
        self.server_nss = [self._add_ns("sa"), self._add_ns("sb")]
        lb = self.balancer_ns
        for i, ns in enumerate(self.server_nss):
            _veth(lb, f"rl-lb{i}", ns, "rl-s")
            self.ip(lb, "addr", "add", f"{self._BALANCER_SIDE_IPS[i]}/24", "dev", f"rl-lb{i}")
            self.ip(ns, "addr", "add", f"{self.SERVER_IPS[i]}/24", "dev", "rl-s")
            self.ip(lb, "link", "set", f"rl-lb{i}", "up")
            self.ip(ns, "link", "set", "rl-s", "up")
            self.ip(ns, "route", "add", "default", "via", self._BALANCER_SIDE_IPS[i])
            # count what reaches each server (the test's proof that nothing strays)
            self.sh(ns, "iptables", "-A", "INPUT", "-p", "udp", "--dport", str(self.PORT))
        self.sh(lb, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        rules = balancer_ruleset(self.server_ip, self.PORT, list(self.SERVER_IPS))
        proc = subprocess.run(["ip", "netns", "exec", lb, "nft", "-f", "-"], input=rules,
                              capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise NetnsError(f"nft rejected the balancer rules: {proc.stderr.strip()}")

    def received(self) -> list[tuple[int, int]]:
        """(packets, bytes) of UDP to the service port that reached each server so far.

        Packets may be GSO/GRO aggregates (several datagrams in one); bytes are exact.
        """
        counts = []
        for ns in self.server_nss:
            out = self.sh(ns, "iptables", "-L", "INPUT", "-v", "-n", "-x").stdout
            rows = [line.split() for line in out.splitlines() if f"dpt:{self.PORT}" in line]
            counts.append((int(rows[0][0]), int(rows[0][1])) if rows else (0, 0))
        return counts

    def rule_hits(self) -> tuple[int, int, int]:
        """New flows DNATed by (server id, client CID of a SYN, hash): DNAT rules see only a
        flow's first packet."""
        hits = [int(line.split("counter packets ")[1].split()[0])
                for line in self.ruleset().splitlines() if "counter packets" in line]
        return hits[0], hits[1], hits[2]

    def ruleset(self) -> str:
        return self.sh(self.balancer_ns, "nft", "list", "ruleset").stdout
