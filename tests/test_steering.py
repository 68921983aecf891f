"""CID steering: the CID layout, the SO_REUSEPORT filter program and its Python evaluation.

The filter is classic BPF handed to the kernel; these tests evaluate the very same program in
Python and check that it names, for every worker, the worker the CID generator put in the
CID, steers handshakes by the client's CID, and hands junk to the kernel's hash.
"""

from __future__ import annotations

import os
import random
import select
import socket
import sys
from collections import Counter

import pytest

from roamlink import Config, ConfigError
from roamlink.api.workers import decode_handover, encode_handover
from roamlink.core import wire
from roamlink.io.dispatcher import Dispatcher
from roamlink.io.steering import (
    KERNEL_HASH,
    SO_REUSEPORT,
    CidLayout,
    attach_reuseport_filter,
    reuseport_program,
    run_program,
    select_socket,
)
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork

LAYOUTS = [
    CidLayout(),
    CidLayout(cid_length=20),
    CidLayout(server_id=0xA7),
    CidLayout(cid_length=12, server_id=0x0102, server_id_length=2),
    CidLayout(cid_length=20, server_id=2**48 - 1, server_id_length=6),
]


def _short(cid: bytes, rest: bytes = bytes(9)) -> bytes:
    return bytes([wire.SHORT]) + cid + rest


@pytest.mark.parametrize("base", LAYOUTS, ids=repr)
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7, 16, 255, 256])
def test_generator_and_filter_agree_for_every_worker(base: CidLayout, workers: int) -> None:
    layout = CidLayout(base.cid_length, base.server_id, base.server_id_length, workers)
    prog = reuseport_program(layout)
    rng = random.Random(workers)
    for worker in range(workers):
        for _ in range(8):
            cid = layout.generate(worker, rng.randbytes)
            assert len(cid) == layout.cid_length
            assert layout.worker_of(cid) == worker
            assert layout.server_id_of(cid) == base.server_id
            assert run_program(prog, _short(cid)) == worker
            assert layout.datagram_worker(_short(cid)) == worker  # hand-over decides alike
            # RFC 8999 short header (fixed bit 0x40, other low bits in use): still steered
            assert run_program(prog, bytes([0x5F]) + cid + bytes(9)) == worker


def test_server_id_layout_is_quic_lb_plaintext() -> None:
    layout = CidLayout(cid_length=12, server_id=0x0102, server_id_length=2, workers=4)
    cid = layout.generate(3, random.Random(1).randbytes)
    assert cid[0] == 11  # config rotation 0b000, CID length - 1
    assert cid[1:3] == b"\x01\x02"
    assert cid[3] % 4 == 3
    assert layout.datagram_offset == 4  # a balancer reads the server id at bytes 2..3


def test_worker_byte_stays_random_beyond_the_worker() -> None:
    layout = CidLayout(workers=4)
    values = Counter(layout.generate(1)[0] for _ in range(4000))
    assert all(v % 4 == 1 for v in values)
    assert len(values) > 55  # most of the 64 possible values appear: entropy kept


def _syn(client_cid: bytes, dcid: bytes = b"", first: int = wire.SYN) -> bytes:
    return (bytes([first]) + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid
            + bytes([len(client_cid)]) + client_cid + bytes(1200))


@pytest.mark.parametrize("layout", [CidLayout(workers=4), CidLayout(server_id=1, workers=4)],
                         ids=repr)
def test_handshakes_go_by_the_client_cid_and_junk_to_the_kernel_hash(layout: CidLayout
                                                                     ) -> None:
    prog = reuseport_program(layout)
    for first in (wire.SYN, 0xC1, 0xC5, 0x80):  # version 1 and RFC 8999 long headers
        for last in range(8):
            cid = os.urandom(7) + bytes([last])
            assert run_program(prog, _syn(cid, first=first)) == last % 4
            assert run_program(prog, _syn(cid, b"\xaa" * 20, first)) == last % 4
    assert run_program(prog, _syn(b"")) == KERNEL_HASH  # no client CID
    syn = _syn(bytes(range(1, 9)))
    assert run_program(prog, syn[:14]) == KERNEL_HASH  # truncated inside the client CID
    assert run_program(prog, syn[:15]) == 8 % 4
    cid = layout.generate(2)
    packet = _short(cid)
    for n in range(min(7, layout.datagram_offset + 1)):
        assert run_program(prog, packet[:n]) == KERNEL_HASH
    assert run_program(prog, packet[:max(7, layout.datagram_offset + 1)]) == 2
    assert select_socket(prog, bytes(60), 4, kernel_hash=13) == 1  # dcid length 0, scid 0
    assert select_socket(prog, packet, 4, kernel_hash=13) == 2


@pytest.mark.parametrize("seed", range(4))
def test_program_and_python_rule_agree_on_any_datagram(seed: int) -> None:
    """Random bytes, random lengths, random length fields: the kernel program and the
    hand-over rule (``datagram_worker``) decide alike, and no load runs out of bounds."""
    rng = random.Random(seed)
    for workers in (1, 2, 3, 4, 8):
        layout = CidLayout(workers=workers, server_id=None if seed % 2 else 5)
        prog = reuseport_program(layout)
        for _ in range(1500):
            size = rng.choice([rng.randrange(0, 40), rng.randrange(0, 1300)])
            data = bytearray(rng.randbytes(size))
            if size > 6 and rng.random() < 0.5:
                data[5] = rng.randrange(0, 24)  # plausible dcid lengths
            if size > 0 and rng.random() < 0.3:
                data[0] = rng.choice([0x40, 0x41, 0x01, 0xC1])
            expected = layout.datagram_worker(bytes(data))
            got = run_program(prog, bytes(data))
            assert got == (KERNEL_HASH if expected is None else expected), (data.hex(), got)


def test_config_server_id_is_validated() -> None:
    assert Config(server_id=255).server_id == 255
    with pytest.raises(ConfigError, match="server_id"):
        Config(server_id=256)
    with pytest.raises(ConfigError, match="server_id"):
        Config(server_id=-1)
    with pytest.raises(ConfigError, match="cid_length"):
        Config(server_id=1, server_id_length=3)  # 8 bytes leave no 4-byte nonce
    assert Config(server_id=2**24 - 1, server_id_length=3, cid_length=9).server_id_length == 3
    with pytest.raises(ValueError):
        CidLayout(workers=0)
    with pytest.raises(ValueError):
        CidLayout(workers=2).generate(2)


def test_handover_message_round_trips() -> None:
    for addr in [("127.0.0.1", 4433), ("::1", 5, 0, 0), ("fe80::1", 65535, 7, 3)]:
        data = os.urandom(1200)
        assert decode_handover(encode_handover(data, addr)) == (data, addr)


def test_every_cid_a_worker_issues_names_it_also_after_migrations() -> None:
    """Handshake CID and every NEW_CONNECTION_ID: a client that moves keeps being steered."""
    layout = CidLayout(server_id=9, workers=4)
    config = Config(server_id=9)
    net = SimNetwork(seed=3, default_link=LinkConfig(delay=0.01, rate=2e6))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    server.dispatcher.cid_source = layout.generator(2, net.random_bytes)
    client = net.add_node(("10.0.0.2", 50000), config)
    net.capture = True
    c, s = establish(net, client, server)
    pump = Pump(net, c, client, s, server, random.Random(3).randbytes(600_000))
    node = client
    for k in range(5):
        run_pumps(net, [pump], 0.05)
        new_node = net.add_node(("10.0.0.2", 52000 + k))
        new_node.adopt(c)
        c.migrate(net.now, socket_id=new_node.socket_id)
        net.flush(node)
        net.run_until(lambda n=new_node: s.remote_addr == n.addr, 5)
        node.dispatcher.forget(c)
        node = new_node
    pump.sender_node = node
    assert run_pumps(net, [pump], 60) and pump.exact()
    assert s.cids.issued_total > 5
    dcids = {data[1:9] for src, dst, data in net.captured
             if dst == server.addr and data[0] == wire.SHORT}
    assert len(dcids) >= 6  # the handshake CID and the ones the client moved to
    for cid in [*dcids, *s.cids.local.values()]:
        assert layout.worker_of(cid) == 2 and layout.server_id_of(cid) == 9


def test_foreign_cid_is_offered_before_it_is_dropped() -> None:
    net = SimNetwork(seed=4)
    server = net.add_node(("10.0.0.1", 4433), listen=True)
    offered: list[bytes] = []

    def take(data: bytes, addr: object) -> bool:
        offered.append(data)
        return data[1] % 2 == 1  # "another worker's" CID

    server.dispatcher.foreign_cid = take
    stats = server.dispatcher.stats
    for first in (1, 2):
        server.dispatcher.datagram_received(_short(bytes([first]) * 8), ("10.0.0.2", 1), 0.0)
    assert len(offered) == 2
    assert stats.handed_over == 1 and stats.dropped_unknown_cid == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_ATTACH_REUSEPORT_CBPF")
def test_kernel_runs_the_filter_and_hashes_handshakes_evenly() -> None:
    """Real sockets: 4 sockets in a SO_REUSEPORT group with the filter. Short headers reach
    the socket their CID names; 1,000 SYNs (1,000 connections' handshakes, random client
    CIDs, each from its own port) spread over the 4 within +-20% of an even share; one SYN
    sent again from 20 other ports (a retransmission after a rebinding, or a replay) reaches
    the same socket every time."""
    layout = CidLayout(workers=4)
    group: list[socket.socket] = []
    try:
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", group[0].getsockname()[1] if group[1:] else 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            attach_reuseport_filter(group[0], reuseport_program(layout))
        except OSError as exc:
            pytest.skip(f"filter refused here: {exc}")
        target = group[0].getsockname()
        landed: Counter[int] = Counter()
        client_cids = random.Random(1000)
        steered_ok = 0
        for i in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                syn = _syn(client_cids.randbytes(8))  # (seeded: the spread is exact)
                client.sendto(syn, target)
                worker = i % 4
                if i < 200:
                    client.sendto(_short(layout.generate(worker)), target)
                for _ in range(2 if i < 200 else 1):
                    ready, _, _ = select.select(group, [], [], 2.0)
                    assert ready, "datagram lost on loopback"
                    data = ready[0].recv(2048)
                    index = group.index(ready[0])
                    if data[0] == wire.SYN:
                        landed[index] += 1
                    else:
                        steered_ok += index == worker
        assert steered_ok == 200
        assert sum(landed.values()) == 1000
        assert all(200 <= landed[w] <= 300 for w in range(4)), landed
        syn = _syn(os.urandom(8))
        owners = set()
        for _ in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                client.sendto(syn, target)
                ready, _, _ = select.select(group, [], [], 2.0)
                assert ready
                ready[0].recv(2048)
                owners.add(group.index(ready[0]))
        assert owners == {syn[-1201] % 4}
    finally:
        for sock in group:
            sock.close()


def test_a_single_process_server_puts_its_server_id_in_every_cid() -> None:
    config = Config(server_id=0x3C, cid_length=12)
    disp = Dispatcher(config, accept_new=True)
    layout = CidLayout.from_config(config)
    for _ in range(50):
        cid = disp.new_cid()
        assert len(cid) == 12 and cid[0] == 11 and layout.server_id_of(cid) == 0x3C
    assert Dispatcher(Config()).cid_source is os.urandom  # default: fully random CIDs
