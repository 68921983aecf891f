"""Wire format: packet headers, frames and their codec (see docs/wire-format.md).

Every datagram holds one packet. Its first byte is the packet type. Handshake packets carry a
long header (version and both connection IDs); data packets carry a short header (the
receiver's connection ID and a 64-bit packet number that never wraps). A packet's payload is a
sequence of frames, so data, ACKs and control messages are coalesced into one datagram.

Decoding never trusts the input: any inconsistency raises :class:`MalformedPacket`, which the
receive path counts and drops.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

# --- packet types (first byte) ---------------------------------------------------------------
# Headers follow the QUIC invariants (RFC 8999): the first bit set marks a long header (then the
# 32-bit version and length-prefixed destination and source CIDs), the first bit clear a short
# header (the destination CID from byte 1). The second bit, the "fixed bit", is set in every
# packet roamlink sends: load balancers and the CID-steering filter classify a short header as
# ``first & 0xC0 == 0x40``.
LONG_FORM: Final = 0x80
FIXED_BIT: Final = 0x40
LONG_TYPE_MASK: Final = 0x3F
# long-header packet types (``first & 0x3F``)
SYN: Final = 0x01            # Noise message 1 (sealed), padded, with mac1
SYN_ACK: Final = 0x02        # Noise message 2 (sealed)
RETRY: Final = 0x03          # a listener under load: "repeat your SYN with this token"
REJECT: Final = 0x04         # server: "here is my key" / "I cannot take this handshake"
KEY_REQUEST: Final = 0x05    # client without a pinned server key: "what is your key?"
PLAIN_SYN: Final = 0x09      # Config(insecure_plaintext=True): SYN in clear
PLAIN_SYN_ACK: Final = 0x0A  # Config(insecure_plaintext=True): SYN-ACK in clear
#: ``LongHeader.packet_type`` of a version-negotiation packet (marked by version 0)
VERSION_NEGOTIATION: Final = 0x00
SHORT: Final = FIXED_BIT     # a short header with key phase 0
KEY_PHASE: Final = 0x04      # short header: the key phase bit

LONG_TYPES: Final = frozenset({SYN, SYN_ACK, RETRY, REJECT, KEY_REQUEST, PLAIN_SYN,
                               PLAIN_SYN_ACK})
#: Version 1 (before encryption) put the type in the whole first byte: SYN 0x01, SYN-ACK 0x02,
#: version negotiation 0x05. Its SYNs are answered with a version-1-style negotiation packet.
LEGACY_SYN: Final = 0x01
LEGACY_VERSION_NEGOTIATION: Final = 0x05


def is_long_header(first: int) -> bool:
    return bool(first & LONG_FORM)


def is_short_header(first: int) -> bool:
    return first & 0xC0 == FIXED_BIT


# --- frame types -----------------------------------------------------------------------------
PADDING: Final = 0x00
PUSH_FIN: Final = 0x03  # the original design's FIN: a PUSH that ends the stream
PUSH: Final = 0x10
ACK: Final = 0x11
PING: Final = 0x12
PATH_CHALLENGE: Final = 0x13
PATH_RESPONSE: Final = 0x14
CLOSE: Final = 0x15
MAX_DATA: Final = 0x16
DATA_BLOCKED: Final = 0x17
NEW_CONNECTION_ID: Final = 0x18
RETIRE_CONNECTION_ID: Final = 0x19



class CloseCode(IntEnum):
    """Error codes carried by CLOSE."""

    NO_ERROR = 0
    INTERNAL_ERROR = 1
    STATELESS_RESET = 2  # never sent: reported when the peer's stateless reset arrives
    FLOW_CONTROL_ERROR = 3
    PROTOCOL_VIOLATION = 10
    #: codes from here on are the application's (``abort(code)``)
    APPLICATION_ERROR = 0x100


MAX_ACK_RANGES: Final = 32
MAX_CID_LENGTH: Final = 20
MAX_REASON_LENGTH: Final = 512
RESET_TOKEN_LENGTH: Final = 16

_PN: Final = struct.Struct("!Q")
_pack_pn: Final = _PN.pack  # (a bound method: no lookup by name per packet)
_U32 = struct.Struct("!I")

SHORT_HEADER_OVERHEAD: Final = 1 + 8  # + CID length (+ the 16-byte tag when sealed)


class MalformedPacket(ValueError):
    """The bytes are not a well-formed packet or frame."""


# --- variable-length integers (RFC 9000 section 16) -------------------------------------------
VARINT_MAX: Final = (1 << 62) - 1


#: The one-byte varints, made once: ``bytes((value,))`` builds a tuple and calls the bytes
#: type, ``int.to_bytes`` is a method call by name; the ACK path encodes several per packet.
_ONE_BYTE_VARINTS: Final = [bytes((i,)) for i in range(0x40)]
_pack_u16: Final = struct.Struct("!H").pack
_pack_u32: Final = struct.Struct("!I").pack
_pack_u64: Final = struct.Struct("!Q").pack


def encode_varint(value: int) -> bytes:
    if value < 0x40:
        if value < 0:
            raise ValueError(f"integer {value} is negative: not a varint")
        return _ONE_BYTE_VARINTS[value]
    if value < 0x4000:
        return _pack_u16(value | 0x4000)
    if value < 0x4000_0000:
        return _pack_u32(value | 0x8000_0000)
    if value <= VARINT_MAX:
        return _pack_u64(value | 0xC000_0000_0000_0000)
    raise ValueError(f"integer {value} too large for a varint")


def varint_size(value: int) -> int:
    return 1 << _width(value)


def decode_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Return ``(value, new_pos)``; raise :class:`MalformedPacket` when truncated."""
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    return _varint(buf, pos, len(buf))


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """``decode_varint`` on ``buf[:end]``. Typed ``bytes`` and decoded byte by byte, so the
    compiled build indexes the buffer natively, returns the pair without a tuple object and
    never calls back into the interpreter (``struct``, ``int.from_bytes``)."""
    if pos >= end:
        raise MalformedPacket("truncated varint")
    value = buf[pos]
    if value < 0x40:
        return value, pos + 1
    stop = pos + (1 << (value >> 6))
    if stop > end:
        raise MalformedPacket("truncated varint")
    value &= 0x3F
    pos += 1
    while pos < stop:
        value = (value << 8) | buf[pos]
        pos += 1
    return value, stop


# --- frames ----------------------------------------------------------------------------------
class PushFrame:
    """Stream bytes at ``offset``; ``fin`` marks the end of the stream. Treat it as immutable.

    A plain class, not a dataclass: the compiled build makes a dataclass through its generated
    (interpreted) ``__init__``, several times the cost of this one, and one PushFrame is made
    per data packet received. Equality and ``repr`` are a dataclass's.
    """

    __slots__ = ("offset", "data", "fin")

    def __init__(self, offset: int, data: bytes, fin: bool = False) -> None:
        self.offset = offset
        self.data = data
        self.fin = fin

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PushFrame):
            return NotImplemented
        return (self.offset == other.offset and self.data == other.data
                and self.fin == other.fin)

    def __repr__(self) -> str:
        return f"PushFrame(offset={self.offset!r}, data={self.data!r}, fin={self.fin!r})"


class AckFrame:
    """Acknowledged packet-number ranges, newest first, each ``(first, last)`` inclusive.

    Immutable and hashable, like the frozen dataclass it was; a plain class for the reason
    given at :class:`PushFrame` (one is made per ACK received).
    """

    __slots__ = ("_ranges", "ack_delay_us", "largest", "newest_first")

    def __init__(self, ranges: tuple[tuple[int, int], ...] | None, ack_delay_us: int = 0,
                 newest_first: int = 0, largest: int = 0) -> None:
        """``ranges`` None: the one range ``(newest_first, largest)``. That is the common ACK,
        and the decoder makes it so: its tuples (two, with two boxed numbers, per ACK
        received) are built only if ``ranges`` is read, which the receive path does not do."""
        self._ranges = ranges
        self.ack_delay_us: Final = ack_delay_us
        if ranges is not None:
            newest_first, largest = ranges[0]
        #: the largest packet number acknowledged, and the first one of its range
        self.largest: Final = largest
        self.newest_first: Final = newest_first

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        ranges = self._ranges
        if ranges is None:
            ranges = self._ranges = ((self.newest_first, self.largest),)
        return ranges

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AckFrame):
            return NotImplemented
        return self.ranges == other.ranges and self.ack_delay_us == other.ack_delay_us

    def __hash__(self) -> int:
        return hash((self.ranges, self.ack_delay_us))

    def __repr__(self) -> str:
        return f"AckFrame(ranges={self.ranges!r}, ack_delay_us={self.ack_delay_us!r})"


@dataclass(frozen=True, slots=True)
class PingFrame:
    pass


@dataclass(frozen=True, slots=True)
class PaddingFrame:
    length: int


@dataclass(frozen=True, slots=True)
class PathChallengeFrame:
    data: bytes


@dataclass(frozen=True, slots=True)
class PathResponseFrame:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseFrame:
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MaxDataFrame:
    maximum: int


@dataclass(frozen=True, slots=True)
class DataBlockedFrame:
    limit: int


@dataclass(frozen=True, slots=True)
class NewConnectionIdFrame:
    """A spare CID of the sender's, with the stateless-reset token that goes with it."""

    sequence: int
    retire_prior_to: int
    cid: bytes
    reset_token: bytes = bytes(RESET_TOKEN_LENGTH)


@dataclass(frozen=True, slots=True)
class RetireConnectionIdFrame:
    sequence: int


Frame = (
    PushFrame
    | AckFrame
    | PingFrame
    | PaddingFrame
    | PathChallengeFrame
    | PathResponseFrame
    | CloseFrame
    | MaxDataFrame
    | DataBlockedFrame
    | NewConnectionIdFrame
    | RetireConnectionIdFrame
)


#: A varint's width as an index (0: one byte, 1: two, 2: four, 3: eight; see
#: :func:`_width`) -> its struct format character, and the marker bits of its first byte.
_WIDTH_FORMATS: Final = "BHIQ"
_WIDTH_MARKERS: Final = [0, 0x4000, 0x8000_0000, 0xC000_0000_0000_0000]
#: (offset width) * 4 + (length width) -> the PUSH header's ``struct.pack``
_PUSH_PACKERS: Final = [struct.Struct("!B" + _WIDTH_FORMATS[o] + _WIDTH_FORMATS[n]).pack
                        for o in range(4) for n in range(4)]
#: (largest) * 16 + (delay) * 4 + (first range) widths -> an ACK frame of one range's
#: ``struct.pack`` (type, largest, delay, range count 0, first range)
_ACK1_PACKERS: Final = [struct.Struct("!B" + _WIDTH_FORMATS[a] + _WIDTH_FORMATS[d] + "B"
                                      + _WIDTH_FORMATS[r]).pack
                        for a in range(4) for d in range(4) for r in range(4)]


def _width(value: int) -> int:
    """The width index of ``value``'s varint (the caller checks 0 <= value <= VARINT_MAX)."""
    if value < 0x40:
        return 0
    if value < 0x4000:
        return 1
    if value < 0x4000_0000:
        return 2
    return 3


def encode_push_header(offset: int, length: int, fin: bool) -> bytes:
    """The PUSH frame header (type, offset and length varints) in one precompiled struct
    call: one is built per data packet sent, and three encodes plus two concatenations cost
    several times as much."""
    o = _width(offset)
    n = _width(length)
    ob = 1 << o
    nb = 1 << n
    if ob + nb <= 6:
        # the whole header as one native int (at most 7 bytes: within a tagged int), and
        # one ``to_bytes`` (a mypyc primitive): a struct call parses three boxed arguments
        value = ((((PUSH_FIN if fin else PUSH) << (8 * ob)) | offset | (o << (8 * ob - 2)))
                 << (8 * nb)) | length | (n << (8 * nb - 2))
        return value.to_bytes(1 + ob + nb, "big")
    return _PUSH_PACKERS[o * 4 + n](PUSH_FIN if fin else PUSH, offset | _WIDTH_MARKERS[o],
                                    length | _WIDTH_MARKERS[n])


def encode_one_range_ack(first: int, last: int, ack_delay_us: int) -> bytes:
    """``encode_ack([(first, last)], ack_delay_us)``: the common ACK (everything arrived in
    order), without building the list of ranges."""
    if 0 <= first <= last <= VARINT_MAX and 0 <= ack_delay_us <= VARINT_MAX:
        return _one_range_ack(first, last, ack_delay_us)
    return encode_ack([(first, last)], ack_delay_us)  # (raises, as the codec does)


def _one_range_ack(first: int, last: int, ack_delay_us: int) -> bytes:
    """One range, every value a valid varint: one precompiled struct call."""
    a = _width(last)
    d = _width(ack_delay_us)
    r = _width(last - first)
    ab = 1 << a
    db = 1 << d
    rb = 1 << r
    if ab + db + rb <= 5:
        # at most 7 bytes: one native int and one ``to_bytes`` (as the PUSH header)
        value = ((((((ACK << (8 * ab)) | last | (a << (8 * ab - 2))) << (8 * db))
                   | ack_delay_us | (d << (8 * db - 2))) << (8 + 8 * rb))
                 | (last - first) | (r << (8 * rb - 2)))
        return value.to_bytes(2 + ab + db + rb, "big")
    return _ACK1_PACKERS[a * 16 + d * 4 + r](ACK, last | _WIDTH_MARKERS[a],
                                             ack_delay_us | _WIDTH_MARKERS[d], 0,
                                             (last - first) | _WIDTH_MARKERS[r])


def encode_ack(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...],
               ack_delay_us: int) -> bytes:
    """Encode ranges given newest first as ``(first, last)``; at most MAX_ACK_RANGES kept."""
    first, last = ranges[0]
    if len(ranges) == 1 and 0 <= first <= last <= VARINT_MAX and 0 <= ack_delay_us <= VARINT_MAX:
        return _one_range_ack(first, last, ack_delay_us)
    ranges = ranges[:MAX_ACK_RANGES]
    out = [bytes((ACK,)), encode_varint(last), encode_varint(ack_delay_us),
           encode_varint(len(ranges) - 1), encode_varint(last - first)]
    prev_first = first
    for lo, hi in ranges[1:]:
        # gap: packets between this range and the previous one, minus one (as in QUIC)
        out.append(encode_varint(prev_first - hi - 2))
        out.append(encode_varint(hi - lo))
        prev_first = lo
    return b"".join(out)


#: The one-byte PING frame, ready to append (probes and ack-of-ack packets carry it).
ENCODED_PING: Final = bytes((PING,))


def encode_frame(frame: Frame) -> bytes:
    """Encode any frame (the hot path builds PUSH and ACK headers directly)."""
    if isinstance(frame, PushFrame):
        return encode_push_header(frame.offset, len(frame.data), frame.fin) + frame.data
    if isinstance(frame, AckFrame):
        return encode_ack(frame.ranges, frame.ack_delay_us)
    if isinstance(frame, PingFrame):
        return ENCODED_PING
    if isinstance(frame, PaddingFrame):
        return bytes(frame.length)
    if isinstance(frame, PathChallengeFrame):
        return bytes((PATH_CHALLENGE,)) + frame.data
    if isinstance(frame, PathResponseFrame):
        return bytes((PATH_RESPONSE,)) + frame.data
    if isinstance(frame, CloseFrame):
        reason = frame.reason.encode("utf-8", "replace")[:MAX_REASON_LENGTH]
        return (bytes((CLOSE,)) + encode_varint(frame.code) + encode_varint(len(reason))
                + reason)
    if isinstance(frame, MaxDataFrame):
        return bytes((MAX_DATA,)) + encode_varint(frame.maximum)
    if isinstance(frame, DataBlockedFrame):
        return bytes((DATA_BLOCKED,)) + encode_varint(frame.limit)
    if isinstance(frame, NewConnectionIdFrame):
        return (bytes((NEW_CONNECTION_ID,)) + encode_varint(frame.sequence)
                + encode_varint(frame.retire_prior_to) + bytes((len(frame.cid),)) + frame.cid
                + frame.reset_token)
    if isinstance(frame, RetireConnectionIdFrame):
        return bytes((RETIRE_CONNECTION_ID,)) + encode_varint(frame.sequence)
    raise TypeError(f"not a frame: {frame!r}")


def decode_frames(payload: bytes | memoryview, start: int = 0) -> list[Frame]:
    """Decode every frame of a packet payload (from ``start``); raise MalformedPacket on any
    inconsistency. Pass the datagram as ``bytes`` with ``start`` at the payload: slicing
    ``bytes`` is one copy, a memoryview slice plus ``bytes()`` is two."""
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    return _decode_frames(payload, start)


def _decode_frames(buf: bytes, pos: int) -> list[Frame]:
    """``decode_frames`` on ``bytes``: typed so, every index and slice below compiles to a
    native operation (with ``bytes | memoryview`` each was a generic call)."""
    frames: list[Frame] = []
    end = len(buf)
    while pos < end:
        kind = buf[pos]
        pos += 1
        if kind in (PUSH, PUSH_FIN):
            offset, pos = _varint(buf, pos, end)
            length, pos = _varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise MalformedPacket("PUSH data runs past the packet")
            if offset + length > VARINT_MAX:
                raise MalformedPacket("PUSH offset overflows")
            frames.append(PushFrame(offset, buf[pos:stop], kind == PUSH_FIN))
            pos = stop
        elif kind == ACK:
            ack, pos = _decode_ack(buf, pos, end)
            frames.append(ack)
        elif kind == PADDING:
            first = pos - 1
            while pos < end and buf[pos] == 0:
                pos += 1
            frames.append(PaddingFrame(pos - first))
        elif kind == PING:
            frames.append(PingFrame())
        elif kind in (PATH_CHALLENGE, PATH_RESPONSE):
            if pos + 8 > end:
                raise MalformedPacket("truncated path frame")
            data = buf[pos:pos + 8]
            pos += 8
            frames.append(PathChallengeFrame(data) if kind == PATH_CHALLENGE
                          else PathResponseFrame(data))
        elif kind == CLOSE:
            code, pos = _varint(buf, pos, end)
            length, pos = _varint(buf, pos, end)
            if length > MAX_REASON_LENGTH or pos + length > end:
                raise MalformedPacket("bad CLOSE reason length")
            reason = buf[pos:pos + length].decode("utf-8", "replace")
            pos += length
            frames.append(CloseFrame(code, reason))
        elif kind == MAX_DATA:
            value, pos = _varint(buf, pos, end)
            frames.append(MaxDataFrame(value))
        elif kind == DATA_BLOCKED:
            value, pos = _varint(buf, pos, end)
            frames.append(DataBlockedFrame(value))
        elif kind == NEW_CONNECTION_ID:
            seq, pos = _varint(buf, pos, end)
            retire, pos = _varint(buf, pos, end)
            if pos >= end:
                raise MalformedPacket("truncated NEW_CONNECTION_ID")
            length = buf[pos]
            pos += 1
            stop = pos + length + RESET_TOKEN_LENGTH
            if not 1 <= length <= MAX_CID_LENGTH or stop > end or retire > seq + 1:
                raise MalformedPacket("bad NEW_CONNECTION_ID")
            frames.append(NewConnectionIdFrame(seq, retire, buf[pos:pos + length],
                                               buf[pos + length:stop]))
            pos = stop
        elif kind == RETIRE_CONNECTION_ID:
            seq, pos = _varint(buf, pos, end)
            frames.append(RetireConnectionIdFrame(seq))
        else:
            raise MalformedPacket(f"unknown frame type 0x{kind:02x}")
    return frames


def _decode_ack(buf: bytes, pos: int, end: int) -> tuple[AckFrame, int]:
    largest, pos = _varint(buf, pos, end)
    delay, pos = _varint(buf, pos, end)
    count, pos = _varint(buf, pos, end)
    first_len, pos = _varint(buf, pos, end)
    if count >= MAX_ACK_RANGES or first_len > largest:
        raise MalformedPacket("bad ACK range")
    hi = largest
    lo = largest - first_len
    if not count:  # the common case: one range, no list to build and copy
        return AckFrame(None, delay, lo, hi), pos
    ranges = [(lo, hi)]
    for _ in range(count):
        gap, pos = _varint(buf, pos, end)
        length, pos = _varint(buf, pos, end)
        hi = lo - gap - 2
        lo = hi - length
        if lo < 0:
            raise MalformedPacket("ACK range below zero")
        ranges.append((lo, hi))
    return AckFrame(tuple(ranges), delay), pos


# --- packet headers --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LongHeader:
    """The clear part of a long-header packet: type, version, both CIDs.

    ``payload_offset`` is where the type-specific body starts (the Noise message of a SYN, the
    version list of a version-negotiation packet...). Handshake packets carry no packet
    number: they are resent byte for byte when lost.
    """

    packet_type: int
    version: int
    dcid: bytes
    scid: bytes
    payload_offset: int


def encode_long_header(packet_type: int, version: int, dcid: bytes, scid: bytes) -> bytes:
    return (bytes((LONG_FORM | FIXED_BIT | packet_type,)) + _U32.pack(version)
            + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid)


def decode_long_header(data: bytes | memoryview) -> LongHeader:
    if len(data) < 7 or not data[0] & LONG_FORM:
        raise MalformedPacket("truncated long header")
    (version,) = _U32.unpack_from(data, 1)
    packet_type = VERSION_NEGOTIATION if version == 0 else data[0] & LONG_TYPE_MASK
    pos = 5
    dlen = data[pos]
    pos += 1
    if dlen > MAX_CID_LENGTH or pos + dlen >= len(data):
        raise MalformedPacket("bad destination CID length")
    dcid = bytes(data[pos:pos + dlen])
    pos += dlen
    slen = data[pos]
    pos += 1
    if slen > MAX_CID_LENGTH or pos + slen > len(data):
        raise MalformedPacket("bad source CID length")
    scid = bytes(data[pos:pos + slen])
    pos += slen
    return LongHeader(packet_type, version, dcid, scid, pos)


def encode_retry(version: int, client_cid: bytes, token: bytes) -> bytes:
    """RETRY: the client's CID as destination, the token as source CID (the client repeats
    its SYN with the token as destination CID); no payload. Far smaller than the SYN it
    answers (no amplification)."""
    return encode_long_header(RETRY, version, client_cid, token)


_SHORT_TYPES: Final = (bytes((SHORT,)), bytes((SHORT | KEY_PHASE,)))


def encode_short_header(dcid: bytes, packet_number: int, key_phase: int = 0) -> bytes:
    return short_header_prefix(dcid, key_phase) + encode_packet_number(packet_number)


def short_header_prefix(dcid: bytes, key_phase: int) -> bytes:
    """A short header's bytes before the packet number (type and CID): a sender keeps it per
    CID and key phase, and the header is then ``prefix + encode_packet_number(pn)``."""
    return _SHORT_TYPES[1 if key_phase else 0] + dcid


def encode_packet_number(packet_number: int) -> bytes:
    """The short header's packet number field (8 bytes, big-endian), by ``to_bytes`` (a
    mypyc primitive; a ``struct`` call parses boxed arguments)."""
    return packet_number.to_bytes(8, "big")


def encode_short_packet(dcid: bytes, packet_number: int, parts: list[bytes]) -> bytes:
    """A whole clear short-header packet (``insecure_plaintext``): the header and the encoded
    frames in ``parts``, joined in one copy (the per-packet path)."""
    return b"".join((_SHORT_TYPES[0], dcid, _pack_pn(packet_number), *parts))


def decode_short_header(data: bytes | memoryview, cid_length: int) -> tuple[bytes, int, int]:
    """Return ``(dcid, packet_number, payload_offset)``; the key phase: ``data[0] & KEY_PHASE``."""
    if not isinstance(data, bytes):
        data = bytes(data)
    pn = short_header_pn(data, cid_length)
    return data[1:1 + cid_length], pn, 1 + cid_length + 8


def short_header_pn(data: bytes, cid_length: int) -> int:
    """The packet number of a short-header packet (its payload starts at ``1 + cid_length +
    8``); raise :class:`MalformedPacket` when ``data`` is not one. The receive path's header
    parse: no CID copy (the dispatcher routed by it already), no ``struct`` call."""
    pos = 1 + cid_length
    end = pos + 8
    if len(data) < end or data[0] & 0xFB != SHORT:
        raise MalformedPacket("truncated short header")
    pn = 0
    while pos < end:
        pn = (pn << 8) | data[pos]
        pos += 1
    return pn


def encode_version_negotiation(dcid: bytes, scid: bytes, versions: tuple[int, ...]) -> bytes:
    """Tell a client which versions we speak: a long header with version 0 (RFC 8999)."""
    return (bytes((LONG_FORM | FIXED_BIT,)) + _U32.pack(0) + bytes((len(dcid),)) + dcid
            + bytes((len(scid),)) + scid + b"".join(_U32.pack(v) for v in versions))


def encode_legacy_version_negotiation(dcid: bytes, versions: tuple[int, ...]) -> bytes:
    """The same answer in version 1's layout, so a version-1 client raises VersionMismatch."""
    return (bytes((LEGACY_VERSION_NEGOTIATION,)) + _U32.pack(0) + bytes((len(dcid),)) + dcid
            + b"\x00" + b"".join(_U32.pack(v) for v in versions))


def decode_versions(data: bytes | memoryview, offset: int) -> tuple[int, ...]:
    body = data[offset:]
    if len(body) == 0 or len(body) % 4:
        raise MalformedPacket("bad version list")
    return tuple(_U32.unpack_from(body, i)[0] for i in range(0, len(body), 4))
