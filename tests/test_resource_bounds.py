"""Every structure a peer can grow has a bound, and a hostile peer cannot push it past it.

The "peer" here is the worst case: packets with the connection's real CID from its real
address (an attacker on the path, or a broken or hostile implementation), so each packet is
processed in full.
"""

from __future__ import annotations

import random

from roamlink import Config
from roamlink.core import cids, connection, wire
from roamlink.core.connection import Connection
from roamlink.core.states import State
from roamlink.io import dispatcher as dispatcher_module
from roamlink.testing.packets import seal_as
from roamlink.testing.scenarios import Pump, establish, run_pumps
from roamlink.testing.simnet import LinkConfig, SimNetwork, SimNode


def _pair(config: Config | None = None, seed: int = 1, rate: float | None = None
          ) -> tuple[SimNetwork, SimNode, SimNode, Connection, Connection]:
    net = SimNetwork(seed=seed, default_link=LinkConfig(delay=0.005, rate=rate,
                                                        queue_packets=1000))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    client = net.add_node(("10.0.0.2", 50000), config)
    c, s = establish(net, client, server)
    return net, server, client, c, s


class Peer:
    """Hand-made packets to ``conn`` from ``addr``, numbered past anything genuine, sealed
    with the keys of ``sender`` (the other end: a hostile implementation holds its keys)."""

    def __init__(self, net: SimNetwork, conn: Connection, addr: tuple[str, int],
                 sender: Connection) -> None:
        self.net, self.conn, self.addr, self.sender = net, conn, addr, sender
        self.pn = 1000

    def send(self, *frames: wire.Frame, pn: int | None = None,
             addr: tuple[str, int] | None = None) -> None:
        if pn is None:
            self.pn += 1
            pn = self.pn
        data = seal_as(self.sender, list(frames), pn=pn, dcid=self.conn.local_cid)
        self.conn.receive_datagram(data, addr or self.addr, self.net.now)
        self.conn.datagrams_to_send(self.net.now)


def test_reassembly_buffer_is_bounded_by_the_receive_window() -> None:
    config = Config(receive_window=64 * 1024)
    net, server, client, c, s = _pair(config)
    peer = Peer(net, s, client.addr, c)
    window = s.flow.local_max_data
    # tiny out-of-order segments with gaps, up to the edge of the credit
    offset = 1
    while offset + 1 <= window:
        peer.send(*(wire.PushFrame(o, b"x") for o in range(offset, min(offset + 80, window), 2)))
        offset += 80
    assert s.is_established
    assert s.recv_buf.buffered <= config.receive_window
    assert s.recv_buf.segment_count <= connection.MAX_SEGMENTS
    # one byte past the credit is a flow-control violation: the peer is cut off
    peer.send(wire.PushFrame(window, b"y"))
    assert s.is_terminated and s.error is not None and "credit" in str(s.error)


def test_segment_count_is_bounded_even_within_the_window() -> None:
    config = Config(receive_window=1 << 20)
    net, server, client, c, s = _pair(config)
    peer = Peer(net, s, client.addr, c)
    for base in range(1, 2 * connection.MAX_SEGMENTS * 2, 160):
        peer.send(*(wire.PushFrame(o, b"z") for o in range(base, base + 160, 2)))
    assert s.recv_buf.segment_count <= connection.MAX_SEGMENTS
    assert s.stats().dropped_packets > 0  # refused (unacknowledged), not stored


def test_ack_ranges_are_bounded() -> None:
    net, server, client, c, s = _pair()
    peer = Peer(net, s, client.addr, c)
    for i in range(2000):
        peer.send(wire.PingFrame(), pn=2000 + 2 * i)  # every other number: 2000 gaps
    assert len(s.acks.received) <= wire.MAX_ACK_RANGES
    assert s.is_established


def test_peer_cid_tables_and_retired_memory_are_bounded() -> None:
    net, server, client, c, s = _pair()
    peer = Peer(net, s, client.addr, c)
    rng = random.Random(5)
    for seq in range(1, 5000):
        retire = seq - 3 if seq % 7 else 0  # keeps asking us to retire older ones
        peer.send(wire.NewConnectionIdFrame(seq, max(retire, 0), rng.randbytes(8)))
        if seq % 50 == 0:
            # and makes us retire CIDs in scattered places (failed probes, migrations)
            s.cids.release(seq - 1)
    assert len(s.cids.peer) <= cids.MAX_PEER_CIDS
    assert s.cids.retired_ranges <= cids.MAX_RETIRED_RANGES
    assert len(s.packets.control) < 5000  # RETIRE frames wait to be sent, then leave
    s.datagrams_to_send(net.now)
    assert s.is_established
    # our own CIDs: the peer cannot make us issue more than spare + 1 at a time
    for seq in range(1, 6):
        peer.send(wire.RetireConnectionIdFrame(seq))
    assert len(s.cids.local) <= s.config.spare_cids + 1
    peer.send(wire.RetireConnectionIdFrame(10**6))  # never issued: a violation
    assert s.is_terminated


def test_retired_peer_cids_stay_retired() -> None:
    ids = cids.ConnectionIds(b"l" * 8, b"p" * 8, spare=4, random_bytes=random.randbytes)
    for seq in range(1, 200):
        ids.on_new_cid(wire.NewConnectionIdFrame(seq, 0, bytes([seq % 256]) * 8))
        ids.release(seq)  # retired at once (scattered single ranges)
        ids.switch_to(seq + 0)  # no-op when retired
    assert ids.retired_ranges <= cids.MAX_RETIRED_RANGES
    for seq in (1, 50, 150, 199):  # a retransmitted NEW_CONNECTION_ID never revives one
        ids.on_new_cid(wire.NewConnectionIdFrame(seq, 0, b"r" * 8))
        assert seq not in ids.peer
    ids.on_new_cid(wire.NewConnectionIdFrame(500, 0, b"n" * 8))
    assert 500 in ids.peer


def test_candidate_paths_and_path_responses_are_bounded() -> None:
    config = Config(max_candidate_paths=3)
    net, server, client, c, s = _pair(config)
    peer = Peer(net, s, client.addr, c)
    for i in range(1000):  # the newest packet, each from another (spoofed) address
        peer.send(wire.PathChallengeFrame(i.to_bytes(8, "big")),
                  addr=(f"10.{i // 250}.{i % 250}.9", 1000 + i))
    paths = s.paths
    assert len(paths.candidates) <= 3
    assert len(paths._responses) <= 8
    assert len(paths.abandoned) <= 8
    for cand in paths.candidates.values():
        assert len(cand.challenges) <= 8 and len(cand.pns) <= 32
    assert s.remote_addr == client.addr and s.is_established


def test_address_map_stays_one_entry_per_connection_across_rebindings() -> None:
    net, server, client, c, s = _pair(seed=4, rate=400_000)
    payload = random.Random(1).randbytes(6_000_000)  # 15 s at 400 kB/s
    pump = Pump(net, c, client, s, server, payload)
    for i in range(40):  # a NAT that re-maps the client again and again mid-transfer
        net.rebind(client, ("10.0.0.2", 51000 + i))
        run_pumps(net, [pump], 0.3)
    assert run_pumps(net, [pump], 60) and pump.exact()
    assert s.paths.path_changes >= 30
    assert len(server.dispatcher.addr_map) == 1


def test_ended_handshake_memory_is_bounded() -> None:
    assert dispatcher_module.ENDED_KEYS == 65536
    config = Config(draining_period=0.1)
    net = SimNetwork(seed=3, default_link=LinkConfig(delay=0.005))
    server = net.add_node(("10.0.0.1", 4433), config, listen=True)
    server.dispatcher.ended_keys_limit = 5
    for i in range(12):
        node = net.add_node((f"10.0.1.{i}", 50000), config)
        c, s = establish(net, node, server)
        c.abort(net.now)
        net.flush(node)
        net.run(until=net.now + 1.0)
        assert s.state is State.CLOSED
    assert len(server.dispatcher._ended) == 5
    assert not server.dispatcher.connections and not server.dispatcher.addr_map
