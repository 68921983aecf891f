"""Encryption and authentication on the simulator: tampering, forgery, replay, key pinning,
authorisation, plaintext refusal, key update, stateless reset, 0-RTT replay."""

from __future__ import annotations

import os

import pytest

from roamlink import Config
from roamlink.core import wire
from roamlink.crypto.noise import generate_keypair, public_key_of
from roamlink.errors import ConnectionReset, HandshakeFailed
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 50000)
ATTACKER = ("10.6.6.6", 6666)
RTT = 0.02


def _net(seed: int = 1, server_config: Config | None = None,
         client_config: Config | None = None, **server_kwargs: object
         ) -> tuple[SimNetwork, SimNode, SimNode]:
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=RTT / 2))
    server = net.add_node(SERVER, server_config, listen=True, **server_kwargs)  # type: ignore[arg-type]
    client = net.add_node(CLIENT, client_config)
    return net, server, client


def _short(data: bytes) -> bool:
    return wire.is_short_header(data[0])


def test_payload_is_encrypted_and_stats_say_so() -> None:
    net, server, client = _net()
    net.capture = True
    c, s = establish(net, client, server)
    secret = b"attack at dawn! " * 100
    pump = Pump(net, c, client, s, server, secret)
    assert run_pumps(net, [pump], 10) and pump.exact()
    assert all(b"attack at dawn" not in d for _, _, d in net.captured)
    assert c.stats().encrypted and s.stats().encrypted
    assert c.peer_key == server.dispatcher.server_crypto.public_key  # type: ignore[union-attr]


def test_every_bit_flipped_is_dropped_and_counted_transfer_exact() -> None:
    net, server, client = _net()
    net.capture = True
    c, s = establish(net, client, server)
    payload = os.urandom(2_000_000)
    pump = Pump(net, c, client, s, server, payload)
    net.run_until(lambda: (pump.step(), pump.received_bytes > 300_000)[1], 10)
    sample = next(d for src, _, d in reversed(net.captured)
                  if src == CLIENT and _short(d) and len(d) > 1000)
    before_auth = s.stats().auth_failures
    disp = server.dispatcher.stats
    before_other = disp.dropped_unknown_cid + disp.dropped_malformed + s.stats().dropped_packets
    received = s.stats().packets_received
    flips = 0
    for i in range(len(sample) * 8):
        forged = bytearray(sample)
        forged[i // 8] ^= 0x80 >> (i % 8)
        server.dispatcher.datagram_received(bytes(forged), CLIENT, net.now)
        flips += 1
    auth = s.stats().auth_failures - before_auth
    other = (disp.dropped_unknown_cid + disp.dropped_malformed + s.stats().dropped_packets
             - before_other)
    assert auth + other == flips  # every one dropped and counted ...
    assert auth >= flips - 8 * (1 + 8)  # ... all but header-routing flips by authentication
    assert s.stats().packets_received == received  # ... and none processed
    assert run_pumps(net, [pump], 60) and pump.exact()


def test_forged_packets_with_real_header_deliver_nothing() -> None:
    net, server, client = _net()
    net.capture = True
    c, s = establish(net, client, server)
    c.send(b"genuine")
    net.flush(client)
    net.run(until=net.now + 0.1)
    assert s.read() == b"genuine"
    real = next(d for src, _, d in reversed(net.captured) if src == CLIENT and _short(d))
    header = real[:1 + 8 + 8]
    failures = s.stats().auth_failures
    for n in range(50):
        # the next packet numbers, a plausible body, a wrong tag: PUSH, CLOSE, anything
        pn = int.from_bytes(header[9:17], "big") + 1 + n
        forged = header[:9] + pn.to_bytes(8, "big") + bytes([wire.PUSH, 0, 5]) + b"EVIL!" \
            + os.urandom(16)
        net.send(CLIENT, SERVER, forged)
        net.send(ATTACKER, SERVER, header[:9] + pn.to_bytes(8, "big")
                 + bytes([wire.CLOSE, 0, 0]) + os.urandom(16))
    net.run(until=net.now + 0.5)
    assert s.read() == b"" and s.is_established and s.remote_addr == CLIENT
    assert s.stats().auth_failures - failures == 100
    c.send(b" still fine")
    net.flush(client)
    net.run(until=net.now + 0.2)
    assert s.read() == b" still fine"


def test_replayed_packets_from_another_address_never_move_the_path() -> None:
    net, server, client = _net()
    net.capture = True
    c, s = establish(net, client, server)
    # the attacker races a copy of every client packet from its own address, ahead of it
    def race(data: bytes, src: object, dst: object) -> bool:
        if src == CLIENT and _short(data):
            net.deliver(ATTACKER, SERVER, data)
        return False
    net.link(CLIENT[0], SERVER[0]).drop_if = race
    pump = Pump(net, c, client, s, server, os.urandom(500_000))
    assert run_pumps(net, [pump], 30) and pump.exact()
    assert s.remote_addr == CLIENT and s.stats().path_changes == 0
    # late replays of everything the client sent, from the attacker
    for _, _, d in [x for x in net.captured if x[0] == CLIENT and _short(x[2])]:
        net.send(ATTACKER, SERVER, d)
    net.run(until=net.now + 1.0)
    assert s.remote_addr == CLIENT and s.stats().path_changes == 0


def test_wrong_server_key_fails_in_about_one_rtt() -> None:
    net, server, client = _net()
    _, other = generate_keypair()
    conn = client.connect(SERVER, server_key=other)
    start = net.now
    net.run_until(lambda: conn.is_closed, 5)
    assert isinstance(conn.error, HandshakeFailed)
    assert conn.error.reason == "server_key_mismatch"
    assert net.now - start <= 1.5 * RTT
    assert server.dispatcher.stats.connections_accepted == 0


def test_unpinned_client_learns_the_key_on_first_use() -> None:
    net, server, client = _net()
    conn = client.connect(SERVER, pin=False, early_data=b"hi")
    net.run_until(lambda: conn.is_established, 5)
    assert conn.peer_key == server.dispatcher.server_crypto.public_key  # type: ignore[union-attr]
    s = server.dispatcher.accept_queue[0]
    net.run_until(lambda: s.readable > 0, 5)
    assert s.read() == b"hi"


def test_unauthorised_client_refused_with_typed_error() -> None:
    allowed, allowed_public = generate_keypair()
    net, server, client = _net(authorized_clients=frozenset({allowed_public}))
    conn = client.connect(SERVER)  # a fresh client key: not authorised
    net.run_until(lambda: conn.is_closed, 5)
    assert isinstance(conn.error, HandshakeFailed)
    assert conn.error.reason == "client_not_authorized"
    assert server.dispatcher.stats.connections_accepted == 0
    ok = client.connect(SERVER, client_key=allowed.private_bytes_raw())
    net.run_until(lambda: ok.is_established, 5)
    s = server.dispatcher.accept_queue[0]
    assert s.peer_key == public_key_of(allowed)


@pytest.mark.parametrize("plain_side", ["client", "server"])
def test_plaintext_and_secure_refuse_each_other(plain_side: str) -> None:
    plain = Config(insecure_plaintext=True)
    net, server, client = _net(server_config=plain if plain_side == "server" else None,
                               client_config=plain if plain_side == "client" else None)
    conn = client.connect(SERVER)
    start = net.now
    net.run_until(lambda: conn.is_closed, 5)
    assert isinstance(conn.error, HandshakeFailed)
    assert conn.error.reason == "plaintext_mismatch"
    assert net.now - start <= 1.5 * RTT
    assert server.dispatcher.stats.connections_accepted == 0


def test_plaintext_on_both_ends_works_and_is_in_clear() -> None:
    plain = Config(insecure_plaintext=True)
    net, server, client = _net(server_config=plain, client_config=plain)
    net.capture = True
    c, s = establish(net, client, server)
    pump = Pump(net, c, client, s, server, b"visible " * 1000)
    assert run_pumps(net, [pump], 10) and pump.exact()
    assert any(b"visible" in d for _, _, d in net.captured)
    assert not c.stats().encrypted and c.peer_key is None


def test_psk_must_match() -> None:
    psk = Config(psk=b"\x07" * 32)
    net, server, client = _net(server_config=psk, client_config=psk)
    c, s = establish(net, client, server)
    assert c.is_established
    other = net.add_node(("10.0.0.3", 50000), Config(psk=b"\x08" * 32))
    conn = other.connect(SERVER)
    net.run_until(lambda: conn.is_closed, 5)
    assert isinstance(conn.error, HandshakeFailed)


def test_zero_rtt_data_is_delivered_once_even_when_the_syn_is_replayed() -> None:
    net, server, client = _net()
    net.capture = True
    conn = client.connect(SERVER, early_data=b"POST /pay")
    net.run_until(lambda: conn.is_established, 5)
    syn = next(d for src, _, d in net.captured if src == CLIENT and d[0] == 0xC1)
    for n in range(3):
        net.send((f"10.9.9.{n}", 1000 + n), SERVER, syn)
    net.run(until=net.now + 0.5)
    assert server.dispatcher.stats.connections_accepted == 1
    assert server.dispatcher.stats.replays_dropped == 3
    s = server.dispatcher.accept_queue[0]
    assert s.read() == b"POST /pay"


def test_key_update_across_a_migration_and_under_loss() -> None:
    cfg = Config(key_update_interval=0.05)
    net, server, client = _net(server_config=cfg, client_config=cfg, seed=3)
    for a, b in ((CLIENT[0], SERVER[0]), (SERVER[0], CLIENT[0])):
        net.set_link(a, b, LinkConfig(delay=RTT / 2, loss=0.05))
    c, s = establish(net, client, server)
    up = Pump(net, c, client, s, server, os.urandom(3_000_000))
    down = Pump(net, s, server, c, client, os.urandom(1_000_000))
    net.run_until(lambda: (up.step(), down.step(), up.received_bytes > 1_000_000)[2], 60)
    net.rebind(client, ("10.0.0.9", 40000))  # NAT rebinding mid-transfer
    assert run_pumps(net, [up, down], 120)
    assert up.exact() and down.exact()
    assert s.remote_addr == ("10.0.0.9", 40000)
    for conn in (c, s):
        st = conn.stats()
        assert st.key_updates_sent >= 3 and st.key_updates_received >= 3, st


def test_server_restart_gives_the_client_a_stateless_reset() -> None:
    net, server, client = _net()
    c, s = establish(net, client, server)
    c.send(b"x" * 1000)
    net.flush(client)
    net.run(until=net.now + 0.1)
    # the server process restarts (same key, every connection forgotten)
    del net.nodes[SERVER]
    restarted = net.add_node(SERVER, listen=True)
    assert restarted.dispatcher is not server.dispatcher
    start = net.now
    c.send(b"are you there?")
    net.flush(client)
    net.run_until(lambda: c.is_closed, 5)
    assert isinstance(c.error, ConnectionReset)
    assert net.now - start < 0.2
    assert restarted.dispatcher.stats.stateless_resets_sent >= 1
    assert client.dispatcher.stats.stateless_resets_received == 1
