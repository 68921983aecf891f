"""Real networks for tests: a NAT and a bottleneck built from Linux network namespaces.

Everything here lives inside namespaces that the fixture itself creates and removes; the
private addresses used (10.201.x.y, 10.202.x.y) exist only inside them, so no traffic ever
leaves this machine. Needs root and ``ip``/``iptables``/``conntrack``/``tc``;
:func:`ensure_tools` installs them from Debian's packages when running as root.

Facts this relies on (verified on the CI machine kind): plain MASQUERADE keeps the client's
source port when it is free, so flushing conntrack alone does not rebind; with
``--random-fully`` every ``conntrack -D -p udp`` in the router gives the client's flow a new
external port. The kernel has no ``netem`` qdisc, but ``tbf`` works.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

_PREFIX = "rl"
_TOOLS = ("ip", "iptables", "conntrack", "tc")
_APT_PACKAGES = ("iproute2", "iptables", "nftables", "conntrack")
_ROLES = tuple(f"{_PREFIX}{role}" for role in ("cnat", "rnat", "snat", "abn", "bbn", "probe"))
_cached: tuple[bool, str] | None = None


class NetnsError(RuntimeError):
    """A namespace command failed (the message has the command and its stderr)."""


def _run(argv: Sequence[str], *, timeout: float = 30, check: bool = True,
         ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ensure_tools() -> tuple[bool, str]:
    """Whether namespace tests can run here, and if not, why. Installs tools as root."""
    global _cached
    if _cached is not None:
        return _cached
    _cached = _probe()
    return _cached


def _probe() -> tuple[bool, str]:
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespaces need root (CI runs as root)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300,
                           env=env, stdin=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", *_APT_PACKAGES],
                           capture_output=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"could not install {' '.join(_APT_PACKAGES)}: {exc}"
        missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return False, f"missing tools: {', '.join(missing)}"
    name = f"{_PREFIX}probe{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", name])
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create a network namespace here: {exc}"
    _run(["ip", "netns", "del", name], check=False)
    return True, "ok"


def cleanup_stale() -> None:
    """Remove namespaces left behind by a killed test run (only ours, by prefix)."""
    proc = _run(["ip", "netns", "list"], check=False)
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(_ROLES):
            _run(["ip", "netns", "del", name], check=False)


class _Topology:
    """Namespaces and links torn down on exit, also when the body raised."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.namespaces: list[str] = []

    def _ns(self, role: str) -> str:
        name = f"{_PREFIX}{role}{self.tag}"
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        _run(["ip", "link", "set", "lo", "up"], ns=name)
        return name

    def _veth(self, a_ns: str, a_if: str, a_ip: str, b_ns: str, b_if: str, b_ip: str) -> None:
        _run(["ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if])
        for ns, ifname, ip in ((a_ns, a_if, a_ip), (b_ns, b_if, b_ip)):
            _run(["ip", "link", "set", ifname, "netns", ns])
            _run(["ip", "addr", "add", ip, "dev", ifname], ns=ns)
            _run(["ip", "link", "set", ifname, "up"], ns=ns)

    def run(self, ns: str, argv: Sequence[str], *, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace ``ns`` and wait for it."""
        return _run(argv, ns=ns, timeout=timeout, check=check)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process inside namespace ``ns`` (text mode; caller waits or kills)."""
        kwargs.setdefault("text", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)

    def close(self) -> None:
        for name in reversed(self.namespaces):  # deleting a namespace deletes its veths
            _run(["ip", "netns", "del", name], check=False)
        self.namespaces.clear()

    def __enter__(self) -> _Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatTopology(_Topology):
    """client ns --- router ns (SNAT, --random-fully) --- server ns.

    The client (10.201.1.2) reaches the server (10.201.2.2) only through the router, which
    masquerades it behind ``router_external_ip`` (10.201.2.1). :meth:`rebind` forces a NAT
    rebinding: the client's flow gets a new external port (or, with ``new_ip=True``, a second
    external address).
    """

    client_ip = "10.201.1.2"
    router_internal_ip = "10.201.1.1"
    router_external_ip = "10.201.2.1"
    router_second_ip = "10.201.2.3"
    server_ip = "10.201.2.2"

    def __init__(self) -> None:
        super().__init__()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self.client_ns = self._ns("cnat")
        self.router_ns = self._ns("rnat")
        self.server_ns = self._ns("snat")
        t = self.tag
        self._veth(self.client_ns, f"rlc{t}", f"{self.client_ip}/24",
                   self.router_ns, f"rlri{t}", f"{self.router_internal_ip}/24")
        self._veth(self.router_ns, f"rlre{t}", f"{self.router_external_ip}/24",
                   self.server_ns, f"rls{t}", f"{self.server_ip}/24")
        self.external_if = f"rlre{t}"
        _run(["ip", "route", "add", "default", "via", self.router_internal_ip],
             ns=self.client_ns)
        _run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=self.router_ns)
        self._snat_rule: list[str] = ["-o", self.external_if, "-p", "udp", "-j", "MASQUERADE",
                                      "--random-fully"]
        _run(["iptables", "-t", "nat", "-A", "POSTROUTING", *self._snat_rule],
             ns=self.router_ns)
        self.external_ip = self.router_external_ip

    def rebind(self, *, new_ip: bool = False) -> None:
        """Forget the router's UDP mappings: the client's next packet gets a new one."""
        if new_ip:
            target = (self.router_second_ip if self.external_ip == self.router_external_ip
                      else self.router_external_ip)
            if target == self.router_second_ip:
                _run(["ip", "addr", "add", f"{target}/24", "dev", self.external_if],
                     ns=self.router_ns, check=False)
            rule = ["-o", self.external_if, "-p", "udp", "-j", "SNAT", "--to-source", target,
                    "--random-fully"]
            _run(["iptables", "-t", "nat", "-D", "POSTROUTING", *self._snat_rule],
                 ns=self.router_ns)
            _run(["iptables", "-t", "nat", "-A", "POSTROUTING", *rule], ns=self.router_ns)
            self._snat_rule = rule
            self.external_ip = target
        # exit code 1 means "no entries": fine, the next packet creates a fresh mapping
        _run(["conntrack", "-D", "-p", "udp"], ns=self.router_ns, check=False)


class BottleneckTopology(_Topology):
    """Two namespaces joined by one veth pair; ``a``'s egress (a -> b) is shaped by tbf.

    ``rate`` is e.g. "50mbit"; the queue holds ``queue_packets`` full-size packets.
    """

    a_ip = "10.202.1.1"
    b_ip = "10.202.1.2"

    def __init__(self, rate: str = "50mbit", queue_packets: int = 100,
                 both_ways: bool = False) -> None:
        super().__init__()
        try:
            self.a_ns = self._ns("abn")
            self.b_ns = self._ns("bbn")
            a_if, b_if = f"rla{self.tag}", f"rlb{self.tag}"
            self._veth(self.a_ns, a_if, f"{self.a_ip}/24", self.b_ns, b_if, f"{self.b_ip}/24")
            limit = str(queue_packets * 1500)
            shaped = [(self.a_ns, a_if)] + ([(self.b_ns, b_if)] if both_ways else [])
            for ns, ifname in shaped:
                _run(["tc", "qdisc", "add", "dev", ifname, "root", "tbf", "rate", rate,
                      "burst", "32kbit", "limit", limit], ns=ns)
        except BaseException:
            self.close()
            raise


def namespaces_with_prefix() -> list[str]:
    """Our namespaces that currently exist (for tests that check clean-up)."""
    proc = _run(["ip", "netns", "list"], check=False)
    return [ln.split()[0] for ln in proc.stdout.splitlines()
            if ln.split() and ln.split()[0].startswith(_ROLES)]
