"""Malformed and hostile datagrams: dropped and counted, never a crash, never another's harm."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roamlink import Config
from roamlink.core import wire
from roamlink.core.connection import Connection
from roamlink.core.states import State
from roamlink.testing.packets import seal_as
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _established(seed: int) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=0.005))
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    client = net.add_node(("10.0.0.2", 50000))
    c, s = establish(net, client, server)
    return net, server, client, c, s


def _bring_to(state: str, net: SimNetwork, c: Connection, s: Connection) -> None:
    if state == "closing":
        c.abort(net.now, 0x100, "x")
    elif state == "draining":
        c.send_eof()
        s.send_eof()
        for node in net.nodes.values():
            net.flush(node)
        net.run_until(lambda: c.state is State.DRAINING, 5)
    elif state == "closed":
        c.abort(net.now, 0x100, "x")
        net.run(until=net.now + 10)


def _mutations(rng: random.Random, valid: bytes, cid: bytes) -> list[bytes]:
    out = [b"", bytes([0x40]) + cid, valid[: rng.randrange(len(valid))]]
    for _ in range(20):
        b = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    out.append(bytes([0x40]) + cid + rng.randbytes(rng.randint(0, 100)))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["handshaking", "established", "closing", "draining", "closed"]),
       st.lists(st.binary(max_size=300), max_size=20), st.integers(0, 2**32))
def test_connection_survives_random_datagrams_in_every_state(
        state: str, blobs: list[bytes], seed: int) -> None:
    rng = random.Random(seed)
    if state == "handshaking":
        net = SimNetwork(seed=seed)
        client = net.add_node(("10.0.0.2", 50000))
        conn = client.connect(("10.0.0.1", 4433))
        targets = [conn]
    else:
        net, server, client, c, s = _established(seed)
        _bring_to(state, net, c, s)
        targets = [c, s]
    before = [(conn.state, conn.remote_addr, conn.paths.socket_id, conn.peer_cid)
              for conn in targets]
    for conn in targets:
        cid = conn.local_cid
        valid = wire.encode_short_header(cid, 10**6) + wire.encode_frame(wire.PingFrame())
        for blob in blobs + _mutations(rng, valid, cid):
            conn.receive_datagram(blob, ("10.6.6.6", 666), net.now)
            conn.datagrams_to_send(net.now)
            conn.handle_timer(net.now + 0.001)
        conn.stats()
    # garbage from an address that never answers changes nothing that matters
    for conn, (state0, addr0, local0, peer_cid0) in zip(targets, before, strict=True):
        assert conn.remote_addr == addr0 and conn.paths.socket_id == local0
        assert conn.peer_cid == peer_cid0
        if state0 is State.HANDSHAKING:
            assert conn.state is State.HANDSHAKING
        elif state0 is State.ESTABLISHED:
            # a mutated packet with a valid CID may start a validation of the attacker's
            # address (it never answers), but the connection stays up on its path
            assert conn.is_established and conn.error is None
        else:
            assert conn.is_terminated
    if state == "established":
        for node in net.nodes.values():
            net.flush(node)  # re-arm the timers the direct calls above bypassed
        payload = rng.randbytes(200_000)
        pump = Pump(net, c, client, s, server, payload)
        back = Pump(net, s, server, c, client, payload[::-1])
        assert run_pumps(net, [pump, back], 60)
        assert pump.exact() and back.exact()
        assert c.remote_addr == before[0][1] and s.remote_addr == before[1][1]
        assert c.paths.path_changes == 0 and s.paths.path_changes == 0


def test_bad_input_for_one_connection_never_disturbs_another() -> None:
    net = SimNetwork(seed=4, default_link=LinkConfig(delay=0.005, loss=0.01))
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    a_node = net.add_node(("10.0.0.2", 50000))
    b_node = net.add_node(("10.0.0.3", 50000))
    a, sa = establish(net, a_node, server)
    b, sb = establish(net, b_node, server)
    rng = random.Random(9)
    attacker = ("10.6.6.6", 666)

    def garbage() -> None:  # hostile traffic aimed at connection A's CID, all along
        for _ in range(5):
            body = rng.randbytes(rng.randint(0, 80))
            net.send(attacker, server.addr, bytes([0x40]) + sa.local_cid + body)
            net.send(attacker, server.addr, rng.randbytes(rng.randint(0, 60)))
        if net.now < 30:
            net.call_at(net.now + 0.01, garbage)

    garbage()
    pumps = [Pump(net, a, a_node, sa, server, rng.randbytes(300_000)),
             Pump(net, b, b_node, sb, server, rng.randbytes(300_000))]
    assert run_pumps(net, pumps, 60)
    assert all(p.exact() for p in pumps)
    stats = server.dispatcher.stats
    assert stats.dropped_malformed + stats.dropped_unknown_cid > 0
    assert sb.stats().dropped_packets == 0  # B never saw any of it


def test_flow_control_violation_closes_only_the_offender() -> None:
    net, server, client, c, s = _established(1)
    # the client itself (it holds the keys) sends far beyond its credit
    bogus = seal_as(c, [wire.PushFrame(10**8, b"x")])
    net.send(client.addr, server.addr, bogus)
    net.run(until=net.now + 1)
    assert s.is_terminated and c.is_terminated  # a protocol violation is reported to the peer
    assert s.error is not None and "credit" in str(s.error)


def test_syn_floods_are_bounded_by_the_half_open_limits() -> None:
    """Forged SYNs fill the half-open table (its own bound, per source IP too), never the
    accept backlog, and expire after ``half_open_timeout``: a genuine client gets in."""
    # plaintext SYNs need no key, so they reach the half-open table (a secure listener
    # refuses SYNs without a valid mac1 before any state: see the end of this test)
    config = Config(backlog=16, max_half_open=32, max_half_open_per_source=4,
                    half_open_timeout=0.5, connect_timeout=5.0, insecure_plaintext=True)
    net = SimNetwork(seed=8)
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    rng = random.Random(1)

    def syn() -> bytes:
        raw = wire.encode_long_header(wire.PLAIN_SYN, 2, b"", rng.randbytes(8))
        return raw + bytes(1200 - len(raw))

    for i in range(100):  # 100 sources
        net.send((f"10.7.{i // 250}.{i % 250}", 1000 + i), server.addr, syn())
    for i in range(10):  # one source, many ports
        net.send(("10.9.9.9", 2000 + i), server.addr, syn())
    net.run(until=net.now + 0.1)
    disp = server.dispatcher
    stats = disp.stats
    assert stats.connections_accepted == 32 and len(disp.half_open) == 32
    assert stats.dropped_half_open_full == 100 + 10 - 32
    assert stats.dropped_backlog_full == 0 and disp.pending_established() == 0
    # under pressure (8 = a quarter of the table pending), all of them, the first ones
    # too, live only half_open_timeout, not connect_timeout
    net.run(until=net.now + 1.0)
    assert len(disp.half_open) == 0 and stats.half_open_expired == 32
    disp.accept_queue.clear()
    for i in range(10):
        net.send(("10.9.9.9", 3000 + i), server.addr, syn())
    net.run(until=net.now + 0.1)
    assert stats.dropped_per_source == 6 and len(disp.half_open) == 4
    client = net.add_node(("10.0.0.2", 50000), Config(insecure_plaintext=True))
    c, s = establish(net, client, server)  # a genuine client is not locked out
    assert c.is_established and s.is_established
    # short SYNs are refused: an unpadded SYN could be used to amplify
    net.send(("10.8.0.1", 1), server.addr,
             wire.encode_long_header(wire.PLAIN_SYN, 2, b"", rng.randbytes(8)))
    net.run(until=net.now + 0.5)
    assert stats.dropped_malformed == 1
    # a secure listener: SYNs without a valid mac1 open nothing and cost no key exchange
    secure = net.add_node(("10.0.0.9", 4433), Config(backlog=16), listen=True)
    for i in range(100):
        syn = wire.encode_long_header(wire.SYN, 2, b"", rng.randbytes(8))
        syn += bytes(1200 - len(syn))
        net.send((f"10.7.{i // 250}.{i % 250}", 1000 + i), secure.addr, syn)
    net.run(until=net.now + 0.5)
    assert secure.dispatcher.stats.connections_accepted == 0
    assert secure.dispatcher.stats.handshakes_rejected == 100


def test_forged_far_packet_number_is_dropped() -> None:
    net, server, client, c, s = _established(2)
    # even an authenticated packet (sealed with the client's keys) this far ahead is dropped
    forged = seal_as(c, [wire.PingFrame()], pn=2**63)
    s.receive_datagram(forged, client.addr, net.now)
    assert s.stats().dropped_packets == 1 and s.is_established
    pump = Pump(net, c, client, s, server, b"still fine" * 1000)
    assert run_pumps(net, [pump], 10) and pump.exact()
