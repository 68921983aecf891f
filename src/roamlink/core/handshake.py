"""Handshake acceptance and version negotiation.

The client sends SYN (long header, destination CID empty, its own CID as source) and repeats
it until a SYN-ACK from the server arrives; the server answers every (re)transmitted SYN with
a SYN-ACK until the client's first short-header packet shows it learnt the server's CID. A
server that does not speak the client's version answers with a version-negotiation packet;
the client then retries with the best version both speak, or gives up with
:class:`~roamlink.errors.VersionMismatch`.

Packet building (SYN, SYN-ACK) is in :mod:`.packet_builder`; the socket layer sends the
version-negotiation packet (see ``io/dispatcher.py``).
"""

from __future__ import annotations

from enum import Enum

from . import wire


class LongHeaderVerdict(Enum):
    DROP = "drop"  # not for this connection (or a version we do not speak)
    ACCEPT = "accept"  # process its frames
    SERVER_HELLO = "server hello"  # client: the SYN-ACK that completes the handshake


class VersionVerdict(Enum):
    IGNORE = "ignore"  # stale, forged or not for us
    RETRY = "retry"  # retry the handshake with ``Handshake.version``
    FAIL = "fail"  # no version in common


class Handshake:
    """The version in use, the versions left to try, and whether SYN/SYN-ACK is owed."""

    __slots__ = ("is_client", "version", "offered", "pending", "token")

    def __init__(self, is_client: bool, versions: tuple[int, ...], version: int) -> None:
        self.is_client = is_client
        self.version = version
        self.offered = list(versions)
        self.pending = True  # SYN / SYN-ACK must be (re)sent
        #: the listener's RETRY token: our SYN repeats it as its destination CID
        self.token = b""

    def on_retry(self, hdr: wire.LongHeader, local_cid: bytes, handshaking: bool) -> bool:
        """A RETRY from a listener under load: take its token (once per handshake, as in
        QUIC, so a forged RETRY cannot keep us looping) and repeat the SYN with it."""
        if (not self.is_client or not handshaking or self.token or hdr.dcid != local_cid
                or hdr.version != self.version or not 1 <= len(hdr.scid) <= wire.MAX_CID_LENGTH):
            return False
        self.token = hdr.scid
        self.pending = True
        return True

    def accept_long_header(self, hdr: wire.LongHeader, local_cid: bytes, peer_cid: bytes,
                           handshaking: bool) -> LongHeaderVerdict:
        """Whether a SYN or SYN-ACK belongs to this connection."""
        if hdr.version != self.version:
            return LongHeaderVerdict.DROP
        if self.is_client:
            if hdr.packet_type != wire.SYN_ACK or hdr.dcid != local_cid:
                return LongHeaderVerdict.DROP
            if handshaking:
                if not 8 <= len(hdr.scid) <= wire.MAX_CID_LENGTH:
                    raise wire.MalformedPacket("bad server CID")
                self.pending = False
                return LongHeaderVerdict.SERVER_HELLO
            return LongHeaderVerdict.ACCEPT
        if hdr.packet_type != wire.SYN or hdr.scid != peer_cid:
            return LongHeaderVerdict.DROP
        if handshaking:
            self.pending = True  # a retransmitted SYN: our SYN-ACK was lost
        return LongHeaderVerdict.ACCEPT

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
        self.version = common[0]
        self.pending = True
        return VersionVerdict.RETRY, supported
