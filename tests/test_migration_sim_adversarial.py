"""Migration under harsher conditions than test_migration_sim.py (an independent second suite).

Deterministic simulator runs: an attacker racing genuine packets from spoofed addresses, a
spoofing flood while the genuine client rebinds, receive-only clients behind a rebinding NAT,
many rebindings in a row, and 1,000 transfers sharing server sockets with rebindings (some to
a new IP) at random moments.
"""

from __future__ import annotations

import random

import pytest

from roamlink.config import Config
from roamlink.core import wire
from roamlink.core.connection import Connection
from roamlink.core.events import Event, PathChanged
from roamlink.core.states import State
from roamlink.testing.packets import seal_as
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode

KiB = 1024
MiB = 1024 * KiB
SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 50000)

Addr = tuple[str, int]


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _events(conn: Connection) -> list[Event]:
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def _setup(seed: int, link: LinkConfig | None = None, config: Config | None = None
           ) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    # a 4 MB/s bottleneck: transfers last long enough for something to happen in the middle
    net = SimNetwork(seed=seed, default_link=link or LinkConfig(delay=0.01, rate=4e6))
    server = net.add_node(SERVER, config, listen=True)
    client = net.add_node(CLIENT, config)
    c, s = establish(net, client, server)
    _events(c)
    _events(s)
    return net, client, server, c, s


def _run_for(net: SimNetwork, pumps: list[Pump], seconds: float) -> None:
    end = net.now + seconds

    def check() -> bool:
        for p in pumps:
            p.step()
        return net.now >= end

    net.run_until(check, seconds + 1)
    assert not all(p.done for p in pumps), "the transfer ended before the event under test"


def _race_copies(net: SimNetwork, attackers: list[Addr], *, only_small: bool = False,
                 src: Addr = CLIENT, every: int = 1) -> dict[Addr, int]:
    """An attacker who sees the client's packets races a copy of them (of every ``every``-th
    one) to the server from a spoofed address of its own over a faster link, so the copy is
    the newest packet: a valid CID and a genuine packet number, the strongest spoof possible
    without keys. Returns the bytes sent from each spoofed address."""
    sent: dict[Addr, int] = {}
    todo = list(attackers)
    seen = [0]
    for host in {a[0] for a in attackers}:
        net.set_link(host, SERVER[0], LinkConfig(delay=0.001), both_ways=False)

    def copy(data: bytes, s: object, d: object) -> bool:
        if todo and s == src and data[0] == wire.SHORT and (not only_small or len(data) < 100):
            seen[0] += 1
            if seen[0] % every == 0:
                addr = todo.pop(0)
                sent[addr] = sent.get(addr, 0) + len(data)
                net.send(addr, SERVER, data)
        return False

    net.link(src[0], SERVER[0]).drop_if = copy
    return sent


# ---------------------------------------------------------------------------------------------
def test_raced_copy_from_spoofed_address_never_moves_the_path() -> None:
    net, client, server, c, s = _setup(4)
    net.capture = True
    up = Pump(net, c, client, s, server, _payload(2 * MiB, 30), eof=False)
    down = Pump(net, s, server, c, client, _payload(2 * MiB, 31), eof=False)
    _run_for(net, [up, down], 0.2)
    attacker = ("6.6.6.6", 666)
    received = _race_copies(net, [attacker])
    _run_for(net, [up, down], 0.05)
    assert received and s.state is State.VALIDATING_PATH  # validating the attacker's address
    assert run_pumps(net, [up, down], timeout=300)
    assert up.exact() and down.exact()  # ...while the old path carried the data
    assert net.run_until(lambda: not s.paths.candidates, 5)
    assert s.remote_addr == CLIENT and s.stats().path_changes == 0
    assert s.state is State.ESTABLISHED
    to_attacker = sum(len(d) for _, dst, d in net.captured if dst == attacker)
    assert 0 < to_attacker <= 3 * received[attacker]


def test_flood_of_small_spoofed_copies_is_bounded_per_address() -> None:
    net, client, server, c, s = _setup(5, config=Config(max_candidate_paths=3))
    net.capture = True
    down = Pump(net, s, server, c, client, _payload(2 * MiB, 6))  # the client sends small ACKs
    _run_for(net, [down], 0.1)
    attackers: list[Addr] = [(f"6.6.{i // 250}.{i % 250}", 1000 + i) for i in range(200)]
    received = _race_copies(net, attackers, only_small=True)
    most = 0

    def check() -> bool:
        nonlocal most
        down.step()
        most = max(most, len(s.paths.candidates))
        return down.done and not s.paths.candidates

    assert net.run_until(check, 120) and down.exact()
    assert len(received) == 200 and 1 <= most <= 3
    sent: dict[Addr, int] = {}
    for _, dst, d in net.captured:
        if dst in received:
            sent[dst] = sent.get(dst, 0) + len(d)
    assert sent  # some spoofed addresses were challenged...
    for addr, n in sent.items():
        assert n <= 3 * received[addr], (addr, n, received[addr])  # ...never with over 3x
    assert s.remote_addr == CLIENT and s.stats().path_changes == 0


def test_genuine_rebinding_during_a_spoofing_flood_still_migrates() -> None:
    """A flood that keeps every candidate slot busy must not lock the real client out: it
    is validated long before the spoofed candidates would time out."""
    cfg = Config(max_candidate_paths=3, path_validation_timeout=3.0)
    net, client, server, c, s = _setup(12, config=cfg)
    up = Pump(net, c, client, s, server, _payload(3 * MiB, 12))
    down = Pump(net, s, server, c, client, _payload(3 * MiB, 13))
    _run_for(net, [up, down], 0.1)
    attackers: list[Addr] = [(f"6.7.{i // 250}.{i % 250}", 2000 + i) for i in range(5000)]
    _race_copies(net, attackers, every=2)  # a spoofed copy of every other client packet
    _run_for(net, [up, down], 0.1)
    assert len(s.paths.candidates) == 3  # the slots are full of spoofed addresses
    new = ("10.0.0.2", 61000)
    net.rebind(client, new)
    _race_copies(net, attackers[2000:], src=new, every=2)  # the attacker follows the client
    start = net.now

    def moved() -> bool:
        up.step()
        down.step()
        return s.remote_addr == new

    assert net.run_until(moved, 10)
    assert net.now - start < 0.5  # simulated time; ~3.4 s if the flood held every slot
    assert s.paths.candidates_evicted > 0
    assert run_pumps(net, [up, down], 120), "the flood locked the migrated client out"
    assert up.exact() and down.exact()
    assert s.remote_addr == new


def test_receive_only_client_behind_rebinding_nat() -> None:
    """The client only sends ACKs, so after the rebinding nothing reaches it and it has
    nothing to acknowledge: it must notice the silence and reveal its new address."""
    net, client, server, c, s = _setup(6)
    down = Pump(net, s, server, c, client, _payload(1 * MiB, 7))
    _run_for(net, [down], 0.2)
    net.rebind(client, ("10.0.0.2", 60001))
    assert run_pumps(net, [down], 60) and down.exact()
    assert s.remote_addr == ("10.0.0.2", 60001)
    assert [e.reason for e in _events(s) if isinstance(e, PathChanged)] == ["passive"]


def test_twenty_two_passive_rebindings_in_a_row() -> None:
    net, client, server, c, s = _setup(11, LinkConfig(delay=0.01, rate=2e6, queue_packets=20))
    up = Pump(net, c, client, s, server, _payload(4 * MiB, 80))
    down = Pump(net, s, server, c, client, _payload(4 * MiB, 81))
    for i in range(22):
        _run_for(net, [up, down], 0.15)
        net.rebind(client, ("10.0.0.2", 30000 + i))
    assert run_pumps(net, [up, down], 300) and up.exact() and down.exact()
    assert s.remote_addr == ("10.0.0.2", 30021)
    # every rebinding is validated, unless its PATH_CHALLENGE or RESPONSE is dropped by the
    # 20-packet queue and the retry comes after the next rebinding (150 ms later), which then
    # replaces it. The queue is shallower than the path's BDP (33 packets), so the default BBR
    # (which does not back off on loss) loses a few percent of packets there: two such folds
    # with this seed (Vegas, which keeps the queue short: none)
    assert 20 <= s.stats().path_changes <= 22


@pytest.mark.parametrize("seed", range(20))
def test_1000_transfers_sharing_server_sockets_with_random_rebindings(seed: int) -> None:
    """20 networks (one per seed) x 50 clients on one server socket; each client's NAT
    rebinds (20%: to a new IP) at a random moment of the transfers, up- or downloads, with
    loss and reordering: every transfer ends hash-exact."""
    rng = random.Random(2026 * 100_000 + seed)  # the scenario; the network draws from ``seed``
    loss = rng.choice([0.0, 0.01, 0.03, 0.05])
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=rng.uniform(0.002, 0.02),
                                                        loss=loss, reorder=0.02))
    server = net.add_node(SERVER, listen=True)
    pumps: list[Pump] = []
    conns: list[tuple[SimNode, Connection]] = []
    rebinds: list[tuple[SimNode, bool, float, int]] = []
    for i in range(50):
        client = net.add_node((f"10.1.{seed}.{i + 1}", 40000 + i))
        c, s = establish(net, client, server)
        size = rng.randint(1, 48 * KiB)
        if rng.random() < 0.5:
            pumps.append(Pump(net, c, client, s, server, rng.randbytes(size)))
        else:
            pumps.append(Pump(net, s, server, c, client, rng.randbytes(size)))
        conns.append((client, s))
        rebinds.append((client, rng.random() < 0.2, rng.uniform(0.0, 0.15), i))
    start = net.now
    for client, new_ip, offset, i in rebinds:

        def rebind(node: SimNode = client, new_ip: bool = new_ip, i: int = i,
                   b: int = seed, n: SimNetwork = net) -> None:
            host = f"10.2.{b}.{i + 1}" if new_ip else node.addr[0]
            n.rebind(node, (host, 20000 + i))

        net.call_at(start + offset, rebind)
    assert run_pumps(net, pumps, 120), "did not finish"
    for p in pumps:
        assert p.exact()
    moved = sum(1 for node, s in conns if s.remote_addr == node.addr)
    # a rebinding after a transfer ended is never seen by the server; over these 20 seeds
    # 15..43 of each 50 transfers moved mid-way (604 of 1,000): at least 5 keeps the test
    # from passing without migrations, robustly
    assert moved >= 5, moved


def test_spoofed_challenge_from_unknown_address_is_not_amplified() -> None:
    """A PATH_CHALLENGE from an address that is neither the path in use nor a candidate
    (here: a packet that is not the newest, so it starts nothing) is answered, but never with
    more than 3x the bytes that address sent: a padded 1,200-byte response to a 26-byte
    spoofed challenge would make the server a traffic amplifier against the victim."""
    net, client, server, c, s = _setup(14)
    net.capture = True
    down = Pump(net, s, server, c, client, _payload(2 * MiB, 14))  # the client sends ACKs only
    _run_for(net, [down], 0.1)
    held: list[bytes] = []

    def hold_one(data: bytes, src: object, dst: object) -> bool:
        if not held and src == CLIENT and data[0] == wire.SHORT:
            held.append(data)
            return True
        return False

    net.link(CLIENT[0], SERVER[0]).drop_if = hold_one
    _run_for(net, [down], 0.012)  # later packets arrive: the held one is a gap, not newest
    net.link(CLIENT[0], SERVER[0]).drop_if = None
    assert held
    victim = ("10.99.0.1", 53)
    held_pn = int.from_bytes(held[0][9:17], "big")  # a packet number never received
    # the worst case: an authenticated challenge (sealed with the client's keys) under that
    # number, from a spoofed source
    forged = seal_as(c, [wire.PathChallengeFrame(b"\x01" * 8)], pn=held_pn)
    unvalidated = s.counters.unvalidated_packets
    net.send(victim, SERVER, forged)
    net.run(until=net.now + 0.05)
    assert s.counters.unvalidated_packets == unvalidated + 1  # it was processed (and answered)...
    assert not s.paths.candidates  # not the newest packet: no migration starts
    to_victim = sum(len(d) for _, dst, d in net.captured if dst == victim)
    assert 0 < to_victim <= 3 * len(forged), (to_victim, len(forged))
    assert run_pumps(net, [down], 60) and down.exact()


def test_migrate_succeeds_while_spoofed_candidates_fill_the_table() -> None:
    """Spoofed copies of the server's packets fill the client's candidate table; the
    application's own migrate() still gets a slot (it evicts a passive candidate)."""
    net, client, server, c, s = _setup(15, config=Config(max_candidate_paths=2))
    down = Pump(net, s, server, c, client, _payload(2 * MiB, 15))
    _run_for(net, [down], 0.1)
    spoofed = [(f"6.8.0.{i + 1}", 443) for i in range(50)]
    for host in {a[0] for a in spoofed}:
        net.set_link(host, CLIENT[0], LinkConfig(delay=0.001), both_ways=False)
    todo = list(spoofed)

    def copy(data: bytes, src: object, dst: object) -> bool:
        if todo and src == SERVER and data[0] == wire.SHORT:
            net.send(todo.pop(0), CLIENT, data)  # raced copy: the newest, from elsewhere
        return False

    net.link(SERVER[0], CLIENT[0]).drop_if = copy
    _run_for(net, [down], 0.01)
    assert len(c.paths.candidates) == 2 and all(
        k.reason == "passive" for k in c.paths.candidates.values())
    new_socket = net.add_node(("10.0.0.2", 52000))
    new_socket.adopt(c)
    c.migrate(net.now, socket_id=new_socket.socket_id)  # does not raise "too many validations"
    net.flush(client)
    assert net.run_until(lambda: c.paths.socket_id == new_socket.socket_id, 5)
    assert run_pumps(net, [down], 60) and down.exact()
    assert s.remote_addr == new_socket.addr


def test_cancel_migration_keeps_the_old_path_and_retires_the_reserved_cid() -> None:
    net, client, server, c, s = _setup(16, config=Config(path_validation_timeout=1.0))
    up = Pump(net, c, client, s, server, _payload(1 * MiB, 16))
    _run_for(net, [up], 0.05)
    cand = c.migrate(net.now, remote=("10.9.9.9", 4433))  # nobody there
    assert c.state is State.VALIDATING_PATH and cand.dcid_seq is not None
    c.cancel_migration(cand)
    assert c.state is State.ESTABLISHED and not c.paths.candidates
    assert cand.dcid_seq not in c.cids.peer  # seen on that path: retired, not reused
    net.flush(client)
    assert run_pumps(net, [up], 60) and up.exact()
    assert c.remote_addr == SERVER and c.stats().path_changes == 0
    assert not [e for e in _events(c) if isinstance(e, PathChanged)]
    c.cancel_migration(cand)  # twice: harmless


def test_a_path_left_on_purpose_can_carry_the_connection_again_later() -> None:
    """The client moved to the server's second address. Much later the server moves back to
    its first address (say the second one is going away): the client must follow, not
    ignore the first address forever because it once left it."""
    net, client, server, c, s = _setup(17, config=Config(path_validation_timeout=1.0))
    second = net.add_node(("10.0.0.11", 4433), share_with=server)
    up = Pump(net, c, client, s, server, _payload(4 * MiB, 17))
    _run_for(net, [up], 0.1)
    c.migrate(net.now, remote=second.addr)
    net.flush(client)
    assert net.run_until(lambda: c.remote_addr == second.addr, 5)
    net.run(until=net.now + 3.0)  # long after the move (the application pauses)
    s.migrate(net.now, socket_id=server.socket_id)  # the server answers from its first address
    net.flush(second)
    assert net.run_until(lambda: s.paths.socket_id == server.socket_id, 5)

    def followed() -> bool:
        up.step()
        return c.remote_addr == SERVER

    assert net.run_until(followed, 5), "the client ignores the address it once left"
    net.nodes.pop(second.addr)  # the second address goes away
    assert run_pumps(net, [up], 60) and up.exact()

