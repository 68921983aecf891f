"""The handshake: SYN / SYN-ACK on Noise IK, version negotiation, refusals.

The client sends a SYN (long header, destination CID empty -- or the token of a listener's
RETRY -- and its own CID as source) carrying
Noise message 1: its ephemeral key, its encrypted static key and an encrypted payload (a
timestamp, its credit, 0-RTT data), padded to the full datagram size and ending in ``mac1``.
The server answers with a SYN-ACK carrying Noise message 2: its ephemeral key and an encrypted
payload (its CID, a stateless-reset token, whether the 0-RTT data was accepted, its credit,
spare CIDs, early response data). Both are built once and resent byte for byte when lost (a
Noise message cannot be encrypted again under the same keys), so they carry no packet number;
the stream data they carry counts as delivered when the handshake completes. The server
completes on the client's first authenticated short-header packet.

Without a pinned server key the client first asks for it (KEY_REQUEST -> REJECT carrying the
key: trust on first use, one more round trip). A server that cannot take a SYN answers with a
REJECT (unauthenticated: it can only make the handshake fail, never downgrade it): a SYN whose
``mac1`` does not verify (the client pinned another key) gets the server's real key, so the
client fails at once with ``HandshakeFailed("server_key_mismatch")``; a plaintext SYN at a
secure server, or the reverse, fails with ``"plaintext_mismatch"``. A client the server does
not authorise gets a genuine SYN-ACK flagged "refused" and fails with
``"client_not_authorized"``.

A listener under SYN pressure keeps no state for a SYN without a token: it answers with a
RETRY carrying a token sealed under its own secret (the client's address and CID, a time), and
the client builds its SYN again with that token as destination CID (one more round trip, once
per handshake). A listener at ``Config.max_connections`` answers with REJECT "busy": the client
fails at once with :class:`~roamlink.errors.ConnectionRefused`.

A server that does not speak the client's version answers with a version-negotiation packet;
the client then retries with the best version both speak, or gives up with
:class:`~roamlink.errors.VersionMismatch`. Crypto is in :mod:`roamlink.crypto`; the socket
layer (``io/dispatcher.py``) checks ``mac1`` and opens the SYN before a server connection
exists.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Final

from ..crypto import handshake as hs
from ..crypto.noise import private_key
from ..crypto.packet_protection import PacketProtection
from ..crypto.replay import ReplayVerdict
from ..errors import ConnectionRefused, HandshakeFailed, RoamlinkError, VersionMismatch
from . import wire
from .events import Address
from .states import State, Trigger

#: ICMP port-unreachable reports that fail a handshake in progress (the SYN and two
#: retransmissions: about a second), see :func:`on_unreachable`
REFUSALS_TO_FAIL: Final = 3

if TYPE_CHECKING:
    from .connection import Connection


class LongHeaderVerdict(Enum):
    DROP = "drop"  # not for this connection (or a version we do not speak)
    ACCEPT = "accept"  # process it (a repeated SYN-ACK: acknowledge again)
    SERVER_HELLO = "server hello"  # client: the SYN-ACK that completes the handshake
    CLIENT_HELLO = "client hello"  # server: the SYN (first or repeated)
    REJECT = "reject"  # client: the server refused or told us its key


class VersionVerdict(Enum):
    IGNORE = "ignore"  # stale, forged or not for us
    RETRY = "retry"  # retry the handshake with ``Handshake.version``
    FAIL = "fail"  # no version in common


def encode_key(raw: bytes) -> str:
    """A public key as users see it: base64 of its 32 bytes (WireGuard style)."""
    return base64.b64encode(raw).decode("ascii")


class Handshake:
    """The version in use, the versions left to try, whether SYN/SYN-ACK is owed, and the
    cryptographic half of the handshake (None with ``insecure_plaintext``)."""

    __slots__ = ("client", "early_accepted", "first_sent", "is_client", "offered", "packet",
                 "peer_key", "pending", "pinned", "plaintext", "server", "server_crypto",
                 "syn_frames", "syn_stream", "times_sent", "token", "version")

    def __init__(self, is_client: bool, versions: tuple[int, ...], version: int, *,
                 plaintext: bool = False, client: hs.ClientHandshake | None = None,
                 opened: hs.OpenedSyn | None = None,
                 server_crypto: hs.ServerCrypto | None = None) -> None:
        self.is_client = is_client
        self.version = version
        self.offered = list(versions)
        self.pending = True  # SYN / SYN-ACK must be (re)sent
        #: the listener's RETRY token: our SYN repeats it as its destination CID
        self.token = b""
        self.plaintext = plaintext
        self.client = client
        self.pinned = client is not None and client.server_key is not None
        self.server = (hs.ServerHandshake(opened) if opened is not None
                       and opened.state is not None else None)
        self.server_crypto = server_crypto
        #: the SYN or SYN-ACK datagram, built once and resent byte for byte
        self.packet: bytes | None = None
        self.syn_stream: list[tuple[int, int, bool]] = []  # stream ranges it carries
        self.times_sent = 0
        self.first_sent = 0.0
        #: server: the SYN's frames, applied once; whether its 0-RTT data was taken
        self.syn_frames: bytes | None = opened.frames if opened is not None else None
        self.early_accepted = opened is not None and opened.verdict is ReplayVerdict.FRESH
        #: the peer's static public key (raw), once known
        self.peer_key: bytes | None = None
        if opened is not None and opened.client_key:
            self.peer_key = opened.client_key
        elif client is not None:
            self.peer_key = client.server_key

    def __repr__(self) -> str:
        return f"Handshake(version={self.version}, plaintext={self.plaintext})"

    # ------------------------------------------------------------------ classification
    def accept_long_header(self, hdr: wire.LongHeader, local_cid: bytes, peer_cid: bytes,
                           handshaking: bool) -> LongHeaderVerdict:
        """Whether a long-header packet belongs to this connection, and what it is."""
        kind = hdr.packet_type
        if self.is_client:
            if hdr.dcid != local_cid:
                return LongHeaderVerdict.DROP
            if kind == wire.REJECT:
                return LongHeaderVerdict.REJECT if handshaking else LongHeaderVerdict.DROP
            if hdr.version != self.version:
                return LongHeaderVerdict.DROP
            if kind != (wire.PLAIN_SYN_ACK if self.plaintext else wire.SYN_ACK):
                return LongHeaderVerdict.DROP
            if handshaking:
                # an empty CID: a refusal (checked, authenticated, in on_server_hello)
                if hdr.scid and not 8 <= len(hdr.scid) <= wire.MAX_CID_LENGTH:
                    raise wire.MalformedPacket("bad server CID")
                return LongHeaderVerdict.SERVER_HELLO
            return LongHeaderVerdict.ACCEPT
        if hdr.version != self.version or hdr.scid != peer_cid:
            return LongHeaderVerdict.DROP
        if kind != (wire.PLAIN_SYN if self.plaintext else wire.SYN):
            return LongHeaderVerdict.DROP
        return LongHeaderVerdict.CLIENT_HELLO

    def on_version_negotiation(self, hdr: wire.LongHeader, data: bytes, local_cid: bytes,
                               handshaking: bool) -> tuple[VersionVerdict, tuple[int, ...]]:
        """The server listed the versions it speaks: ``(verdict, that list)``."""
        if not self.is_client or not handshaking or hdr.dcid != local_cid:
            return VersionVerdict.IGNORE, ()
        supported = wire.decode_versions(data, hdr.payload_offset)
        if self.version in supported:
            return VersionVerdict.IGNORE, supported  # stale or forged: our version is fine
        self.offered = [v for v in self.offered if v != self.version]
        common = [v for v in self.offered if v in supported]
        if not common:
            return VersionVerdict.FAIL, supported
        self.version = common[0]  # the caller builds the SYN again (_restart_syn)
        return VersionVerdict.RETRY, supported


# ---------------------------------------------------------------------- building
def build_client_hello(conn: Connection, now: float) -> bytes:
    """The SYN (or, without a server key yet, the KEY_REQUEST), resent byte for byte."""
    handshake = conn.handshake
    packets = conn.packets
    mtu = conn.config.max_datagram_size
    client = handshake.client
    if handshake.packet is None:
        if client is not None and client.server_key is None:
            header = wire.encode_long_header(wire.KEY_REQUEST, handshake.version,
                                             handshake.token, conn.local_cid)
            datagram = header + bytes(mtu - len(header))  # padded: the answer is smaller
            packets.record_handshake(datagram, [], now)
            return datagram
        kind = wire.PLAIN_SYN if handshake.plaintext else wire.SYN
        header = wire.encode_long_header(kind, handshake.version, handshake.token,
                                         conn.local_cid)
        overhead = 0 if client is None else hs.SYN_OVERHEAD
        room = mtu - len(header) - overhead - 8
        frames, stream = packets.handshake_frames([], room, now, pad=True)
        payload = hs.encode_syn_payload(time.time(), frames)
        try:
            datagram = (header + payload if client is None
                        else client.seal_syn(header, payload))
        except hs.HandshakeError as exc:
            raise HandshakeFailed(f"cannot start the handshake: {exc}") from None
        handshake.packet = datagram
        handshake.syn_stream = stream
    return _transmit(conn, now)


def build_server_hello(conn: Connection, now: float) -> bytes:
    """The SYN-ACK, sealed once (that also gives the traffic keys), resent byte for byte."""
    handshake = conn.handshake
    packets = conn.packets
    if handshake.packet is None:
        kind = wire.PLAIN_SYN_ACK if handshake.plaintext else wire.SYN_ACK
        header = wire.encode_long_header(kind, handshake.version, conn.peer_cid,
                                         conn.local_cid)
        overhead = 0 if handshake.server is None else hs.SYN_ACK_OVERHEAD
        room = (conn.config.max_datagram_size - len(header) - overhead - 2
                - len(conn.local_cid) - wire.RESET_TOKEN_LENGTH)
        cids = conn.cids
        spare: list[wire.Frame] = [wire.NewConnectionIdFrame(seq, 0, cid, cids.reset_token(cid))
                                   for seq, cid in cids.local.items() if seq]
        frames, stream = packets.handshake_frames(spare, room, now, pad=False)
        flags = hs.EARLY_DATA_ACCEPTED if handshake.early_accepted else 0
        token = cids.reset_token(conn.local_cid)
        payload = hs.encode_syn_ack_payload(flags, conn.local_cid, token, frames)
        server = handshake.server
        if server is None:
            datagram = header + payload
        else:
            datagram = server.seal_syn_ack(header, payload)
            send, recv = server.traffic_keys()
            conn.packets.set_protection(PacketProtection(send, recv))
        handshake.packet = datagram
        handshake.syn_stream = stream
    return _transmit(conn, now)


def _transmit(conn: Connection, now: float) -> bytes:
    """One transmission of the SYN or SYN-ACK built before: recorded for loss recovery and
    counted (a single transmission gives the first RTT sample)."""
    handshake = conn.handshake
    datagram = handshake.packet
    assert datagram is not None
    conn.packets.record_handshake(datagram, handshake.syn_stream, now)
    if handshake.times_sent == 0:
        handshake.first_sent = now
    handshake.times_sent += 1
    return datagram


def _restart_syn(conn: Connection, now: float) -> None:
    """The SYN in flight will never be answered (a RETRY, or another version): build it again
    (the prologue binds the header, which changed), with what the old one carried (0-RTT data);
    its round trip gives the first RTT sample."""
    handshake = conn.handshake
    handshake.packet = None
    handshake.pending = True
    resolve_handshake_packets(conn, False, now)
    handshake.times_sent = 0


# ---------------------------------------------------------------------- receiving
def on_server_hello(conn: Connection, hdr: wire.LongHeader, data: bytes, now: float) -> bytes:
    """Client: open the SYN-ACK, install the traffic keys; return the frames it carried.

    Raises :class:`HandshakeFailed` when it does not authenticate or refuses us."""
    handshake = conn.handshake
    client = handshake.client
    if client is None:
        payload = hs.decode_syn_ack_payload(data[hdr.payload_offset:])
    else:
        try:
            payload = client.open_syn_ack(data, hdr.payload_offset)
        except hs.HandshakeError:
            raise HandshakeFailed("the server's SYN-ACK did not authenticate (pre-shared key "
                                  "mismatch, or a forged answer)") from None
        if payload.refused:
            raise HandshakeFailed(
                f"the server does not authorise this client's key "
                f"{encode_key(client.static_public)}", reason="client_not_authorized")
    if payload.server_cid != hdr.scid or len(hdr.scid) < 8:
        raise HandshakeFailed("the SYN-ACK's clear CID differs from its authenticated one")
    if client is not None:
        send, recv = client.traffic_keys()
        conn.packets.set_protection(PacketProtection(send, recv))
    conn.cids.set_handshake_peer_cid(hdr.scid, payload.reset_token)
    handshake.pending = False
    resolve_handshake_packets(conn, payload.early_data_accepted, now)
    return payload.frames


def on_retry(conn: Connection, hdr: wire.LongHeader, now: float) -> bool:
    """Client: a RETRY from a listener under load. Take its token (once per handshake, as in
    QUIC, so a forged RETRY cannot keep us looping) and build the SYN again with the token as
    destination CID: the Noise prologue binds the clear header, so the old SYN cannot be
    reused. What the old SYN carried (0-RTT data) goes in the new one."""
    handshake = conn.handshake
    if (not handshake.is_client or handshake.token or hdr.dcid != conn.local_cid
            or hdr.version != handshake.version
            or not 1 <= len(hdr.scid) <= wire.MAX_CID_LENGTH):
        return False
    handshake.token = hdr.scid
    _restart_syn(conn, now)
    return True


def on_reject(conn: Connection, data: bytes, hdr: wire.LongHeader) -> RoamlinkError | None:
    """Client: a REJECT arrived. Returns the error to fail with, or None (key learnt)."""
    handshake = conn.handshake
    try:
        reason, key = hs.decode_reject(data[hdr.payload_offset:])
    except hs.HandshakeError:
        raise wire.MalformedPacket("malformed REJECT") from None
    if reason == hs.REJECT_BUSY:
        host, port = conn.remote_addr[0], conn.remote_addr[1]
        return ConnectionRefused(f"{host}:{port} refused the connection: "
                                 f"{hs.REJECT_REASONS[reason]}")
    client = handshake.client
    if reason == hs.REJECT_NEED_ENCRYPTION and handshake.plaintext:
        return HandshakeFailed(hs.REJECT_REASONS[reason], reason="plaintext_mismatch")
    if reason == hs.REJECT_PLAINTEXT_ONLY and not handshake.plaintext:
        return HandshakeFailed(hs.REJECT_REASONS[reason], reason="plaintext_mismatch")
    if client is None or not key:
        return None
    if reason == hs.REJECT_HANDSHAKE_FAILED:
        return HandshakeFailed(hs.REJECT_REASONS[reason])
    if client.server_key is None:
        # trust on first use: learn the key, then run the real handshake
        client.server_key = key
        handshake.peer_key = key
        handshake.packet = None
        handshake.pending = True
        conn.recovery.take_handshake_packets()  # the KEY_REQUEST is answered
        return None
    if key != client.server_key and (handshake.pinned or reason == hs.REJECT_UNKNOWN_KEY):
        return HandshakeFailed(
            f"the server at {conn.remote_addr[0]}:{conn.remote_addr[1]} has key "
            f"{encode_key(key)}, not the expected {encode_key(client.server_key)}",
            reason="server_key_mismatch")
    return None


def on_client_hello(conn: Connection, data: bytes, hdr: wire.LongHeader, handshaking: bool,
                    socket_id: int, addr: Address) -> bytes | None:
    """Server: the SYN's frames the first time (None afterwards: a repeated SYN, whose
    SYN-ACK is re-armed when it is the same SYN)."""
    handshake = conn.handshake
    frames = handshake.syn_frames
    if frames is not None:
        handshake.syn_frames = None
        return frames
    server = handshake.server
    same = (server is None
            or data[hdr.payload_offset:hdr.payload_offset + 32] == server.ephemeral)
    if same and handshaking:
        handshake.pending = True  # our SYN-ACK was lost
        paths = conn.paths
        if not paths.is_current(socket_id, addr):
            # the same SYN from a new address: the client's NAT re-mapped it while it waited
            # for our SYN-ACK, which must go to where the client is now (a copy replayed
            # from elsewhere gains nothing: the SYN-ACK opens only with the client's keys)
            old = paths.remote_addr
            paths.socket_id, paths.remote_addr = socket_id, addr
            conn.addr_changes.append((old, addr))
    return None


def resolve_handshake_packets(conn: Connection, delivered: bool, now: float) -> None:
    """The handshake completed: the SYN (or SYN-ACK) copies in flight are done.

    Their stream data was delivered (or, for 0-RTT data the server did not take, is queued
    again); one transmission without a repeat gives the first RTT sample.
    """
    handshake = conn.handshake
    send_buf = conn.send_buf
    for pkt in conn.recovery.take_handshake_packets():
        for offset, length, fin in pkt.stream:
            if delivered:
                send_buf.on_acked(offset, length, fin)
            else:
                send_buf.on_lost(offset, length, fin)
    if handshake.times_sent == 1:
        conn.rtt.update(max(now - handshake.first_sent, 1e-6), 0.0)


# ---------------------------------------------------------------------- the handshake's packets
def receive_long(conn: Connection, data: bytes, addr: Address, now: float, socket_id: int) -> None:
    """SYN, SYN-ACK, REJECT, version negotiation: the handshake's packets."""
    hdr = wire.decode_long_header(data)
    if hdr.packet_type == wire.VERSION_NEGOTIATION:
        _on_version_negotiation(conn, hdr, data, now)
        return
    if hdr.packet_type == wire.RETRY:
        _on_retry_packet(conn, hdr, now)
        return
    handshaking = conn.state is State.HANDSHAKING
    handshake = conn.handshake
    verdict = handshake.accept_long_header(hdr, conn.local_cid, conn.peer_cid, handshaking)
    if verdict is LongHeaderVerdict.DROP:
        conn.counters.dropped_packets += 1
        return
    counters = conn.counters
    if verdict is LongHeaderVerdict.REJECT:
        err = on_reject(conn, data, hdr)
        if err is not None:
            conn.log.info("handshake refused: %s", err)
            conn._terminate(err, Trigger.TIMEOUT)
        return
    if verdict is LongHeaderVerdict.SERVER_HELLO:
        try:
            frames = on_server_hello(conn, hdr, data, now)
        except HandshakeFailed as err:
            conn.log.info("handshake failed: %s", err)
            conn._terminate(err, Trigger.TIMEOUT)
            return
        conn.peer_cid = hdr.scid
        conn._complete_handshake(now)
        counters.packets_received += 1
        counters.bytes_received += len(data)
        conn._last_received = now
        # the SYN-ACK counts as the server's packet 0: acknowledging it at once is what
        # completes the handshake on the server's side
        conn.acks.record(0, now, True)
        conn.acks.on_ack_eliciting(now, True)
        _handshake_frames(conn, frames, socket_id, addr, now, True)
        return
    if verdict is LongHeaderVerdict.CLIENT_HELLO:
        syn_frames = on_client_hello(conn, data, hdr, handshaking, socket_id, addr)
        if syn_frames is not None:
            counters.packets_received += 1
            counters.bytes_received += len(data)
            _handshake_frames(conn, syn_frames, socket_id, addr, now, handshake.early_accepted)
        else:
            counters.duplicate_packets += 1
            counters.bytes_received += len(data)  # anti-amplification budget
            if handshaking:
                # a retransmitted SYN: the client is alive, keep the half-open state a while
                conn.handshake_deadline = max(conn.handshake_deadline,
                                              now + conn.handshake_lifetime)
        return
    # a repeated SYN-ACK after we completed: our acknowledgement was lost
    counters.duplicate_packets += 1
    conn.acks.pending = True


def _handshake_frames(conn: Connection, payload: bytes, socket_id: int, addr: Address, now: float,
                      take_data: bool) -> None:
    """Apply the frames of a SYN or SYN-ACK payload (authenticated with it).

    ``take_data`` False: 0-RTT data the server did not accept (outside the replay
    window) is skipped; the client sends it again after the handshake."""
    for frame in wire.decode_frames(payload):
        if isinstance(frame, wire.PushFrame):
            if take_data:
                conn._on_push(frame)
            continue
        if isinstance(frame, wire.AckFrame):
            continue  # handshake packets carry no packet numbers to acknowledge
        conn._on_frame(frame, socket_id, addr, now)


def _on_version_negotiation(conn: Connection, hdr: wire.LongHeader, data: bytes,
                            now: float) -> None:
    handshake = conn.handshake
    refused = handshake.version
    verdict, supported = handshake.on_version_negotiation(
        hdr, data, conn.local_cid, conn.state is State.HANDSHAKING)
    if verdict is VersionVerdict.RETRY:
        conn.log.info("version %d refused; retrying with %d", refused, handshake.version)
        _restart_syn(conn, now)
    elif verdict is VersionVerdict.FAIL:
        conn._terminate(VersionMismatch(tuple(conn.config.versions), supported),
                        Trigger.TIMEOUT)


def _on_retry_packet(conn: Connection, hdr: wire.LongHeader, now: float) -> None:
    if conn.state is not State.HANDSHAKING or not on_retry(conn, hdr, now):
        conn.counters.dropped_packets += 1
        return
    conn.counters.handshake_retries += 1  # one extra round trip
    conn.log.info("listener under load asked for a retry: repeating the SYN with its token")


def on_unreachable(conn: Connection, now: float) -> None:
    """The socket layer reports ICMP port unreachable from our peer's address.

    ICMP is not authenticated and an established connection may be roaming through
    NATs whose stale mappings draw such errors, so it is ignored except while a client
    waits for its SYN-ACK: then, after ``REFUSALS_TO_FAIL`` refusals (the SYN and its
    retransmissions, about a second), nothing listens there and the connection fails
    with :class:`ConnectionRefused` instead of waiting out ``connect_timeout``.
    """
    if not conn.is_client or conn.state is not State.HANDSHAKING:
        return
    conn.refusals += 1
    if conn.refusals >= REFUSALS_TO_FAIL:
        conn._terminate(ConnectionRefused(
            f"{conn.remote_addr} refused the connection (ICMP port unreachable "
            f"{conn.refusals} times: nothing listens there)"), Trigger.TIMEOUT)


# ---------------------------------------------------------------------- helpers
def make_client_handshake(config_psk: bytes | None, server_key: bytes | None,
                     client_key: bytes | None,
                     random_bytes: Callable[[int], bytes] = os.urandom) -> hs.ClientHandshake:
    """A client's handshake state: its static key (a fresh one when none is given)."""
    static = private_key(client_key if client_key is not None else random_bytes(32))
    return hs.ClientHandshake(static, server_key, config_psk)
