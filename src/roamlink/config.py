"""One validated configuration object for every tunable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from .core.congestion import CONTROLLERS
from .errors import ConfigError

#: The wire version this implementation speaks (2: encrypted, RFC 8999 headers; 1 had neither
#: and is answered with version negotiation).
PROTOCOL_VERSION = 2


@dataclass(frozen=True)
class Config:
    """Every tunable of an endpoint; invalid values raise :class:`ConfigError`.

    Times are in seconds, sizes in bytes.
    """

    #: Largest UDP payload sent; 1200 fits every path that carries IPv6.
    max_datagram_size: int = 1200
    #: Length of the connection IDs this endpoint issues (>= 8 resists guessing).
    cid_length: int = 8
    #: This server's id, carried in every CID it issues (QUIC-LB plaintext style) so a load
    #: balancer in front of several servers can route by CID; None: no server id in CIDs.
    server_id: int | None = None
    #: Bytes of the server id in a CID (1..6).
    server_id_length: int = 1
    #: Protocol versions offered (client) or accepted (server), most preferred first.
    versions: tuple[int, ...] = (PROTOCOL_VERSION,)
    #: Give up a handshake after this long.
    connect_timeout: float = 10.0
    #: Close a connection when nothing was received for this long (0 disables).
    idle_timeout: float = 30.0
    #: Send a PING when nothing was sent for this long (None disables). On by default: it
    #: keeps NAT mappings alive, and it is how a peer whose NAT re-mapped it while it had
    #: nothing to send gets found again.
    keepalive_interval: float | None = 15.0
    #: How long a closed connection's IDs stay reserved so late packets are ignored.
    draining_period: float = 3.0
    #: After ``close()``, how long to wait for the peer's FIN before aborting.
    close_timeout: float = 10.0
    #: Longest the receiver delays an ACK; the sender adds it to its timeout.
    max_ack_delay: float = 0.025
    #: Acknowledge at once after this many ack-eliciting packets (otherwise within
    #: ``max_ack_delay``). An ACK owed for stream data rides on any data packet sent meanwhile; the
    #: socket layer sends one ACK per batch of datagrams read in one wake-up, so at high rates
    #: a receiver acknowledges once per batch rather than once per ``ack_every`` packets.
    ack_every: int = 2
    #: RTT assumed before the first sample.
    initial_rtt: float = 0.1
    #: Bounds of the retransmission timeout.
    min_rto: float = 0.05
    max_rto: float = 10.0
    #: Receive window: bytes the peer may send beyond what the application read.
    receive_window: int = 4 * 1024 * 1024
    #: ``drain()`` blocks while more than this many bytes are buffered to send.
    send_buffer_size: int = 4 * 1024 * 1024
    #: Congestion controller, by name (see roamlink.core.congestion.CONTROLLERS): "bbr"
    #: (model-based, the default), "vegas" (delay-based) or "newreno" (loss-based).
    congestion_control: str = "bbr"
    #: Initial congestion window, in full-size packets.
    initial_window_packets: int = 32
    #: Pace sends over the RTT instead of bursting the whole window.
    pacing: bool = True
    #: How long a path validation may take before it fails.
    path_validation_timeout: float = 3.0
    #: Maximum candidate paths validated at once (bounds spoofing floods).
    max_candidate_paths: int = 3
    #: Spare connection IDs offered to the peer for migration.
    spare_cids: int = 4
    #: Batch datagrams through the kernel with UDP GSO/GRO where the platform has them (Linux);
    #: False forces one system call per datagram (so does ROAMLINK_UDP_OFFLOAD=0).
    udp_offload: bool = True
    #: Established connections a listener queues for ``accept()`` before refusing new ones
    #: (handshakes still in progress do not count: they have their own bounds below).
    backlog: int = 1024
    #: Live connections a listener holds at most (0: no limit); a client beyond it is
    #: refused at once (``ConnectionRefused``), not left to time out.
    max_connections: int = 0
    #: Handshakes a listener keeps half-open at once (a SYN flood fills this, never the
    #: backlog); SYNs beyond it are dropped (or answered with RETRY, see retry_threshold).
    max_half_open: int = 1024
    #: Half-open handshakes from one source IP address at once (SYNs whose address a
    #: RETRY token proved are not limited per source, only by max_half_open).
    max_half_open_per_source: int = 64
    #: How long a listener under SYN pressure (half of retry_threshold, or a quarter of
    #: max_half_open, pending) keeps a half-open handshake (each retransmitted SYN renews
    #: it): ten initial RTTs, not ``connect_timeout``, so forged SYNs cannot hold its
    #: memory for long.
    half_open_timeout: float = 1.0
    #: With this many half-open handshakes pending, a listener answers a SYN that carries no
    #: token with a stateless RETRY (the client repeats its SYN with the token: one more
    #: round trip) instead of keeping state for it. 0: always; None: never.
    retry_threshold: int | None = 64
    #: Run WITHOUT encryption or authentication (debugging and comparison only). Both ends
    #: must set it: a secure endpoint refuses a plaintext one, and the reverse, with
    #: ``HandshakeFailed`` -- neither ever falls back to the other's mode.
    insecure_plaintext: bool = False
    #: Optional 32-byte pre-shared key (Noise IKpsk2): both ends must hold the same one.
    psk: bytes | None = field(default=None, repr=False)  # a secret: never in repr or logs
    #: New traffic keys (Noise REKEY) after this many seconds ...
    key_update_interval: float = 120.0
    #: ... or after this many packets under one key, whichever comes first.
    key_update_packets: int = 1 << 30
    #: A SYN's 0-RTT data is delivered only if its timestamp is within this many seconds of
    #: the server's clock (and its ephemeral key was not seen before): the replay window.
    zero_rtt_window: float = 60.0

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.max_datagram_size >= 1200 and self.max_datagram_size <= 65507,
               "max_datagram_size", "must be between 1200 and 65507")
        _check(8 <= self.cid_length <= 20, "cid_length", "must be between 8 and 20")
        _check(1 <= self.server_id_length <= 6, "server_id_length", "must be between 1 and 6")
        _check(self.server_id is None or (
            isinstance(self.server_id, int) and not isinstance(self.server_id, bool)
            and 0 <= self.server_id < 256 ** self.server_id_length),
            "server_id", "must be None or an integer that fits in server_id_length bytes")
        _check(self.server_id is None or self.cid_length >= self.server_id_length + 6,
               "cid_length", "must leave the first octet, the worker byte and a 4-byte nonce "
               "beside the server id (cid_length >= server_id_length + 6)")
        _check(isinstance(self.versions, tuple) and len(self.versions) > 0
               and all(isinstance(v, int) and 0 < v < 2**32 for v in self.versions),
               "versions", "must be a non-empty tuple of 32-bit non-zero integers")
        _positive(self, "connect_timeout", "draining_period", "close_timeout", "initial_rtt",
                  "min_rto", "path_validation_timeout")
        _check(self.idle_timeout >= 0, "idle_timeout", "must be >= 0 (0 disables)")
        _check(self.keepalive_interval is None or self.keepalive_interval > 0,
               "keepalive_interval", "must be None or > 0")
        _check(0 <= self.max_ack_delay <= 1.0, "max_ack_delay", "must be between 0 and 1 s")
        _check(self.ack_every >= 1, "ack_every", "must be >= 1")
        _check(self.max_rto >= self.min_rto, "max_rto", "must be >= min_rto")
        _check(self.receive_window >= 16384, "receive_window", "must be >= 16384")
        _check(self.send_buffer_size >= 1, "send_buffer_size", "must be >= 1")
        _check(self.congestion_control in CONTROLLERS, "congestion_control",
               f"must be one of {', '.join(CONTROLLERS)}")
        _check(self.initial_window_packets >= 2, "initial_window_packets", "must be >= 2")
        _check(1 <= self.max_candidate_paths <= 16, "max_candidate_paths",
               "must be between 1 and 16")
        _check(1 <= self.spare_cids <= 16, "spare_cids", "must be between 1 and 16")
        _check(self.backlog >= 1, "backlog", "must be >= 1")
        _check(self.max_connections >= 0, "max_connections", "must be >= 0 (0: no limit)")
        _check(self.max_half_open >= 1, "max_half_open", "must be >= 1")
        _check(self.max_half_open_per_source >= 1, "max_half_open_per_source", "must be >= 1")
        _positive(self, "half_open_timeout")
        _check(self.retry_threshold is None or (isinstance(self.retry_threshold, int)
                                                and not isinstance(self.retry_threshold, bool)
                                                and self.retry_threshold >= 0),
               "retry_threshold", "must be None (never) or an integer >= 0 (0: always)")
        _check(self.psk is None or (isinstance(self.psk, bytes) and len(self.psk) == 32),
               "psk", "must be None or 32 bytes")
        _positive(self, "key_update_interval", "zero_rtt_window")
        _check(self.key_update_packets >= 16, "key_update_packets", "must be >= 16")

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Config:
        """Build from a plain mapping (e.g. parsed TOML); unknown keys are rejected by name."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, "unknown configuration key")
        data = dict(values)
        if "versions" in data and isinstance(data["versions"], list):
            data["versions"] = tuple(data["versions"])
        try:
            return cls(**data)
        except TypeError as exc:  # wrong type reached a comparison
            raise ConfigError("config", str(exc)) from exc


def _check_types(cfg: Config) -> None:
    """Reject wrongly typed values by name before any comparison can raise TypeError."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = str(f.type)
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "float | None":
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "str":
            ok = isinstance(value, str)
        else:
            ok = True
        _check(ok, f.name, f"must be of type {kind}, got {type(value).__name__}")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(name, message)


def _positive(cfg: Config, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        _check(isinstance(value, (int, float)) and value > 0, name, "must be > 0")
