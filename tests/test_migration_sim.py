"""Connection migration over the simulated network (deterministic, virtual time)."""

from __future__ import annotations

import random

import pytest

from roamlink.config import Config
from roamlink.core import wire
from roamlink.core.connection import Connection
from roamlink.core.events import Event, PathChanged, PathValidationFailed
from roamlink.core.states import State
from roamlink.errors import MigrationError
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode

KiB = 1024
MiB = 1024 * KiB
SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 50000)


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _events(conn: Connection) -> list[Event]:
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def _setup(seed: int = 1, link: LinkConfig | None = None, config: Config | None = None
           ) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    # a 4 MB/s bottleneck: transfers last long enough for something to happen in the middle
    net = SimNetwork(seed=seed, default_link=link or LinkConfig(delay=0.01, rate=4e6))
    server = net.add_node(SERVER, config, listen=True)
    client = net.add_node(CLIENT, config)
    c, s = establish(net, client, server)
    _events(c)
    _events(s)
    return net, client, server, c, s


def _frames(data: bytes, cid_length: int = 8) -> list[wire.Frame]:
    if data[0] != wire.SHORT:
        return []
    return wire.decode_frames(data[1 + cid_length + 8:])


def _has(data: bytes, kind: type) -> bool:
    try:
        return any(isinstance(f, kind) for f in _frames(data))
    except wire.MalformedPacket:
        return False


def _transfer(net: SimNetwork, client: SimNode, server: SimNode, c: Connection, s: Connection,
              size: int, seed: int, eof: bool = True) -> tuple[Pump, Pump]:
    up = Pump(net, c, client, s, server, _payload(size, seed), eof=eof)
    down = Pump(net, s, server, c, client, _payload(size, seed + 1), eof=eof)
    return up, down


def _run_until_time(net: SimNetwork, pumps: list[Pump], t: float) -> None:
    def check() -> bool:
        for p in pumps:
            p.step()
        return net.now >= t

    net.run_until(check, t - net.now + 1)
    assert not all(p.done for p in pumps), "the transfer ended before the event under test"


# ---------------------------------------------------------------------------------------------
def test_nat_rebinding_mid_transfer_with_loss_is_exact() -> None:
    net, client, server, c, s = _setup(2, LinkConfig(delay=0.01, loss=0.05, rate=4e6))
    up, down = _transfer(net, client, server, c, s, 2 * MiB, 10)
    _run_until_time(net, [up, down], net.now + 0.5)
    assert not up.done and not down.done  # the rebinding happens mid-transfer
    assert s.rtt.has_sample
    net.rebind(client, ("10.0.0.2", 61000))  # NAT: same IP, new port
    assert run_pumps(net, [up, down], timeout=300)
    assert up.exact() and down.exact()
    assert s.remote_addr == ("10.0.0.2", 61000)
    assert s.stats().path_changes == 1 and s.error is None
    changes = [e for e in _events(s) if isinstance(e, PathChanged)]
    assert len(changes) == 1
    assert changes[0].old_addr == CLIENT and changes[0].reason == "passive"
    assert changes[0].validation_time > 0
    assert s.rtt.has_sample  # a port-only change keeps the RTT estimate
    assert server.dispatcher.addr_map.get((("10.0.0.2", 61000), c.local_cid)) == s.local_cid


def test_new_ip_resets_congestion_and_rtt() -> None:
    net, client, server, c, s = _setup(3)
    up, down = _transfer(net, client, server, c, s, 4 * MiB, 20)
    resets: list[float] = []
    original = s.cc.on_path_change

    def spy() -> None:
        resets.append(net.now)
        original()

    s.cc.on_path_change = spy  # type: ignore[method-assign]
    _run_until_time(net, [up, down], net.now + 0.1)
    net.rebind(client, ("10.0.7.9", 50000))  # Wi-Fi -> 4G: a new IP
    assert run_pumps(net, [up, down], timeout=300)
    assert up.exact() and down.exact()
    assert s.remote_addr == ("10.0.7.9", 50000)
    assert len(resets) == 1 and s.stats().path_changes == 1


def _race_copies(net: SimNetwork, attackers: list[tuple[str, int]], only_small: bool = False
                 ) -> dict[tuple[str, int], int]:
    """An attacker that sees the client's packets races a copy of each to the server from a
    spoofed address of its own, over a faster link, so the copy is the newest packet (the
    strongest spoof without keys: it carries a valid CID and a genuine packet number)."""
    sent: dict[tuple[str, int], int] = {}
    todo = list(attackers)
    for host in {a[0] for a in attackers}:
        net.set_link(host, SERVER[0], LinkConfig(delay=0.001), both_ways=False)

    def copy(data: bytes, src: object, dst: object) -> bool:
        if todo and src == CLIENT and data[0] == wire.SHORT and (not only_small
                                                                 or len(data) < 100):
            addr = todo.pop(0)
            sent[addr] = sent.get(addr, 0) + len(data)
            net.inject(addr, SERVER, data)
        return False

    net.link(CLIENT[0], SERVER[0]).drop_if = copy
    return sent


def test_spoofed_source_cannot_move_the_path() -> None:
    net, client, server, c, s = _setup(4)
    net.capture = True
    up, down = _transfer(net, client, server, c, s, 2 * MiB, 30, eof=False)
    _run_until_time(net, [up, down], net.now + 0.2)
    attacker = ("6.6.6.6", 666)
    received = _race_copies(net, [attacker])
    _run_until_time(net, [up, down], net.now + 0.05)
    assert received and s.state is State.VALIDATING_PATH  # validating the attacker's address
    assert run_pumps(net, [up, down], timeout=300)
    assert up.exact() and down.exact()  # ...while the old path carried the data
    assert net.run_until(lambda: not s.paths.candidates, 5)
    assert s.remote_addr == CLIENT and s.stats().path_changes == 0
    failed = [e for e in _events(s) if isinstance(e, PathValidationFailed)]
    assert [f.addr for f in failed] == [attacker]
    assert s.state is State.ESTABLISHED
    to_attacker = sum(len(d) for src, dst, d in net.captured if dst == attacker)
    assert 0 < to_attacker <= 3 * received[attacker]


def test_amplification_bound_in_bytes_and_candidate_limit() -> None:
    cfg = Config(max_candidate_paths=3)
    net, client, server, c, s = _setup(5, config=cfg)
    net.capture = True
    down = Pump(net, s, server, c, client, _payload(2 * MiB, 6))  # client sends small ACKs
    _run_until_time(net, [down], net.now + 0.1)
    attackers = [(f"6.6.{i // 250}.{i % 250}", 1000 + i) for i in range(200)]
    received = _race_copies(net, attackers, only_small=True)
    most = 0

    def check() -> bool:
        nonlocal most
        down.step()
        most = max(most, len(s.paths.candidates))
        return down.done and not s.paths.candidates

    assert net.run_until(check, 120) and down.exact()
    assert len(received) == 200 and 1 <= most <= 3
    sent: dict[tuple[str, int], int] = {}
    for _, dst, d in net.captured:
        if dst in received:
            sent[dst] = sent.get(dst, 0) + len(d)
    assert sent  # some spoofed addresses were challenged...
    for addr, n in sent.items():
        assert n <= 3 * received[addr], (addr, n, received[addr])  # ...never with over 3x
    assert s.remote_addr == CLIENT and s.state is State.ESTABLISHED
    assert s.stats().path_changes == 0


def test_small_packets_from_new_address_validate_with_padded_probe() -> None:
    """Only ACKs (small) come from the rebound client: budget-limited probe, then padded."""
    net, client, server, c, s = _setup(6)
    net.capture = True
    down = Pump(net, s, server, c, client, _payload(1 * MiB, 7))
    _run_until_time(net, [down], net.now + 0.2)
    net.rebind(client, ("10.0.0.2", 60001))
    assert run_pumps(net, [down], 120) and down.exact()
    assert s.remote_addr == ("10.0.0.2", 60001)
    challenges = [d for _, dst, d in net.captured
                  if dst == ("10.0.0.2", 60001) and _has(d, wire.PathChallengeFrame)]
    assert challenges and len(challenges[-1]) == s.config.max_datagram_size


@pytest.mark.parametrize("victim", ["challenge", "response"])
def test_lost_challenge_or_response_is_retried(victim: str) -> None:
    net, client, server, c, s = _setup(7)
    new = ("10.0.0.2", 52000)
    dropped: list[bytes] = []

    def drop_first(kind: type):  # type: ignore[no-untyped-def]
        def f(data: bytes, src: object, dst: object) -> bool:
            if len(dropped) < 2 and _has(data, kind):
                dropped.append(data)
                return True
            return False
        return f

    if victim == "challenge":
        net.link(SERVER[0], CLIENT[0]).drop_if = drop_first(wire.PathChallengeFrame)
    else:
        net.link(CLIENT[0], SERVER[0]).drop_if = drop_first(wire.PathResponseFrame)
    up, down = _transfer(net, client, server, c, s, 512 * KiB, 40)
    _run_until_time(net, [up, down], net.now + 0.2)
    net.rebind(client, new)
    assert run_pumps(net, [up, down], 120)
    assert up.exact() and down.exact()
    assert len(dropped) == 2 and s.remote_addr == new
    assert s.paths.challenges_sent >= 3
    datas = [_frames(d)[0] for d in dropped]
    assert len({getattr(f, "data", None) for f in datas}) == 2  # fresh random bits each time


def test_validation_timeout_keeps_old_path() -> None:
    cfg = Config(path_validation_timeout=1.0)
    net, client, server, c, s = _setup(8, config=cfg)
    up, down = _transfer(net, client, server, c, s, 2 * MiB, 50, eof=False)
    _run_until_time(net, [up, down], net.now + 0.1)
    start = net.now
    c.migrate(net.now, ("10.9.9.9", 4433))  # nobody there
    net.flush(client)
    assert c.state is State.VALIDATING_PATH
    with pytest.raises(MigrationError):
        c.migrate(net.now, c.remote_addr)  # the path in use: refused at once
    assert run_pumps(net, [up, down], 300)
    assert up.exact() and down.exact()
    assert net.run_until(lambda: not c.paths.candidates, 5)
    failed = [e for e in _events(c) if isinstance(e, PathValidationFailed)]
    assert len(failed) == 1 and failed[0].reason == "validation timed out"
    assert c.remote_addr == SERVER and c.state is State.ESTABLISHED
    assert c.paths.challenges_sent >= 3  # retried before giving up
    assert net.now - start >= 1.0


def test_reordered_old_packet_after_migration_does_not_move_back() -> None:
    net, client, server, c, s = _setup(9)
    held: list[bytes] = []

    def hold_one(data: bytes, src: object, dst: object) -> bool:
        if src == CLIENT and not held and _has(data, wire.PushFrame):
            held.append(data)
            return True
        return False

    up, down = _transfer(net, client, server, c, s, 512 * KiB, 60)
    _run_until_time(net, [up, down], net.now + 0.1)
    net.link(CLIENT[0], SERVER[0]).drop_if = hold_one
    _run_until_time(net, [up, down], net.now + 0.02)
    net.link(CLIENT[0], SERVER[0]).drop_if = None
    assert held
    net.rebind(client, ("10.0.0.2", 53000))
    net.run_until(lambda: s.stats().path_changes == 1, 10)
    assert s.remote_addr == ("10.0.0.2", 53000)
    before = s.stats().packets_received
    net.inject(CLIENT, SERVER, held[0])  # the late packet from the old address
    net.run(until=net.now + 0.001)
    assert s.stats().packets_received == before + 1  # processed...
    assert s.remote_addr == ("10.0.0.2", 53000)  # ...but no move back
    assert not s.paths.candidates and s.state is State.ESTABLISHED
    assert run_pumps(net, [up, down], 120) and up.exact() and down.exact()
    assert s.stats().path_changes == 1


def test_twenty_five_active_migrations_rotate_cids() -> None:
    net, client, server, c, s = _setup(10, LinkConfig(delay=0.005, loss=0.01, rate=4e6))
    net.capture = True
    up, down = _transfer(net, client, server, c, s, 4 * MiB, 70)
    _run_until_time(net, [up, down], net.now + 0.05)
    seen_by_path: list[set[bytes]] = []
    for i in range(25):
        local = ("10.0.1.2", 40000 + i)
        client.add_address(local)
        mark = len(net.captured)
        c.migrate(net.now, local=local)
        net.flush(client)
        assert net.run_until(lambda: c.paths.local == local  # noqa: B023
                             and s.remote_addr == local, 10), i  # noqa: B023
        _run_until_time(net, [up, down], net.now + 0.05)
        dcids = {d[1:9] for src, dst, d in net.captured[mark:]
                 if src == local and d[0] == wire.SHORT}
        seen_by_path.append(dcids)
        previous = local if i == 0 else ("10.0.1.2", 40000 + i - 1)
        if i:
            client.remove_address(previous)
    assert run_pumps(net, [up, down], 300) and up.exact() and down.exact()
    assert c.stats().path_changes == 25 and s.stats().path_changes == 25
    for i in range(1, 25):  # a new CID on every path: old and new cannot be linked
        assert not (seen_by_path[i] & seen_by_path[i - 1]), i
    # retired CIDs were replaced: the supply never ran out
    assert s.cids.retired_by_peer >= 25 and len(s.cids.local) >= s.config.spare_cids
    assert len(server.dispatcher.connections) <= s.config.spare_cids + 3


def test_passive_rebinding_many_times_in_a_row() -> None:
    net, client, server, c, s = _setup(11, LinkConfig(delay=0.01, rate=2e6, queue_packets=20))
    up, down = _transfer(net, client, server, c, s, 4 * MiB, 80)
    for i in range(22):
        _run_until_time(net, [up, down], net.now + 0.15)
        net.rebind(client, ("10.0.0.2", 30000 + i))
    assert run_pumps(net, [up, down], 300) and up.exact() and down.exact()
    assert s.remote_addr == ("10.0.0.2", 30021)
    assert s.stats().path_changes == 22


def test_active_migration_to_a_new_server_address() -> None:
    net, client, server, c, s = _setup(12)
    up, down = _transfer(net, client, server, c, s, 512 * KiB, 90)
    _run_until_time(net, [up, down], net.now + 0.1)
    net.rebind(server, ("10.0.0.5", 4433))  # the server moved; the client is told out of band
    c.migrate(net.now, ("10.0.0.5", 4433))
    net.flush(client)
    assert run_pumps(net, [up, down], 120) and up.exact() and down.exact()
    assert c.remote_addr == ("10.0.0.5", 4433)
    assert any(isinstance(e, PathChanged) for e in _events(c))


def test_peer_cid_frames_are_bounded() -> None:
    net, client, server, c, s = _setup(13)
    # retiring a CID never issued is a protocol violation, not a crash
    pkt = wire.encode_short_header(s.local_cid, s._largest_received + 1)
    pkt += wire.encode_frame(wire.RetireConnectionIdFrame(1000))
    net.inject(CLIENT, SERVER, pkt)
    net.run(until=net.now + 0.1)
    assert s.is_terminated


def test_randomized_1000_transfers_with_rebindings_are_exact() -> None:
    """1,000 transfers (20 networks x 50 clients), each client's NAT rebinding at a random
    moment, random loss and direction: every transfer ends hash-exact."""
    rng = random.Random(2026)
    total = moved = 0
    for batch in range(20):
        loss = rng.choice([0.0, 0.01, 0.03, 0.05])
        net = SimNetwork(seed=batch, default_link=LinkConfig(delay=rng.uniform(0.002, 0.02),
                                                             loss=loss, reorder=0.02))
        server = net.add_node(SERVER, listen=True)
        pumps: list[Pump] = []
        conns: list[tuple[SimNode, Connection]] = []
        rebinds: list[tuple[SimNode, bool, float, int]] = []
        for i in range(50):
            client = net.add_node((f"10.1.{batch}.{i + 1}", 40000 + i))
            c, s = establish(net, client, server)
            size = rng.randint(1, 48 * KiB)
            if rng.random() < 0.5:
                pumps.append(Pump(net, c, client, s, server, rng.randbytes(size)))
            else:
                pumps.append(Pump(net, s, server, c, client, rng.randbytes(size)))
            conns.append((client, s))
            rebinds.append((client, rng.random() < 0.2, rng.uniform(0.03, 0.15), i))
        start = net.now
        for client, new_ip, offset, i in rebinds:  # at a random moment of the transfers

            def rebind(node: SimNode = client, new_ip: bool = new_ip, i: int = i,
                       b: int = batch, n: SimNetwork = net) -> None:
                host = f"10.2.{b}.{i + 1}" if new_ip else node.addr[0]
                n.rebind(node, (host, 20000 + i))

            net.call_at(start + offset, rebind)
        assert run_pumps(net, pumps, 120), f"batch {batch} did not finish"
        for p in pumps:
            assert p.exact()
        total += len(pumps)
        moved += sum(1 for node, s in conns if s.remote_addr == node.addr)
    assert total == 1000
    print(f"{moved} of {total} transfers moved to the new address before ending")
    assert moved >= 500  # a rebinding after a transfer ended is never seen
