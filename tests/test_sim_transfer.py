"""Reliable, ordered, byte-exact transfer over the simulated network."""

from __future__ import annotations

import os
import random

from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork

MiB = 1024 * 1024


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_8mib_each_way_with_loss_reordering_and_duplication() -> None:
    net = SimNetwork(seed=7, default_link=LinkConfig(delay=0.01, jitter=0.002, loss=0.05,
                                                     reorder=0.05, duplicate=0.02))
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    client = net.add_node(("10.0.0.2", 50000))
    c, s = establish(net, client, server)
    up = Pump(net, c, client, s, server, _payload(8 * MiB, 1))
    down = Pump(net, s, server, c, client, _payload(8 * MiB, 2))
    assert run_pumps(net, [up, down], timeout=600)
    assert up.exact() and down.exact()
    assert c.stats().retransmissions > 0 and net.link_stats("10.0.0.2", "10.0.0.1").lost > 0
    assert net.link_stats("10.0.0.2", "10.0.0.1").duplicated > 0


def test_zero_rtt_data_and_server_reply_in_syn_ack() -> None:
    from roamlink import Config
    from roamlink.core import wire
    from roamlink.core.handshake import make_client_handshake
    from roamlink.crypto.handshake import ServerCrypto
    from roamlink.crypto.noise import generate_keypair
    from roamlink.io.dispatcher import Dispatcher

    cfg = Config()
    client = Dispatcher(cfg)
    crypto = ServerCrypto(generate_keypair()[0])
    server = Dispatcher(cfg, accept_new=True, server_crypto=crypto)
    caddr, saddr = ("10.0.0.2", 5000), ("10.0.0.1", 4433)
    conn = client.connect(saddr, 0.0, early_data=b"GET /",
                          client_handshake=make_client_handshake(None, crypto.public_key, None))
    [(syn, _)] = conn.datagrams_to_send(0.0)
    assert syn[0] == wire.LONG_FORM | wire.FIXED_BIT | wire.SYN
    assert len(syn) == cfg.max_datagram_size  # padded SYN with the data
    assert b"GET /" not in syn  # encrypted
    srv = server.datagram_received(syn, caddr, 0.01)
    assert srv is not None and srv.read() == b"GET /"  # 0-RTT: data in the first packet
    srv.send(b"200 OK")  # the server writes before its SYN-ACK leaves: the reply rides in it
    [(syn_ack, addr)] = srv.datagrams_to_send(0.01)
    assert addr == caddr and syn_ack[0] == wire.LONG_FORM | wire.FIXED_BIT | wire.SYN_ACK
    assert b"200 OK" not in syn_ack
    assert client.datagram_received(syn_ack, saddr, 0.02) is conn
    assert conn.is_established and conn.read() == b"200 OK"


def test_handshake_survives_lost_syn_and_syn_ack() -> None:
    net = SimNetwork(seed=5)
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    client = net.add_node(("10.0.0.2", 50000))
    dropped = {"syn": 0, "synack": 0}

    def drop_first(kind: int, key: str):  # type: ignore[no-untyped-def]
        def f(data: bytes, src: object, dst: object) -> bool:
            if data[0] == kind and dropped[key] < 2:
                dropped[key] += 1
                return True
            return False
        return f

    net.link("10.0.0.2", "10.0.0.1").drop_if = drop_first(0xC1, "syn")
    net.link("10.0.0.1", "10.0.0.2").drop_if = drop_first(0xC2, "synack")
    c, s = establish(net, client, server, timeout=10)
    assert dropped == {"syn": 2, "synack": 2}
    assert server.dispatcher.stats.connections_accepted == 1  # retransmitted SYNs: one conn
    pump = Pump(net, c, client, s, server, os.urandom(100_000))
    assert run_pumps(net, [pump], 30) and pump.exact()


def test_many_connections_on_one_server_socket() -> None:
    net = SimNetwork(seed=11, default_link=LinkConfig(delay=0.005, loss=0.02))
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    pumps = []
    for i in range(50):
        client = net.add_node((f"10.1.{i // 200}.{i % 200 + 1}", 40000 + i))
        c, s = establish(net, client, server)
        pumps.append(Pump(net, c, client, s, server, _payload(20_000 + i, i)))
    assert run_pumps(net, pumps, 60)
    assert all(p.exact() for p in pumps)
    assert len({c.local_cid for c in server.connections()}) == 50


def test_several_connections_from_one_client_socket() -> None:
    net = SimNetwork(seed=12)
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    client = net.add_node(("10.0.0.2", 50000))
    pumps = []
    for i in range(3):
        c, s = establish(net, client, server)
        pumps.append(Pump(net, c, client, s, server, _payload(50_000, 100 + i)))
    assert run_pumps(net, pumps, 30) and all(p.exact() for p in pumps)


def test_flow_control_bounds_the_receiver_buffer() -> None:
    from roamlink import Config

    cfg = Config(receive_window=64 * 1024)
    net = SimNetwork(seed=2)
    server = net.add_node(("10.0.0.1", 4433), cfg, listen=True)
    client = net.add_node(("10.0.0.2", 50000), cfg)
    c, s = establish(net, client, server)
    c.send(b"z" * 1_000_000)
    net.flush(client)
    net.run(until=net.now + 5)  # the application never reads
    assert s.recv_buf.buffered <= 64 * 1024 + 1200
    assert c.stats().flow_control_blocked >= 1
    got = bytearray()
    for _ in range(2000):  # the application now reads, a little at a time
        got.extend(s.read(16 * 1024))
        net.flush(server)
        net.run(until=net.now + 0.01)
        if len(got) >= 1_000_000:
            break
    assert bytes(got) == b"z" * 1_000_000
