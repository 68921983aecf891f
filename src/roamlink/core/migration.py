"""Connection migration: the connection's side of path validation and CID rotation.

:mod:`.paths` decides which paths are candidates and when one is proven, :mod:`.cids` which
connection IDs each path uses; this module is the glue that acts on their answers for one
connection: it starts passive and active migrations, sends the probes, switches the
connection to a validated path (congestion state, RTT, what was in flight) and keeps the
peer supplied with spare CIDs. The functions are the connection's own behaviour, kept in
the file named for it; they work on the :class:`~.connection.Connection` passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import MigrationError, ProtocolViolation
from . import delivery, wire
from .events import Address, PathChanged, PathValidationFailed
from .paths import Candidate, ValidationResult
from .states import State, Trigger

if TYPE_CHECKING:
    from .connection import Connection


def _host(addr: Address) -> str:
    """The IP part of an address: a change of it (not just the port) is a new network."""
    return addr[0]


# ---------------------------------------------------------------------- starting
def on_packet_from_other_path(conn: Connection, socket_id: int, addr: Address, size: int,
                              pn: int, is_newest: bool, now: float) -> None:
    """Passive migration: the peer's newest packet came over another path."""
    if not conn.is_established:
        return
    cand = conn.paths.on_packet(socket_id, addr, size, pn, is_newest, now, conn.recovery.rto())
    if cand is not None:
        conn.log.info("packet %s from new address %s: validating the path",
                      "(newest)" if is_newest else "", addr)
        conn._set_state(Trigger.PATH_CANDIDATE)


def migrate(conn: Connection, now: float, remote: Address | None, socket_id: int | None,
            timeout: float | None) -> Candidate:
    """Active migration (see ``Connection.migrate``)."""
    if not conn.is_established:
        raise MigrationError(f"cannot migrate in state {conn.state.value}")
    paths, cids = conn.paths, conn.cids
    remote = paths.remote_addr if remote is None else remote
    socket_id = paths.socket_id if socket_id is None else socket_id
    if paths.is_current(socket_id, remote):
        raise MigrationError("the connection already uses that path")
    reserved = cids.reserve_unused_peer_cid()
    if reserved is None:
        raise MigrationError("the peer has no spare connection ID for a new path yet")
    cand = paths.start(socket_id, remote, now, "active", conn.recovery.rto(), timeout,
                       unlimited_budget=True)
    if cand is None:
        retire_peer_cid(conn, cids.release(reserved[0]))
        raise MigrationError("too many path validations in progress")
    if cand.dcid_seq is None:
        cand.dcid_seq = reserved[0]
    else:
        retire_peer_cid(conn, cids.release(reserved[0]))
    conn.log.info("migrating to %s (socket %d)", remote, socket_id)
    conn._set_state(Trigger.PATH_CANDIDATE)
    return cand


def cancel(conn: Connection, cand: Candidate) -> None:
    """Give up an active migration still being validated (see ``cancel_migration``)."""
    if not conn.paths.abandon(cand):
        return
    if cand.dcid_seq is not None:
        retire_peer_cid(conn, conn.cids.release(cand.dcid_seq))
    conn.log.info("migration to %s cancelled", cand.addr)
    if not conn.paths.candidates and conn.state is State.VALIDATING_PATH:
        conn._set_state(Trigger.PATH_FAILED)


# ---------------------------------------------------------------------- probing
def path_probes(conn: Connection, socket_id: int, now: float,
                out: list[tuple[bytes, Address]]) -> None:
    """PATH_RESPONSEs owed and PATH_CHALLENGEs due on socket ``socket_id``."""
    paths = conn.paths
    build_probe = conn.packets.build_probe
    small = (wire.SHORT_HEADER_OVERHEAD + len(conn.peer_cid) + 9  # header + one path frame
             + conn.packets.tag_length)
    for addr, data in paths.take_responses(socket_id):
        size = paths.response_size(socket_id, addr, small)
        if size:
            out.append((build_probe(wire.PathResponseFrame(data), now,
                                    _dcid_for(conn, socket_id, addr), size), addr))
    if not paths.candidates or not conn.is_established:
        return
    for cand, data, size in paths.due_challenges(socket_id, now, small):
        out.append((build_probe(wire.PathChallengeFrame(data), now,
                                _dcid_for(conn, socket_id, cand.addr), size), cand.addr))


def _dcid_for(conn: Connection, socket_id: int, addr: Address) -> bytes:
    """The peer CID to probe a path with: the one reserved for it, else the one in use."""
    cand = conn.paths.candidates.get((socket_id, addr))
    peer = conn.cids.peer
    if cand is not None and cand.dcid_seq is not None and cand.dcid_seq in peer:
        return peer[cand.dcid_seq]
    return conn.peer_cid


# ---------------------------------------------------------------------- outcome
def on_path_validated(conn: Connection, result: ValidationResult, now: float) -> None:
    """Move to the proven path."""
    cand = result.candidate
    old_socket_id, old_addr = conn.paths.switch_to(cand, now)
    conn.acks.on_path_validated(cand.pns, cand.largest_pn, now)
    if cand.dcid_seq is not None:
        retire_peer_cid(conn, conn.cids.switch_to(cand.dcid_seq))
        conn.peer_cid = conn.cids.active_peer_cid
    if _host(old_addr) != _host(cand.addr):
        # a new network: its capacity and delay are unknown, start over
        conn.cc.on_path_change()
        conn.rtt.reset()
        conn.recovery.on_new_path()
        conn.rate_estimator.reset()
        if conn.pacer is not None:
            conn.packets.pace_at = None
    # what was in flight on the old path is resent on the new one (the receiver drops
    # duplicates), without counting it as congestion
    for pkt in conn.recovery.take_all_in_flight():
        delivery.requeue(conn, pkt)
    if old_addr != cand.addr:
        conn.addr_changes.append((old_addr, cand.addr))
    conn.acks.pending = True  # acknowledge on the new path at once
    conn.log.info("path validated in %.1f ms: %s -> %s (%s; local socket %d -> %d)",
                  result.elapsed * 1e3, old_addr, cand.addr, cand.reason, old_socket_id,
                  cand.socket_id)
    conn._events.append(PathChanged(old_addr, cand.addr, cand.reason, result.elapsed,
                                    old_socket_id, cand.socket_id))
    if not conn.paths.candidates:
        conn._set_state(Trigger.PATH_VALIDATED)


def expire_paths(conn: Connection, now: float) -> None:
    """Candidates whose validation timed out fail; the connection stays where it is."""
    for result in conn.paths.expire(now):
        cand = result.candidate
        if cand.dcid_seq is not None:
            retire_peer_cid(conn, conn.cids.release(cand.dcid_seq))
        conn.log.info("path validation to %s failed: %s", cand.addr, result.why)
        conn._events.append(PathValidationFailed(cand.addr, result.why, cand.socket_id))
    if not conn.paths.candidates and conn.state is State.VALIDATING_PATH:
        conn._set_state(Trigger.PATH_FAILED)


# ---------------------------------------------------------------------- connection IDs
def retire_peer_cid(conn: Connection, seq: int | None) -> None:
    if seq is not None:
        conn.packets.control.append(wire.RetireConnectionIdFrame(seq))


def issue_cids(conn: Connection) -> None:
    """Top up the spare CIDs the peer may migrate to."""
    issued = conn.cids.issue()
    if issued:
        conn.cid_version += 1
        for _, frame in issued:
            conn.packets.control.append(frame)


def on_new_connection_id(conn: Connection, frame: wire.NewConnectionIdFrame) -> None:
    for seq in conn.cids.on_new_cid(frame):
        retire_peer_cid(conn, seq)


def on_retire_connection_id(conn: Connection, frame: wire.RetireConnectionIdFrame) -> None:
    try:
        cid = conn.cids.on_retire(frame.sequence)
    except ValueError as exc:
        raise ProtocolViolation(wire.CloseCode.PROTOCOL_VIOLATION, str(exc)) from None
    if cid is not None:
        conn.cid_version += 1
        issue_cids(conn)  # replenish, so the peer can migrate again
