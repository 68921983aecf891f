"""roamlink's handshake on top of Noise IK: what a SYN and a SYN-ACK carry, sealed and opened.

Wire layout (the clear long header is built by :mod:`roamlink.core.wire`)::

    SYN     = header | e (32) | encrypted s (32+16) | encrypted payload (n+16) | mac1 (16)
    SYN-ACK = header | e (32) | encrypted payload (n+16)

- The Noise prologue is ``b"roamlink" || clear SYN header``: the protocol name, the version and
  both CIDs of the SYN are bound into the handshake hash, so none can be altered in flight.
  The SYN-ACK's clear CIDs are repeated inside its encrypted payload and compared.
- ``mac1`` (:mod:`.mac1`) is checked before any Diffie-Hellman work.
- A SYN payload starts with the client's wall-clock timestamp (ms) for the replay window
  (:mod:`.replay`); a SYN-ACK payload starts with flags (early data accepted, client refused),
  the server's CID and its stateless-reset token (:mod:`.reset`). Frames follow in both.
- A SYN and a SYN-ACK are built once and resent byte for byte when lost: Noise messages cannot
  be re-encrypted with other content under the same keys.

``insecure_plaintext`` endpoints use the same payloads in clear text (:class:`PlainClient`,
:func:`open_plain_syn`), under distinct packet types, so neither side can be talked into it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import mac1 as mac1_mod
from . import noise
from .replay import ReplayCache, ReplayVerdict
from .reset import RESET_TOKEN_LENGTH, ResetRateLimiter, reset_key_from_static, reset_token

PROLOGUE_LABEL: Final = b"roamlink"
KEY_LENGTH: Final = 32
#: bytes a SYN adds to its payload: e, encrypted s, the payload's tag, mac1
SYN_OVERHEAD: Final = 32 + 48 + 16 + mac1_mod.MAC1_LENGTH
#: bytes a SYN-ACK adds to its payload: e and the payload's tag
SYN_ACK_OVERHEAD: Final = 32 + 16

_TIMESTAMP: Final = struct.Struct("!Q")

# SYN-ACK payload flags
EARLY_DATA_ACCEPTED: Final = 0x01
CLIENT_REFUSED: Final = 0x02

# reasons carried by a REJECT packet (unauthenticated: it can only make a handshake fail)
REJECT_KEY_ANSWER: Final = 1          # answer to a KEY_REQUEST: here is my public key
REJECT_UNKNOWN_KEY: Final = 2         # mac1 did not verify: the client pinned another key
REJECT_HANDSHAKE_FAILED: Final = 3    # mac1 fine, Noise failed (pre-shared key mismatch?)
REJECT_NEED_ENCRYPTION: Final = 4     # a plaintext SYN reached a secure server
REJECT_PLAINTEXT_ONLY: Final = 5      # a secure SYN reached an insecure_plaintext server
REJECT_BUSY: Final = 6                # the listener holds Config.max_connections connections

REJECT_REASONS: Final = {
    REJECT_KEY_ANSWER: "key answer",
    REJECT_UNKNOWN_KEY: "the server's key is not the one this client expected",
    REJECT_HANDSHAKE_FAILED: "the server could not complete the handshake "
                             "(pre-shared key mismatch?)",
    REJECT_NEED_ENCRYPTION: "the server requires encryption, but this client has "
                            "insecure_plaintext=True",
    REJECT_PLAINTEXT_ONLY: "the server runs with insecure_plaintext=True and this client "
                           "refuses to send in clear text",
    REJECT_BUSY: "the listener is full (max_connections)",
}


class HandshakeError(Exception):
    """A handshake message is malformed or fails authentication (no secret in the text)."""


# --- payloads ----------------------------------------------------------------------------------
def encode_syn_payload(timestamp: float, frames: bytes) -> bytes:
    return _TIMESTAMP.pack(max(int(timestamp * 1000.0), 0)) + frames


def decode_syn_payload(payload: bytes) -> tuple[float, bytes]:
    if len(payload) < _TIMESTAMP.size:
        raise HandshakeError("SYN payload too short")
    (ms,) = _TIMESTAMP.unpack_from(payload, 0)
    return ms / 1000.0, payload[_TIMESTAMP.size:]


@dataclass(frozen=True, slots=True)
class SynAckPayload:
    flags: int
    server_cid: bytes
    reset_token: bytes
    frames: bytes

    @property
    def early_data_accepted(self) -> bool:
        return bool(self.flags & EARLY_DATA_ACCEPTED)

    @property
    def refused(self) -> bool:
        return bool(self.flags & CLIENT_REFUSED)


def encode_syn_ack_payload(flags: int, server_cid: bytes, token: bytes, frames: bytes) -> bytes:
    return bytes((flags, len(server_cid))) + server_cid + token + frames


def decode_syn_ack_payload(payload: bytes) -> SynAckPayload:
    if len(payload) < 2:
        raise HandshakeError("SYN-ACK payload too short")
    flags, cid_len = payload[0], payload[1]
    end = 2 + cid_len + RESET_TOKEN_LENGTH
    if cid_len > 20 or len(payload) < end:
        raise HandshakeError("SYN-ACK payload too short")
    return SynAckPayload(flags, payload[2:2 + cid_len], payload[2 + cid_len:end], payload[end:])


def encode_reject(reason: int, key: bytes) -> bytes:
    """The body of a REJECT packet: reason (1), key length (1), the server's public key."""
    return bytes((reason, len(key))) + key


def decode_reject(body: bytes) -> tuple[int, bytes]:
    if len(body) < 2 or len(body) < 2 + body[1] or body[1] not in (0, KEY_LENGTH):
        raise HandshakeError("malformed REJECT")
    return body[0], body[2:2 + body[1]]


# --- client ------------------------------------------------------------------------------------
class ClientHandshake:
    """The client's side: pinned (or learnt) server key, our static key, the Noise state."""

    __slots__ = ("_mac1_key", "_server_key", "_state", "ephemeral", "psk", "static",
                 "static_public")

    def __init__(self, static: X25519PrivateKey, server_key: bytes | None = None,
                 psk: bytes | None = None) -> None:
        self.static = static
        self.static_public = noise.public_key_of(static)
        self.psk = psk
        self._server_key: bytes | None = None
        self._mac1_key = b""
        self._state: noise.HandshakeState | None = None
        self.ephemeral = b""
        if server_key is not None:
            self.server_key = server_key

    def __repr__(self) -> str:
        return "ClientHandshake(...)"

    @property
    def server_key(self) -> bytes | None:
        return self._server_key

    @server_key.setter
    def server_key(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_LENGTH:
            raise HandshakeError("a server key has 32 bytes")
        self._server_key = key
        self._mac1_key = mac1_mod.mac1_key(key) if key is not None else b""

    def seal_syn(self, header: bytes, payload: bytes) -> bytes:
        """The SYN datagram: ``header`` in clear, the Noise message, mac1. Call once."""
        if self._server_key is None:
            raise HandshakeError("no server key to seal a SYN for")
        state = noise.HandshakeState(initiator=True, s=self.static, rs=self._server_key,
                                     prologue=PROLOGUE_LABEL + header, psk=self.psk)
        try:
            message = state.write_message(payload)
        except noise.NoiseError:
            raise HandshakeError("the server key is not a valid X25519 public key") from None
        self._state = state
        self.ephemeral = message[:32]
        return mac1_mod.append_mac1(self._mac1_key, header + message)

    def open_syn_ack(self, datagram: bytes, header_length: int) -> SynAckPayload:
        state = self._state
        if state is None or state.finished:
            raise HandshakeError("no SYN-ACK expected")
        try:
            payload = state.read_message(datagram[header_length:])
        except noise.NoiseError:
            raise HandshakeError("the SYN-ACK failed authentication") from None
        return decode_syn_ack_payload(payload)

    def traffic_keys(self) -> tuple[bytes, bytes]:
        """(send, receive) keys, after the SYN-ACK was opened."""
        if self._state is None:
            raise HandshakeError("no handshake")
        return self._state.split_keys()


# --- server ------------------------------------------------------------------------------------
@dataclass(slots=True)
class OpenedSyn:
    """A SYN that authenticated: the Noise state to answer with and what it carried."""

    state: noise.HandshakeState | None     # None for a plaintext SYN
    client_key: bytes                      # the client's static public key (b"" if plaintext)
    ephemeral: bytes
    timestamp: float
    frames: bytes
    verdict: ReplayVerdict


class ServerCrypto:
    """A listener's long-lived secrets and filters: static key, mac1 key, replay cache, reset key.

    One per listening socket group; every server connection it accepts borrows it.
    """

    __slots__ = ("authorized", "mac1_key", "psk", "public_key", "replay", "reset_key",
                 "reset_limiter", "static")

    def __init__(self, static: X25519PrivateKey, *, authorized: frozenset[bytes] | None = None,
                 psk: bytes | None = None, replay_window: float = 60.0) -> None:
        self.static = static
        self.public_key = noise.public_key_of(static)
        self.mac1_key = mac1_mod.mac1_key(self.public_key)
        self.authorized = authorized
        self.psk = psk
        self.replay = ReplayCache(replay_window)
        self.reset_key = reset_key_from_static(static.private_bytes_raw())
        self.reset_limiter = ResetRateLimiter()

    def __repr__(self) -> str:
        return "ServerCrypto(...)"

    def check_mac1(self, datagram: bytes) -> bool:
        return mac1_mod.check_mac1(self.mac1_key, datagram)

    def is_authorized(self, client_key: bytes) -> bool:
        return self.authorized is None or client_key in self.authorized

    def reset_token(self, cid: bytes) -> bytes:
        return reset_token(self.reset_key, cid)

    def open_syn(self, datagram: bytes, header_length: int, wall_now: float) -> OpenedSyn:
        """Run the responder's half of message 1 (two X25519 operations). Check mac1 first."""
        header = datagram[:header_length]
        message = datagram[header_length:len(datagram) - mac1_mod.MAC1_LENGTH]
        state = noise.HandshakeState(initiator=False, s=self.static,
                                     prologue=PROLOGUE_LABEL + header, psk=self.psk)
        try:
            payload = state.read_message(message)
        except noise.NoiseError:
            raise HandshakeError("the SYN failed authentication") from None
        timestamp, frames = decode_syn_payload(payload)
        ephemeral = message[:32]
        verdict = self.replay.check(ephemeral, timestamp, wall_now)
        client_key = state.remote_static or b""
        return OpenedSyn(state, client_key, ephemeral, timestamp, frames, verdict)


class ServerHandshake:
    """A server connection's half of the handshake: the SYN-ACK, sealed once."""

    __slots__ = ("_state", "client_key", "ephemeral")

    def __init__(self, opened: OpenedSyn) -> None:
        if opened.state is None:
            raise HandshakeError("a plaintext SYN has no Noise state")
        self._state = opened.state
        self.client_key = opened.client_key
        self.ephemeral = opened.ephemeral

    def __repr__(self) -> str:
        return "ServerHandshake(...)"

    def seal_syn_ack(self, header: bytes, payload: bytes) -> bytes:
        return header + self._state.write_message(payload)

    def traffic_keys(self) -> tuple[bytes, bytes]:
        return self._state.split_keys()


def open_plain_syn(datagram: bytes, header_length: int) -> OpenedSyn:
    """An ``insecure_plaintext`` SYN: the same payload as a sealed one, in clear."""
    timestamp, frames = decode_syn_payload(datagram[header_length:])
    return OpenedSyn(None, b"", b"", timestamp, frames, ReplayVerdict.FRESH)
