"""Network-namespace topologies for real-NAT and real-bottleneck tests.

Everything here lives inside namespaces this module creates and removes: the private
addresses (10.200.0.0/16, 10.201.0.0/16) exist only inside those namespaces, so no packet
ever leaves the machine. Interfaces are created directly inside their namespaces, so
deleting a namespace removes its veth ends too; nothing is left in the root namespace.

Namespace names are ``rlt-<pid>-<hex>-<role>``: unique per topology, and
:func:`cleanup_stale` can tell leftovers (owner pid dead) from a parallel run's live ones.

Requires root and the ``ip``, ``iptables`` and ``conntrack`` tools (see :func:`ensure_tools`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Self

log = logging.getLogger(__name__)

NS_PREFIX = "rlt-"
_CMD_TIMEOUT = 20.0
_REQUIRED_TOOLS = ("ip", "iptables", "conntrack", "tc")
_APT_PACKAGES = ("iproute2", "iptables", "nftables", "conntrack")

# Alternating SNAT port ranges: every rebind switches range, so the new external port is
# guaranteed to differ from the old one (with --random-fully alone it only almost surely does).
_PORT_RANGES = ("20000-39999", "40000-59999")


class NetnsError(RuntimeError):
    """A namespace setup/teardown command failed."""


def _cmd(
    argv: Sequence[str],
    *,
    timeout: float = _CMD_TIMEOUT,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"timeout after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise NetnsError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def _veth(ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
    """A veth pair created directly inside its namespaces (never visible in the root ns)."""
    _cmd(
        ["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth"]
        + ["peer", "name", dev_b, "netns", ns_b]
    )


def _missing_tools() -> list[str]:
    return [t for t in _REQUIRED_TOOLS if shutil.which(t) is None]


def _install_tools(timeout: float) -> str | None:
    """apt-get the tools; returns an error text or None."""
    if shutil.which("apt-get") is None:
        return "apt-get not available to install tools"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + timeout
    steps = (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *_APT_PACKAGES],
    )
    for argv in steps:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "apt-get timed out"
        try:
            _cmd(argv, timeout=remaining, env=env)
        except NetnsError as exc:
            return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def ensure_tools(install: bool = True, install_timeout: float = 600.0) -> tuple[bool, str]:
    """Make sure netns tests can run here; returns (ok, reason-if-not).

    As root with tools missing (fresh CI container) it installs them with apt-get, because
    CI must run these tests, not skip them. Cached: the probe runs once per process.
    """
    if not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "netns tests need root"
    missing = _missing_tools()
    if missing and install:
        log.info("installing %s for netns tests", " ".join(_APT_PACKAGES))
        err = _install_tools(install_timeout)
        missing = _missing_tools()
        if missing and err:
            return False, f"tools {missing} missing and install failed: {err}"
    if missing:
        return False, f"tools missing: {', '.join(missing)}"
    probe = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _cmd(["ip", "netns", "add", probe])
    except NetnsError as exc:
        return False, f"'ip netns add' fails: {exc}"
    try:
        _cmd(["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        _cmd(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"])
        _cmd(["ip", "netns", "exec", probe, "conntrack", "-L"])
    except NetnsError as exc:
        return False, f"netns probe failed: {exc}"
    finally:
        _cmd(["ip", "netns", "del", probe], check=False)
    return True, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(ns: str) -> list[int]:
    proc = _cmd(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _delete_ns(ns: str) -> None:
    """Kill whatever still runs in ns (all of it was started by us) and delete ns."""
    for pid in _ns_pids(ns):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _cmd(["ip", "netns", "del", ns], check=False)


def list_namespaces() -> list[str]:
    proc = _cmd(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Delete namespaces left by dead processes (name prefix rlt-); returns their names.

    Namespaces of live processes (parallel test runs) are kept.
    """
    removed: list[str] = []
    for ns in list_namespaces():
        if not ns.startswith(NS_PREFIX):
            continue
        parts = ns[len(NS_PREFIX) :].split("-")
        if parts and parts[0].isdigit() and _pid_alive(int(parts[0])):
            continue
        _delete_ns(ns)
        removed.append(ns)
    return removed


@dataclass(frozen=True)
class NatMapping:
    """One UDP conntrack entry in the router: client (ip, port) -> external (ip, port)."""

    client: tuple[str, int]
    server: tuple[str, int]
    external: tuple[str, int]


def _parse_conntrack(text: str) -> list[NatMapping]:
    out: list[NatMapping] = []
    for line in text.splitlines():
        orig: dict[str, str] = {}
        reply: dict[str, str] = {}
        for tok in line.split():
            if "=" not in tok:
                continue
            key, _, val = tok.partition("=")
            target = orig if key not in orig else reply
            if key not in target:
                target[key] = val
        try:
            out.append(
                NatMapping(
                    client=(orig["src"], int(orig["sport"])),
                    server=(orig["dst"], int(orig["dport"])),
                    external=(reply["dst"], int(reply["dport"])),
                )
            )
        except (KeyError, ValueError):
            continue
    return out


class _Topology:
    """Shared namespace bookkeeping: creation, process tracking, guaranteed teardown."""

    def __init__(self) -> None:
        self.tag = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    def _add_ns(self, role: str) -> str:
        ns = f"{self.tag}-{role}"
        _cmd(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")
        return ns

    def ip(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _cmd(["ip", "-n", ns, *args])

    def sh(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a setup command (iptables, tc, conntrack, sysctl) inside ns."""
        return _cmd(["ip", "netns", "exec", ns, *argv], check=check)

    def run(
        self, ns: str, argv: Sequence[str], **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside ns; default timeout 30 s, output captured as text."""
        popen_kwargs.setdefault("timeout", 30.0)
        popen_kwargs.setdefault("capture_output", True)
        popen_kwargs.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **popen_kwargs)

    def popen(self, ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen inside ns; the process is killed at teardown if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], **popen_kwargs
        )
        self._procs.append(proc)
        return proc

    def python(self, ns: str, code: str, *args: str, **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `python3 -c code args...` (this interpreter) inside ns."""
        return self.popen(ns, [sys.executable, "-c", code, *args], **popen_kwargs)

    def udp_agent(self, ns: str, bind_ip: str = "0.0.0.0", port: int = 0) -> UdpAgent:
        """A UDP socket living inside ns, driven from this process (see UdpAgent)."""
        proc = self.python(
            ns,
            _AGENT_SRC,
            bind_ip,
            str(port),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        return UdpAgent(proc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for ns in reversed(self._namespaces):
            _delete_ns(ns)

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start_delay_line(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str, delay: float) -> None:
        """Create TUN dev_a in ns_a and dev_b in ns_b, joined by a process that forwards each
        packet after `delay` seconds (FIFO). It exits when our end of its stdin closes."""
        proc = subprocess.Popen(
            [sys.executable, "-c", _DELAY_SRC, ns_a, dev_a, ns_b, dev_b, repr(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], _CMD_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            raise NetnsError(f"delay line failed to start (rc={proc.poll()})")

    def _build_guarded(self) -> None:
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        raise NotImplementedError


class NatTopology(_Topology):
    """client ns --veth-- router ns (SNAT --random-fully) --veth-- server ns.

    The server has no route to the client subnet: it only ever sees the router's external
    address, like a server behind the Internet. ``rebind()`` gives the client's flows a new
    external port; ``change_external_ip()`` moves them to a second external address.
    """

    CLIENT_IP = "10.200.1.2"
    ROUTER_INSIDE_IP = "10.200.1.1"
    ROUTER_EXTERNAL_IPS = ("10.200.2.1", "10.200.2.3")
    SERVER_IP = "10.200.2.2"

    def __init__(self, link_delay_ms: float = 0.0) -> None:
        """link_delay_ms > 0 replaces the router-server veth by a user-space TUN delay line
        adding that one-way delay in each direction (RTT += 2 * link_delay_ms), because this
        kernel has no netem. The delay line is a Python process: fine for migration tests and
        RTT-sensitive benchmarks, not for multi-hundred-Mbit/s throughput.
        """
        super().__init__()
        self.link_delay_ms = link_delay_ms
        self.client_ns = f"{self.tag}-c"
        self.router_ns = f"{self.tag}-r"
        self.server_ns = f"{self.tag}-s"
        self.client_ip = self.CLIENT_IP
        self.server_ip = self.SERVER_IP
        self.router_external_ip = self.ROUTER_EXTERNAL_IPS[0]
        self._range_idx = 0
        self.rebind_count = 0
        self._build_guarded()

    def _build(self) -> None:
        c, r, s = (self._add_ns(role) for role in ("c", "r", "s"))
        assert (c, r, s) == (self.client_ns, self.router_ns, self.server_ns)
        _veth(c, "rl-c", r, "rl-in")
        if self.link_delay_ms > 0:
            self._start_delay_line(r, "rl-ext", s, "rl-s", self.link_delay_ms / 1000.0)
        else:
            _veth(r, "rl-ext", s, "rl-s")
        self.ip(c, "addr", "add", f"{self.CLIENT_IP}/24", "dev", "rl-c")
        self.ip(r, "addr", "add", f"{self.ROUTER_INSIDE_IP}/24", "dev", "rl-in")
        for ext in self.ROUTER_EXTERNAL_IPS:
            self.ip(r, "addr", "add", f"{ext}/24", "dev", "rl-ext")
        self.ip(s, "addr", "add", f"{self.SERVER_IP}/24", "dev", "rl-s")
        for ns, dev in ((c, "rl-c"), (r, "rl-in"), (r, "rl-ext"), (s, "rl-s")):
            self.ip(ns, "link", "set", dev, "up")
        self.ip(c, "route", "add", "default", "via", self.ROUTER_INSIDE_IP)
        self.sh(r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self._apply_snat()

    def _apply_snat(self) -> None:
        r = self.router_ns
        to_source = f"{self.router_external_ip}:{_PORT_RANGES[self._range_idx]}"
        self.sh(r, "iptables", "-t", "nat", "-F", "POSTROUTING")
        self.sh(
            r,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "rl-ext",
            "-p",
            "udp",
            "-j",
            "SNAT",
            "--random-fully",
            "--to-source",
            to_source,
        )
        self.sh(
            r,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "rl-ext",
            "-j",
            "SNAT",
            "--to-source",
            self.router_external_ip,
        )

    def mappings(self) -> list[NatMapping]:
        """Current UDP NAT mappings of client flows (router conntrack table).

        Entries for packets addressed to the router itself (e.g. a server replying to a dead
        mapping) are left out.
        """
        proc = self.sh(self.router_ns, "conntrack", "-L", "-p", "udp", check=False)
        return [m for m in _parse_conntrack(proc.stdout) if m.client[0] == self.client_ip]

    def wait_mapping(
        self, client_port: int | None = None, timeout: float = 5.0
    ) -> NatMapping | None:
        """Poll until the client flow (any, or from client_port) has a NAT mapping, e.g. to
        learn the new external address after rebind() once the client has sent again."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.mappings():
                if client_port is None or m.client[1] == client_port:
                    return m
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _flush(self, old: list[NatMapping]) -> None:
        # conntrack -D exits 1 when nothing matched; that is fine.
        self.sh(self.router_ns, "conntrack", "-D", "-p", "udp", check=False)
        left = _parse_conntrack(
            self.sh(self.router_ns, "conntrack", "-L", "-p", "udp", check=False).stdout
        )
        # live traffic re-creates a mapping at once (on the new port range); only an old
        # mapping surviving the flush would be a failure
        survivors = [m for m in left if m in old]
        if survivors:
            raise NetnsError(f"conntrack flush left entries: {survivors}")

    def rebind(self) -> list[NatMapping]:
        """Force a NAT rebinding; returns the mappings that were dropped.

        Switches the SNAT port range and flushes UDP conntrack, so the client's next packet
        leaves with an external port that is guaranteed new. The old mapping is gone at
        once: packets sent to it draw ICMP port unreachable from the router.
        """
        return self._remap()

    def change_external_ip(self) -> list[NatMapping]:
        """Move the client behind the other external address (an 'address change with a new
        IP'); also switches port range. Returns the dropped mappings."""
        a, b = self.ROUTER_EXTERNAL_IPS
        return self._remap(new_ip=b if self.router_external_ip == a else a)

    def _remap(self, new_ip: str | None = None) -> list[NatMapping]:
        """Switch the SNAT port range (and maybe the external IP), then flush the mappings."""
        old = self.mappings()
        if new_ip is not None:
            self.router_external_ip = new_ip
        self._range_idx ^= 1
        self._apply_snat()
        self._flush(old)
        self.rebind_count += 1
        return old


class BottleneckTopology(_Topology):
    """a ns --veth-- router ns --veth-- b ns, the router's egress shaped by tbf.

    The shaper sits in the router, not in the sender's own stack: a qdisc on the sender's
    device would hold the sender's skbs against its SO_SNDBUF and turn queue overflow into
    sender blocking, whereas a real bottleneck drops. Here a->b traffic is shaped on the
    router's device toward b (and b->a toward a if both_directions).

    ``limit_packets`` sizes the tbf queue in packets of ``mtu`` bytes (a router-like buffer).
    ``link_delay_ms`` > 0 makes the router-b hop a TUN delay line (one-way delay each way;
    tbf still shapes its egress), giving a real bandwidth-delay product; the delay line
    itself forwards several hundred Mbit/s.
    """

    A_IP = "10.201.1.2"
    ROUTER_A_IP = "10.201.1.1"
    ROUTER_B_IP = "10.201.2.1"
    B_IP = "10.201.2.2"

    def __init__(
        self,
        rate: str = "50mbit",
        limit_packets: int = 100,
        *,
        mtu: int = 1500,
        burst_bytes: int | None = None,
        both_directions: bool = True,
        link_delay_ms: float = 0.0,
    ) -> None:
        super().__init__()
        self.link_delay_ms = link_delay_ms
        self.a_ns = f"{self.tag}-a"
        self.router_ns = f"{self.tag}-r"
        self.b_ns = f"{self.tag}-b"
        self.a_ip = self.A_IP
        self.b_ip = self.B_IP
        self.rate = rate
        self.limit_packets = limit_packets
        self.mtu = mtu
        self.burst_bytes = burst_bytes if burst_bytes is not None else 10 * (mtu + 14)
        self.both_directions = both_directions
        self._build_guarded()

    def _build(self) -> None:
        a, r, b = self._add_ns("a"), self._add_ns("r"), self._add_ns("b")
        _veth(a, "rl-a", r, "rl-ra")
        if self.link_delay_ms > 0:
            self._start_delay_line(r, "rl-rb", b, "rl-b", self.link_delay_ms / 1000.0)
        else:
            _veth(r, "rl-rb", b, "rl-b")
        for ns, dev, addr in (
            (a, "rl-a", self.A_IP),
            (r, "rl-ra", self.ROUTER_A_IP),
            (r, "rl-rb", self.ROUTER_B_IP),
            (b, "rl-b", self.B_IP),
        ):
            self.ip(ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(ns, "link", "set", dev, "mtu", str(self.mtu))
            self.ip(ns, "link", "set", dev, "up")
        self.ip(a, "route", "add", "default", "via", self.ROUTER_A_IP)
        self.ip(b, "route", "add", "default", "via", self.ROUTER_B_IP)
        self.sh(r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.set_rate(self.rate)

    def _shaped_devs(self) -> list[str]:
        return ["rl-rb", "rl-ra"] if self.both_directions else ["rl-rb"]

    def set_rate(self, rate: str, limit_packets: int | None = None) -> None:
        """(Re)apply the tbf shaper, e.g. to change the bottleneck mid-test."""
        self.rate = rate
        if limit_packets is not None:
            self.limit_packets = limit_packets
        limit = self.limit_packets * (self.mtu + 14)
        for dev in self._shaped_devs():
            tbf = ["rate", rate, "burst", str(self.burst_bytes), "limit", str(limit)]
            self.sh(self.router_ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", *tbf)

    def qdisc_stats(self, toward: str = "b") -> str:
        """`tc -s qdisc` output (sent/dropped/overlimits) of the shaper toward 'b' or 'a'."""
        dev = "rl-rb" if toward == "b" else "rl-ra"
        return self.sh(self.router_ns, "tc", "-s", "qdisc", "show", "dev", dev).stdout


# --- Delay line: two TUN devices in two namespaces, packets forwarded after a fixed delay ---

_DELAY_SRC = r"""
import collections, ctypes, fcntl, os, select, struct, sys, time
TUNSETIFF, IFF_TUN, IFF_NO_PI, CLONE_NEWNET = 0x400454CA, 0x0001, 0x1000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
def open_tun(ns, name):
    nsfd = os.open("/run/netns/" + ns, os.O_RDONLY)
    if libc.setns(nsfd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns " + ns)
    os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd
ns_a, dev_a, ns_b, dev_b, delay = sys.argv[1:5] + [float(sys.argv[5])]
fa = open_tun(ns_a, dev_a)
fb = open_tun(ns_b, dev_b)
print("ready", flush=True)
peer = {fa: fb, fb: fa}
q = collections.deque()
while True:
    now = time.monotonic()
    while q and q[0][0] <= now:
        _, out, pkt = q.popleft()
        try:
            os.write(out, pkt)
        except OSError:
            pass
    timeout = max(0.0, q[0][0] - now) if q else 1.0
    r, _, _ = select.select([fa, fb, sys.stdin], [], [], timeout)
    now = time.monotonic()
    for fd in r:
        if fd is sys.stdin:
            if not sys.stdin.readline():
                sys.exit(0)
            continue
        for _ in range(256):
            try:
                pkt = os.read(fd, 65535)
            except BlockingIOError:
                break
            q.append((now + delay, peer[fd], pkt))
"""

# --- UDP agent: a socket inside a namespace driven by JSON lines over stdin/stdout ---

_AGENT_SRC = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print(json.dumps({"bound": list(s.getsockname())}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    r = {"ok": True}
    try:
        if op == "send":
            s.sendto(cmd["data"].encode(), tuple(cmd["addr"]))
        elif op == "send_connected":
            s.send(cmd["data"].encode())
        elif op == "connect":
            s.connect(tuple(cmd["addr"]))
        elif op == "recv":
            s.settimeout(cmd["timeout"])
            d, a = s.recvfrom(65535)
            r = {"data": d.decode(), "addr": list(a)}
        elif op == "quit":
            break
    except socket.timeout:
        r = {"timeout": True}
    except OSError as e:
        r = {"errno": e.errno, "error": str(e)}
    print(json.dumps(r), flush=True)
"""


class UdpAgentError(RuntimeError):
    pass


class UdpAgent:
    """Controls one UDP socket in a namespace; each call is bounded by a timeout.

    Socket errors (e.g. ECONNREFUSED from an ICMP port unreachable) come back as
    ``{"errno": ..., "error": ...}`` dicts instead of exceptions so tests can assert on them.
    """

    def __init__(self, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
        self._proc = proc
        self._timeout = timeout
        hello = self._read(timeout)
        self.bound: tuple[str, int] = (hello["bound"][0], int(hello["bound"][1]))

    def _read(self, timeout: float) -> dict[str, Any]:
        out: IO[str] | None = self._proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            raise UdpAgentError(f"agent silent for {timeout}s")
        line = out.readline()
        if not line:
            raise UdpAgentError(f"agent exited (rc={self._proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def _call(self, extra_wait: float = 0.0, **cmd: Any) -> dict[str, Any]:
        inp = self._proc.stdin
        assert inp is not None
        inp.write(json.dumps(cmd) + "\n")
        inp.flush()
        return self._read(self._timeout + extra_wait)

    def send(self, addr: tuple[str, int], data: str) -> dict[str, Any]:
        return self._call(op="send", addr=list(addr), data=data)

    def connect(self, addr: tuple[str, int]) -> dict[str, Any]:
        return self._call(op="connect", addr=list(addr))

    def send_connected(self, data: str) -> dict[str, Any]:
        return self._call(op="send_connected", data=data)

    def recv(self, timeout: float = 2.0) -> tuple[str, tuple[str, int]] | None:
        """One datagram as (data, source address), or None on timeout.

        Raises UdpAgentError carrying the errno dict when the socket reports an error.
        """
        r = self._call(extra_wait=timeout, op="recv", timeout=timeout)
        if r.get("timeout"):
            return None
        if "errno" in r:
            raise UdpAgentError(json.dumps(r))
        return r["data"], (r["addr"][0], int(r["addr"][1]))

    def recv_raw(self, timeout: float = 2.0) -> dict[str, Any]:
        """Like recv but returns the agent's raw answer (data/addr, timeout or errno)."""
        return self._call(extra_wait=timeout, op="recv", timeout=timeout)

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._proc.stdin.flush()
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=3)
