"""Test helpers for looking inside, and forging, packets of encrypted connections.

Since every packet after the handshake is sealed, a test that inspects frames on the wire
(or plays a misbehaving peer) needs the keys of one end. These helpers use a connection's own
:class:`~roamlink.crypto.packet_protection.PacketProtection`; they are for tests only (a real
attacker has no keys: it can only replay, drop or corrupt).
"""

from __future__ import annotations

from ..core import wire
from ..core.connection import Connection
from ..core.handshake import make_client_handshake
from ..crypto.handshake import ServerCrypto
from ..crypto.noise import generate_keypair
from ..io.dispatcher import Dispatcher


def frames_of(receiver: Connection, datagram: bytes) -> list[wire.Frame] | None:
    """The frames of a short-header packet addressed to ``receiver`` (None: not one, or it
    does not authenticate). Works for ``insecure_plaintext`` connections too."""
    if not datagram or not wire.is_short_header(datagram[0]):
        return None
    try:
        _, pn, offset = wire.decode_short_header(datagram, len(receiver.local_cid))
    except wire.MalformedPacket:
        return None
    protection = receiver.protection
    if protection is None:
        if not receiver.config.insecure_plaintext:
            return None
        return wire.decode_frames(datagram, offset)
    payload = protection.open(datagram, offset, pn, 1 if datagram[0] & wire.KEY_PHASE else 0,
                              0.0)
    if payload is None:
        return None
    return wire.decode_frames(payload)


def seal_as(sender: Connection, frames: list[wire.Frame], *, pn: int | None = None,
            dcid: bytes | None = None, pad_to: int = 0) -> bytes:
    """A short-header packet with ``frames`` as ``sender`` (which holds the keys) would send
    it: for tests where the *peer itself* misbehaves. ``pn`` defaults to its next number."""
    parts = [wire.encode_frame(f) for f in frames]
    if pad_to:
        size = sum(len(p) for p in parts) + 1 + 8 + 8 + sender.packets.tag_length
        size += len(dcid if dcid is not None else sender.peer_cid) - 8
        parts.append(bytes(max(pad_to - size, 0)))
    number = sender.packets.allocate_pn() if pn is None else pn
    return sender.packets.seal(dcid if dcid is not None else sender.peer_cid, number, parts)


def keyed_pair(client_config: object = None, server_config: object = None
               ) -> tuple[Dispatcher, Dispatcher, object]:
    """A client dispatcher and a listening server dispatcher with a fresh server key; the
    third item connects the client with that key pinned: ``connect(addr, now, **kw)``."""
    from ..config import Config

    ccfg = client_config if isinstance(client_config, Config) else Config()
    scfg = server_config if isinstance(server_config, Config) else ccfg
    crypto = None if scfg.insecure_plaintext else ServerCrypto(generate_keypair()[0])
    client = Dispatcher(ccfg)
    server = Dispatcher(scfg, accept_new=True, server_crypto=crypto)

    def connect(addr: tuple[str, int], now: float, **kwargs: object) -> Connection:
        handshake = (None if ccfg.insecure_plaintext or crypto is None
                     else make_client_handshake(ccfg.psk, crypto.public_key, None))
        return client.connect(addr, now, client_handshake=handshake, **kwargs)  # type: ignore[arg-type]

    return client, server, connect


def flood_syn(server_key: bytes, scid: bytes, *, dcid: bytes = b"", version: int | None = None,
              genuine: bool = True, size: int = 1200) -> bytes:
    """A SYN as a flooding attacker who knows the server's public key (it is public) sends
    it: ``mac1`` verifies, so it gets past the cheap check. ``genuine``: a real Noise
    message 1 from a throw-away client key (it opens a half-open handshake, costing the
    attacker two key exchanges); otherwise random bytes (refused at the Noise check)."""
    import os

    from ..config import PROTOCOL_VERSION
    from ..crypto import handshake as hs
    from ..crypto import mac1

    header = wire.encode_long_header(wire.SYN, PROTOCOL_VERSION if version is None else version,
                                     dcid, scid)
    body_length = size - len(header) - mac1.MAC1_LENGTH
    if not genuine:
        return mac1.append_mac1(mac1.mac1_key(server_key), header + os.urandom(body_length))
    client = make_client_handshake(None, server_key, None)
    room = size - len(header) - hs.SYN_OVERHEAD
    payload = hs.encode_syn_payload(0.0, b"")
    payload += bytes(room - len(payload))
    return client.seal_syn(header, payload)
