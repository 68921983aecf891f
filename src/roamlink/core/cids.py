"""Connection IDs: the spares each side hands its peer, and their retirement.

Every packet carries the receiver's CID. A connection that changes path on purpose must switch
to a CID never seen on the old path, or an observer could link the two paths; a path probe
uses a spare too. So each side issues its peer ``Config.spare_cids`` extra CIDs
(NEW_CONNECTION_ID, numbered by a sequence number), the peer retires one when it stops using
it (RETIRE_CONNECTION_ID), and the issuer replaces every retired CID at once: the supply never
runs out, however many migrations happen.

Two halves live here: :class:`CidManager` keeps *our* CIDs (issued, routed by the socket
layer, retired on request) and the *peer's* CIDs (spares we may switch to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import ProtocolViolation
from . import wire

logger = logging.getLogger("roamlink.cids")

#: Close code for a peer that abuses NEW_CONNECTION_ID / RETIRE_CONNECTION_ID.
CID_ERROR = 11


class CidManager:
    """Issues, routes and retires connection IDs for one connection.

    ``routing_changes`` is the connection's list that the dispatcher applies: every CID we
    issue is added there (so the socket routes it), every CID the peer retires is removed.
    ``frames`` collects NEW_CONNECTION_ID / RETIRE_CONNECTION_ID frames to send.
    """

    def __init__(self, local_cid: bytes, spare_cids: int, cid_length: int,
                 random_bytes: Callable[[int], bytes],
                 routing_changes: list[tuple[bool, bytes]]) -> None:
        self._random = random_bytes
        self._cid_length = cid_length
        self._spares = spare_cids
        self._routes = routing_changes
        # ours: sequence number -> CID (sequence 0 is the handshake CID)
        self.local: dict[int, bytes] = {0: local_cid}
        self._next_local_seq = 1
        self._issued = False
        # the peer's: sequence number -> CID we have not used yet (spares)
        self.peer_spares: dict[int, bytes] = {}
        self.peer_seq = 0  # sequence number of the peer CID we send with now
        self._peer_seen: set[int] = {0}
        self._peer_retired_below = 0
        self.handshake_peer_cid = b""
        self.frames: list[wire.Frame] = []
        self.retired_by_peer = 0
        self.issued_total = 0

    # ------------------------------------------------------------------ ours
    def issue_spares(self) -> None:
        """Once established: give the peer its spare CIDs."""
        if self._issued:
            return
        self._issued = True
        for _ in range(self._spares):
            self._issue_one()

    def _issue_one(self) -> None:
        seq = self._next_local_seq
        self._next_local_seq += 1
        cid = self._random(self._cid_length)
        while cid in self.local.values():
            cid = self._random(self._cid_length)
        self.local[seq] = cid
        self.issued_total += 1
        self._routes.append((True, cid))
        self.frames.append(wire.NewConnectionIdFrame(seq, 0, cid))

    def on_retire(self, frame: wire.RetireConnectionIdFrame) -> None:
        """The peer stopped using one of our CIDs: stop routing it and issue a replacement."""
        if frame.sequence >= self._next_local_seq:
            raise ProtocolViolation(CID_ERROR, "retired a connection ID never issued")
        cid = self.local.pop(frame.sequence, None)
        if cid is None:
            return  # a repeated retirement (our ACK was lost)
        self.retired_by_peer += 1
        if frame.sequence != 0:  # the handshake CID stays routed: late SYNs must find us
            self._routes.append((False, cid))
        self._issue_one()

    # ------------------------------------------------------------------ the peer's
    def on_new_cid(self, frame: wire.NewConnectionIdFrame) -> None:
        if frame.sequence in self._peer_seen:
            return  # a retransmission
        self._peer_seen.add(frame.sequence)
        if frame.sequence < self._peer_retired_below:
            self.frames.append(wire.RetireConnectionIdFrame(frame.sequence))
            return
        if len(self.peer_spares) >= 2 * self._spares + 4:
            raise ProtocolViolation(CID_ERROR, "too many connection IDs issued")
        self.peer_spares[frame.sequence] = frame.cid
        if frame.retire_prior_to > self._peer_retired_below:
            self._peer_retired_below = frame.retire_prior_to
            for seq in [s for s in self.peer_spares if s < frame.retire_prior_to]:
                del self.peer_spares[seq]
                self.frames.append(wire.RetireConnectionIdFrame(seq))

    def take_spare(self) -> tuple[int, bytes] | None:
        """Reserve the oldest unused peer CID (for a new path), or None if none is left."""
        if not self.peer_spares:
            return None
        seq = min(self.peer_spares)
        return seq, self.peer_spares.pop(seq)

    def switch_to(self, seq: int) -> None:
        """We now send with peer CID ``seq``: retire the one used before."""
        if seq == self.peer_seq:
            return
        self.frames.append(wire.RetireConnectionIdFrame(self.peer_seq))
        self.peer_seq = seq

    def discard(self, seq: int) -> None:
        """A reserved peer CID will not be used (its path failed): retire it."""
        if seq != self.peer_seq:
            self.frames.append(wire.RetireConnectionIdFrame(seq))

    def take_frames(self) -> list[wire.Frame]:
        out, self.frames = self.frames, []
        return out
