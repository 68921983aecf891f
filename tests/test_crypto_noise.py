"""The Noise IK / IKpsk2 handshake against the published cacophony test vectors.

The vectors (tests/vectors/noise_ik_25519_chachapoly_blake2s.json, source noted in the file) fix
every private key, so every byte of every message and the final handshake hash must match.
Messages 3.. are transport messages under the keys Split() gives, alternating initiator and
responder, each direction counting its own nonce from 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from roamlink.crypto import noise

VECTORS = Path(__file__).parent / "vectors" / "noise_ik_25519_chachapoly_blake2s.json"


def _load() -> list[dict[str, Any]]:
    data = json.loads(VECTORS.read_text())
    assert "mcginty/snow" in data["source"]
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


@pytest.mark.parametrize(
    "vector", _load(), ids=lambda v: str(v["protocol_name"])
)
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    psk = bytes.fromhex(vector["init_psks"][0]) if "init_psks" in vector else None
    resp_psk = bytes.fromhex(vector["resp_psks"][0]) if "resp_psks" in vector else None
    assert psk == resp_psk
    expected_name = vector["protocol_name"].encode()
    assert expected_name == (noise.PROTOCOL_IKPSK2 if psk else noise.PROTOCOL_IK)

    initiator = noise.HandshakeState(
        initiator=True,
        s=noise.private_key(bytes.fromhex(vector["init_static"])),
        rs=bytes.fromhex(vector["init_remote_static"]),
        prologue=bytes.fromhex(vector["init_prologue"]),
        psk=psk,
        e=noise.private_key(bytes.fromhex(vector["init_ephemeral"])),
    )
    responder = noise.HandshakeState(
        initiator=False,
        s=noise.private_key(bytes.fromhex(vector["resp_static"])),
        prologue=bytes.fromhex(vector["resp_prologue"]),
        psk=resp_psk,
        e=noise.private_key(bytes.fromhex(vector["resp_ephemeral"])),
    )
    messages = vector["messages"]
    assert len(messages) == 6

    # message 1: initiator -> responder (e, es, s, ss)
    m1 = messages[0]
    out = initiator.write_message(bytes.fromhex(m1["payload"]))
    assert out.hex() == m1["ciphertext"]
    assert responder.read_message(out).hex() == m1["payload"]
    assert responder.remote_static == initiator.s_public

    # message 2: responder -> initiator (e, ee, se[, psk])
    m2 = messages[1]
    out = responder.write_message(bytes.fromhex(m2["payload"]))
    assert out.hex() == m2["ciphertext"]
    assert initiator.read_message(out).hex() == m2["payload"]

    assert initiator.finished and responder.finished
    assert initiator.get_handshake_hash().hex() == vector["handshake_hash"]
    assert responder.get_handshake_hash().hex() == vector["handshake_hash"]

    # transport messages under Split()
    i_send, i_recv = initiator.symmetric_state.split()
    r_recv, r_send = responder.symmetric_state.split()
    for index, message in enumerate(messages[2:]):
        sender, receiver = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
        ciphertext = sender.encrypt_with_ad(b"", bytes.fromhex(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert receiver.decrypt_with_ad(b"", ciphertext).hex() == message["payload"]
    # split_keys() gives the same keys, oriented per side
    assert initiator.split_keys() == responder.split_keys()[::-1]


def _pair(psk: bytes | None = None) -> tuple[noise.HandshakeState, noise.HandshakeState]:
    server, server_public = noise.generate_keypair()
    client, _ = noise.generate_keypair()
    i = noise.HandshakeState(initiator=True, s=client, rs=server_public, prologue=b"p", psk=psk)
    r = noise.HandshakeState(initiator=False, s=server, prologue=b"p", psk=psk)
    return i, r


def test_tampered_message_fails_without_secret_in_text() -> None:
    i, r = _pair()
    m1 = bytearray(i.write_message(b"hello"))
    m1[40] ^= 1
    with pytest.raises(noise.NoiseError) as info:
        r.read_message(bytes(m1))
    assert str(info.value) == "authentication failed"


def test_wrong_server_key_fails_at_responder() -> None:
    _, other_public = noise.generate_keypair()
    server, _ = noise.generate_keypair()
    client, _ = noise.generate_keypair()
    i = noise.HandshakeState(initiator=True, s=client, rs=other_public)
    r = noise.HandshakeState(initiator=False, s=server)
    with pytest.raises(noise.NoiseError):
        r.read_message(i.write_message(b""))


def test_prologue_mismatch_fails() -> None:
    server, server_public = noise.generate_keypair()
    client, _ = noise.generate_keypair()
    i = noise.HandshakeState(initiator=True, s=client, rs=server_public, prologue=b"v2")
    r = noise.HandshakeState(initiator=False, s=server, prologue=b"v1")
    with pytest.raises(noise.NoiseError):
        r.read_message(i.write_message(b""))


def test_psk_mismatch_fails_at_initiator() -> None:
    server, server_public = noise.generate_keypair()
    client, _ = noise.generate_keypair()
    i = noise.HandshakeState(initiator=True, s=client, rs=server_public, psk=bytes(32))
    r = noise.HandshakeState(initiator=False, s=server, psk=b"\x01" * 32)
    # The responder reads message 1 (the psk is mixed before the 'e' only into the key chain,
    # so message 1 already differs) and fails, or the initiator fails on message 2.
    with pytest.raises(noise.NoiseError):
        r.read_message(i.write_message(b""))
        i.read_message(r.write_message(b""))


def test_truncated_messages_fail_cleanly() -> None:
    i, r = _pair()
    m1 = i.write_message(b"x")
    for cut in (0, 10, 32, 60, 79):
        _, r2 = _pair()
        with pytest.raises(noise.NoiseError):
            r2.read_message(m1[:cut])
    r.read_message(m1)
    m2 = r.write_message(b"")
    with pytest.raises(noise.NoiseError):
        i.read_message(m2[:40])


def test_rekey_matches_spec_definition() -> None:
    key = bytes(range(32))
    expected = noise.encrypt(key, noise.MAX_NONCE, b"", bytes(32))[:32]
    assert noise.rekey(key) == expected
    assert noise.rekey(key) != key


def test_hmac_hash_matches_stdlib() -> None:
    import hashlib
    import hmac

    for key in (b"", b"k", bytes(32), bytes(range(64)), bytes(range(100))):
        for data in (b"", b"\x01", bytes(range(200))):
            assert noise.hmac_hash(key, data) == hmac.new(key, data, hashlib.blake2s).digest()
