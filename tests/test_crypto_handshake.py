"""The SYN / SYN-ACK exchange of crypto.handshake, without the connection around it."""

from __future__ import annotations

import time

import pytest

from roamlink.crypto import handshake, noise
from roamlink.crypto.replay import ReplayVerdict

HEADER = b"\xc1\x00\x00\x00\x02\x00\x08clientci"


def _server(**kwargs: object) -> handshake.ServerCrypto:
    static, _ = noise.generate_keypair()
    return handshake.ServerCrypto(static, **kwargs)  # type: ignore[arg-type]


def test_round_trip_with_early_data_and_keys() -> None:
    server = _server()
    client = handshake.ClientHandshake(noise.generate_keypair()[0], server.public_key)
    now = time.time()
    syn = client.seal_syn(HEADER, handshake.encode_syn_payload(now, b"early frames"))
    assert len(syn) == len(HEADER) + 8 + len(b"early frames") + handshake.SYN_OVERHEAD
    assert server.check_mac1(syn)
    opened = server.open_syn(syn, len(HEADER), now)
    assert opened.frames == b"early frames"
    assert opened.client_key == client.static_public
    assert opened.verdict is ReplayVerdict.FRESH
    assert abs(opened.timestamp - now) < 0.002
    hs = handshake.ServerHandshake(opened)
    token = server.reset_token(b"servercid")
    ack_header = b"\xc2hdr"
    syn_ack = hs.seal_syn_ack(ack_header, handshake.encode_syn_ack_payload(
        handshake.EARLY_DATA_ACCEPTED, b"servercid", token, b"reply"))
    assert len(syn_ack) == len(ack_header) + 2 + 9 + 16 + 5 + handshake.SYN_ACK_OVERHEAD
    got = client.open_syn_ack(syn_ack, len(ack_header))
    assert got.early_data_accepted and not got.refused
    assert (got.server_cid, got.reset_token, got.frames) == (b"servercid", token, b"reply")
    send, recv = client.traffic_keys()
    assert hs.traffic_keys() == (recv, send)
    # the same SYN again is a replay
    assert server.open_syn(syn, len(HEADER), now).verdict is ReplayVerdict.REPLAY


def test_wrong_server_key_fails_mac1_before_any_dh() -> None:
    server = _server()
    other = _server()
    client = handshake.ClientHandshake(noise.generate_keypair()[0], other.public_key)
    syn = client.seal_syn(HEADER, handshake.encode_syn_payload(time.time(), b""))
    assert not server.check_mac1(syn)


def test_altered_clear_header_fails() -> None:
    server = _server()
    client = handshake.ClientHandshake(noise.generate_keypair()[0], server.public_key)
    syn = bytearray(client.seal_syn(HEADER, handshake.encode_syn_payload(time.time(), b"")))
    syn[4] ^= 0x01  # the version byte
    with pytest.raises(handshake.HandshakeError):
        server.open_syn(bytes(syn), len(HEADER), time.time())


def test_psk_mismatch_fails_on_one_side() -> None:
    server = _server(psk=b"\x01" * 32)
    client = handshake.ClientHandshake(noise.generate_keypair()[0], server.public_key,
                                       psk=b"\x02" * 32)
    syn = client.seal_syn(HEADER, handshake.encode_syn_payload(time.time(), b""))
    opened = server.open_syn(syn, len(HEADER), time.time())
    syn_ack = handshake.ServerHandshake(opened).seal_syn_ack(
        b"h", handshake.encode_syn_ack_payload(0, b"c" * 8, bytes(16), b""))
    with pytest.raises(handshake.HandshakeError):
        client.open_syn_ack(syn_ack, 1)
    # psk on one side only: the protocol names differ and message 1 fails
    plain = handshake.ClientHandshake(noise.generate_keypair()[0], server.public_key)
    syn = plain.seal_syn(HEADER, handshake.encode_syn_payload(time.time(), b""))
    with pytest.raises(handshake.HandshakeError):
        server.open_syn(syn, len(HEADER), time.time())


def test_authorized_clients_and_reject_codec() -> None:
    client_static, client_public = noise.generate_keypair()
    server = _server(authorized=frozenset({client_public}))
    assert server.is_authorized(client_public)
    assert not server.is_authorized(noise.generate_keypair()[1])
    body = handshake.encode_reject(handshake.REJECT_UNKNOWN_KEY, server.public_key)
    assert handshake.decode_reject(body) == (handshake.REJECT_UNKNOWN_KEY, server.public_key)
    with pytest.raises(handshake.HandshakeError):
        handshake.decode_reject(body[:10])
