"""Packet protection: ChaCha20-Poly1305 on every packet after the handshake, with key update.

- **Keys**: each direction starts from the key Noise's Split() gives (initiator -> responder and
  responder -> initiator). A direction's key of generation ``g + 1`` is ``REKEY(key_g)`` (Noise
  section 4.2), so both sides derive the same chain without any message.
- **Nonce**: the packet number, which is never reused in one direction: 32 zero bits, then the
  64-bit packet number little-endian (Noise's ChaChaPoly nonce encoding).
- **Associated data**: the clear header (type byte with the key-phase bit, destination CID,
  packet number). A changed header byte fails authentication like a changed payload byte.
- **Key phase**: the low bit of the sending key's generation travels in the clear header. A
  receiver that sees the other phase tries the next key of the chain (precomputed); when that
  authenticates, it rotates, keeping the previous key for ``retention`` seconds (about three
  probe timeouts) so reordered packets of the old phase still open.
- One ``ChaCha20Poly1305`` object per key, made when the key is: making one per packet costs as
  much as the encryption itself.

A packet that fails to open gives ``None``; the caller counts it and drops it, unparsed.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .noise import rekey

TAG_LENGTH: Final = 16
KEY_LENGTH: Final = 32

#: (``struct`` beats ``(pn << 32).to_bytes(12, "little")`` compiled: mypyc's ``to_bytes``
#: goes through a long object and CPython's generic byte-array conversion, ~30 % more)
_NONCE: Final = struct.Struct("<4xQ")
_pack_nonce: Final = _NONCE.pack


def packet_nonce(pn: int) -> bytes:
    return _pack_nonce(pn)


class PacketProtection:
    """The traffic keys of one connection, both directions, with key phases."""

    __slots__ = (
        "_next_recv_aead",
        "_next_recv_key",
        "_prev_recv_aead",
        "_prev_recv_until",
        "_recv_aead",
        "_recv_key",
        "_send_aead",
        "_send_key",
        "recv_first_pn",
        "recv_generation",
        "recv_phase",
        "retention",
        "send_first_pn",
        "send_generation",
        "send_phase",
        "sent_in_phase",
    )

    def __init__(self, send_key: bytes, recv_key: bytes, retention: float = 1.0) -> None:
        if len(send_key) != KEY_LENGTH or len(recv_key) != KEY_LENGTH:
            raise ValueError("traffic keys have 32 bytes")
        self._send_key = send_key
        self._send_aead = ChaCha20Poly1305(send_key)
        self.send_generation = 0
        self.send_phase = 0
        self.send_first_pn = 0
        self.sent_in_phase = 0
        self._recv_key = recv_key
        self._recv_aead = ChaCha20Poly1305(recv_key)
        self._next_recv_key = rekey(recv_key)
        self._next_recv_aead = ChaCha20Poly1305(self._next_recv_key)
        self._prev_recv_aead: ChaCha20Poly1305 | None = None
        self._prev_recv_until = 0.0
        self.recv_generation = 0
        self.recv_phase = 0
        self.recv_first_pn = -1
        self.retention = retention

    def __repr__(self) -> str:
        return (f"PacketProtection(send_generation={self.send_generation}, "
                f"recv_generation={self.recv_generation})")

    # --- sending -----------------------------------------------------------------------------
    def seal(self, header: bytes, pn: int, payload: bytes | bytearray | memoryview) -> bytes:
        """``header || ENCRYPT(send_key, pn, header, payload)``: the datagram to send."""
        self.sent_in_phase += 1
        return header + self._send_aead.encrypt(_pack_nonce(pn), payload, header)

    def update_send_key(self, next_pn: int) -> None:
        """Move to the next sending key; ``next_pn`` is the first packet number it protects."""
        self._send_key = rekey(self._send_key)
        self._send_aead = ChaCha20Poly1305(self._send_key)
        self.send_generation += 1
        self.send_phase = self.send_generation & 1
        self.send_first_pn = next_pn
        self.sent_in_phase = 0

    # --- receiving ---------------------------------------------------------------------------
    def open(self, packet: bytes | memoryview, header_length: int, pn: int, phase: int,
             now: float) -> bytes | None:
        """The plaintext of a sealed packet, or None when it does not authenticate.

        ``phase`` is the key-phase bit read from the clear header. Nothing about the packet is
        trusted until this returns bytes.
        """
        if not isinstance(packet, bytes):
            packet = bytes(packet)  # (the receive path passes bytes: its slices are native)
        if len(packet) < header_length + TAG_LENGTH:
            return None
        header = packet[:header_length]
        body = packet[header_length:]
        nonce = _pack_nonce(pn)
        if phase == self.recv_phase:
            try:
                plaintext = self._recv_aead.decrypt(nonce, body, header)
            except InvalidTag:
                return None
            if pn < self.recv_first_pn:       # a reordered packet of the current key
                self.recv_first_pn = pn
            return plaintext
        # The other phase: an older packet under the previous key, or the peer's key update.
        if pn < self.recv_first_pn:
            prev = self._prev_recv_aead
            if prev is None:
                return None
            if now > self._prev_recv_until:
                self._prev_recv_aead = None
                return None
            try:
                return prev.decrypt(nonce, body, header)
            except InvalidTag:
                return None
        try:
            plaintext = self._next_recv_aead.decrypt(nonce, body, header)
        except InvalidTag:
            return None
        self._rotate_receive(pn, now)
        return plaintext

    def _rotate_receive(self, first_pn: int, now: float) -> None:
        self._prev_recv_aead = self._recv_aead
        self._prev_recv_until = now + self.retention
        self._recv_key = self._next_recv_key
        self._recv_aead = self._next_recv_aead
        self._next_recv_key = rekey(self._recv_key)
        self._next_recv_aead = ChaCha20Poly1305(self._next_recv_key)
        self.recv_generation += 1
        self.recv_phase = self.recv_generation & 1
        self.recv_first_pn = first_pn

    @property
    def has_previous_receive_key(self) -> bool:
        return self._prev_recv_aead is not None
