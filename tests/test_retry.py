"""Handshake-flood defence in the simulator: stateless RETRY, half-open bounds, refusals."""

from __future__ import annotations

import random

from roamlink import Config
from roamlink.core import wire
from roamlink.errors import ConnectionRefused
from roamlink.testing.packets import flood_syn
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _key(server: SimNode) -> bytes:
    crypto = server.dispatcher.server_crypto
    assert crypto is not None
    return crypto.public_key


def test_always_retry_costs_one_round_trip_and_keeps_0rtt_data() -> None:
    net = SimNetwork(seed=1, default_link=LinkConfig(delay=0.02))
    server = net.add_node(("10.0.0.1", 4433), Config(retry_threshold=0), listen=True)
    client = net.add_node(("10.0.0.2", 50000))
    net.capture = True
    c, s = establish(net, client, server, early_data=b"hello before the handshake")
    assert 0.09 <= net.now <= 0.11  # one round trip (40 ms) more than without RETRY
    assert c.stats().handshake_retries == 1
    stats = server.dispatcher.stats
    assert stats.retries_sent == 1 and stats.retry_tokens_valid == 1
    assert s.read() == b"hello before the handshake"
    retries = [d for _, _, d in net.captured
               if d[0] == wire.LONG_FORM | wire.FIXED_BIT | wire.RETRY]
    syns = [d for _, _, d in net.captured if d[0] == wire.LONG_FORM | wire.FIXED_BIT | wire.SYN]
    assert len(retries) == 1 and len(syns) == 2
    # the repeated SYN is built again (the prologue binds the header, now with the token)
    assert syns[1][6:6 + syns[1][5]] == retries[0][15:]
    assert len(retries[0]) < len(syns[0]) // 10  # never an amplifier
    pump = Pump(net, c, client, s, server, random.Random(2).randbytes(300_000))
    assert run_pumps(net, [pump], 30) and pump.exact()


def test_flood_of_forged_syns_keeps_no_state_beyond_the_threshold() -> None:
    config = Config(retry_threshold=16, max_half_open=1024)
    net = SimNetwork(seed=2, default_link=LinkConfig(delay=0.01))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    rng = random.Random(3)
    disp = server.dispatcher
    key = _key(server)

    def flood() -> None:  # 2,000 forged SYNs a second from addresses that never answer
        # (the attacker knows the public key, so mac1 verifies and each SYN is a real Noise
        # message: the worst case; without the key they would be refused at mac1)
        for _ in range(20):
            src = (f"10.{rng.randrange(200)}.{rng.randrange(250)}.{rng.randrange(250)}",
                   rng.randrange(1024, 65535))
            net.send(src, server.addr, flood_syn(key, rng.randbytes(8)))
        if net.now < 3.0:
            net.call_at(net.now + 0.01, flood)

    flood()
    net.run(until=1.0)
    client = net.add_node(("10.0.0.2", 50000))
    start = net.now
    c, s = establish(net, client, server, timeout=1.0)
    assert net.now - start < 0.1 and c.stats().handshake_retries <= 1
    net.run(until=3.5)
    assert len(disp.half_open) <= 16
    assert disp.stats.retries_sent >= 5000
    # forged half-open handshakes expire after half_open_timeout (1 s): a few rounds of 16
    assert disp.stats.connections_accepted <= 16 * 4 + 1
    pump = Pump(net, c, client, s, server, rng.randbytes(200_000))
    assert run_pumps(net, [pump], 30) and pump.exact()


def test_forged_or_stolen_tokens_open_nothing() -> None:
    net = SimNetwork(seed=4, default_link=LinkConfig(delay=0.01))
    server = net.add_node(("10.0.0.1", 4433), Config(retry_threshold=0), listen=True)
    rng = random.Random(5)
    stats = server.dispatcher.stats
    key = _key(server)
    forged = flood_syn(key, rng.randbytes(8), dcid=rng.randbytes(20))
    net.send(("10.6.6.6", 1), server.addr, forged)
    # a genuine token, replayed from another address (or for another handshake)
    token = server.dispatcher.retry_tokens().mint(("10.0.0.2", 50000), b"c" * 8, net.now)
    net.send(("10.6.6.6", 2), server.addr, flood_syn(key, b"c" * 8, dcid=token))
    net.send(("10.0.0.2", 50000), server.addr, flood_syn(key, b"d" * 8, dcid=token))
    net.run(until=net.now + 0.1)
    assert stats.retry_tokens_invalid == 3 and stats.connections_accepted == 0
    # and the right one opens a connection
    net.send(("10.0.0.2", 50000), server.addr, flood_syn(key, b"c" * 8, dcid=token))
    net.run(until=net.now + 0.1)
    assert stats.retry_tokens_valid == 1 and stats.connections_accepted == 1
    # the token is checked after mac1: a SYN without the server's key never reaches it
    no_key = flood_syn(bytes(range(32)), b"e" * 8, dcid=token)
    net.send(("10.0.0.2", 50000), server.addr, no_key)
    net.run(until=net.now + 0.1)
    assert stats.retry_tokens_invalid == 3 and stats.retry_tokens_valid == 1


def test_a_client_accepts_one_retry_only() -> None:
    net = SimNetwork(seed=6, default_link=LinkConfig(delay=0.01))
    client = net.add_node(("10.0.0.2", 50000))
    c = client.connect(("10.0.0.1", 4433))  # nobody there: we play the server
    for i in range(3):
        net.send(("10.0.0.1", 4433), client.addr,
                 wire.encode_retry(c.handshake.version, c.local_cid, bytes([i]) * 20))
    net.run(until=net.now + 0.05)
    assert c.stats().handshake_retries == 1 and c.handshake.token == bytes(20)


def test_max_connections_refuses_at_once() -> None:
    net = SimNetwork(seed=7, default_link=LinkConfig(delay=0.01))
    server = net.add_node(("10.0.0.1", 4433), Config(max_connections=2), listen=True)
    for i in range(2):
        establish(net, net.add_node((f"10.0.1.{i}", 50000)), server)
    late = net.add_node(("10.0.2.1", 50000))
    c = late.connect(server.addr)
    start = net.now
    assert net.run_until(lambda: c.is_closed or c.is_terminated, 5)
    assert isinstance(c.error, ConnectionRefused) and "full" in str(c.error)
    assert net.now - start < 0.05  # one round trip, not connect_timeout
    assert server.dispatcher.stats.refused_max_connections == 1
