"""Connection IDs: the ones we issue (and route), and the spare ones the peer gave us.

Each side hands its peer spare CIDs in NEW_CONNECTION_ID frames. An endpoint that migrates on
purpose switches to an unused peer CID, so an observer cannot link its old and new paths, and
retires the old one with RETIRE_CONNECTION_ID; the peer then issues a replacement. That keeps
one connection able to migrate any number of times.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import wire
from .ranges import RangeSet

#: Peer CIDs we store at most (a peer cannot make us hoard them).
MAX_PEER_CIDS = 16
#: Ranges of retired peer sequence numbers remembered; anything below the oldest range
#: counts as retired too (sequence numbers only grow), so the memory stays a few hundred
#: bytes however often the peer makes us retire CIDs.
MAX_RETIRED_RANGES = 32


def _random_token(cid: bytes) -> bytes:
    """A token for an endpoint that never sends stateless resets (a client): unguessable.

    Drawn from the OS, not the connection's random source, so the simulator's seeded stream
    of CIDs and challenges stays what it was."""
    return os.urandom(wire.RESET_TOKEN_LENGTH)


class ConnectionIds:
    """Both sides' connection IDs for one connection."""

    def __init__(self, local_cid: bytes, peer_cid: bytes, *, spare: int,
                 random_bytes: Callable[[int], bytes],
                 is_taken: Callable[[bytes], bool] | None = None,
                 reset_token: Callable[[bytes], bytes] | None = None) -> None:
        self.cid_length = len(local_cid)
        #: the stateless-reset token of one of our CIDs (see crypto/reset.py)
        self._reset_token = reset_token or _random_token
        #: the peer's reset tokens by sequence: a datagram ending in one is a stateless reset
        self.peer_tokens: dict[int, bytes] = {}
        self.spare = spare
        self._random = random_bytes
        self._is_taken = is_taken or (lambda cid: False)
        self.local: dict[int, bytes] = {0: local_cid}  # sequence -> CID we receive on
        self._next_local = 1
        self.peer: dict[int, bytes] = {0: peer_cid} if peer_cid else {}
        self.peer_active = 0
        self._peer_reserved: set[int] = set()  # chosen for a path being validated
        #: peer CIDs we retired: a retransmitted NEW_CONNECTION_ID (our ACK of the first copy
        #: was lost) must not bring one back, or a later migration would probe with a CID the
        #: peer no longer routes and fail
        self._peer_retired = RangeSet()
        self._retired_below = 0  # older ranges forgotten: every sequence below counts retired
        self.issued_total = 1
        self.retired_by_peer = 0

    # ------------------------------------------------------------------ our CIDs
    def issue(self) -> list[tuple[bytes, wire.NewConnectionIdFrame]]:
        """Top our spare CIDs up to ``spare`` beyond the one in use; return the new ones."""
        out = []
        while len(self.local) < self.spare + 1:
            cid = self._random(self.cid_length)
            if cid in self.local.values() or self._is_taken(cid):
                continue
            seq = self._next_local
            self._next_local += 1
            self.local[seq] = cid
            self.issued_total += 1
            out.append((cid, wire.NewConnectionIdFrame(seq, 0, cid, self._reset_token(cid))))
        return out

    def reset_token(self, cid: bytes) -> bytes:
        """The stateless-reset token of our CID ``cid``."""
        return self._reset_token(cid)

    def on_retire(self, seq: int) -> bytes | None:
        """The peer stopped using our CID ``seq``: return it (to unroute), or None."""
        if seq >= self._next_local:
            raise ValueError(f"peer retired CID {seq} that was never issued")
        cid = self.local.pop(seq, None)
        if cid is not None:
            self.retired_by_peer += 1
        return cid

    # ------------------------------------------------------------------ peer CIDs
    @property
    def active_peer_cid(self) -> bytes:
        return self.peer[self.peer_active]

    def set_handshake_peer_cid(self, cid: bytes, reset_token: bytes | None = None) -> None:
        self.peer = {0: cid}
        self.peer_active = 0
        if reset_token is not None:
            self.peer_tokens[0] = reset_token

    def peer_reset_tokens(self) -> list[bytes]:
        """Tokens of the peer CIDs we may still use (a reset answers a packet sent to one)."""
        tokens = self.peer_tokens
        return [tokens[seq] for seq in self.peer if seq in tokens]

    def on_new_cid(self, frame: wire.NewConnectionIdFrame) -> list[int]:
        """Store a spare CID from the peer; return sequences it asked us to retire."""
        retire = [s for s in self.peer if s < frame.retire_prior_to and s != self.peer_active]
        for s in retire:
            del self.peer[s]
            self._forget(s)
        if (frame.sequence not in self.peer and not self._is_retired(frame.sequence)
                and len(self.peer) < MAX_PEER_CIDS):
            self.peer[frame.sequence] = frame.cid
            self.peer_tokens[frame.sequence] = frame.reset_token
        return retire

    def _forget(self, seq: int) -> None:
        self.peer_tokens.pop(seq, None)
        retired = self._peer_retired
        retired.add(seq, seq + 1)
        while len(retired) > MAX_RETIRED_RANGES:
            _, end = retired.pop_first()
            self._retired_below = max(self._retired_below, end)

    def _is_retired(self, seq: int) -> bool:
        return seq < self._retired_below or self._peer_retired.contains(seq)

    @property
    def retired_ranges(self) -> int:
        """Ranges of retired peer sequence numbers held (bounded by MAX_RETIRED_RANGES)."""
        return len(self._peer_retired)

    def reserve_unused_peer_cid(self) -> tuple[int, bytes] | None:
        """Pick a peer CID never used on any path (for a path we are about to probe)."""
        for seq in sorted(self.peer):
            if seq != self.peer_active and seq not in self._peer_reserved:
                self._peer_reserved.add(seq)
                return seq, self.peer[seq]
        return None

    def switch_to(self, seq: int) -> int | None:
        """Use peer CID ``seq`` from now on; return the sequence to retire (the old one)."""
        self._peer_reserved.discard(seq)
        if seq == self.peer_active or seq not in self.peer:
            return None
        old = self.peer_active
        self.peer_active = seq
        del self.peer[old]
        self._forget(old)
        return old

    def release(self, seq: int) -> int | None:
        """A reserved CID's path failed: it was seen on that path, so retire it too."""
        self._peer_reserved.discard(seq)
        if seq in self.peer and seq != self.peer_active:
            del self.peer[seq]
            self._forget(seq)
            return seq
        return None

    @property
    def spare_peer_cids(self) -> int:
        return len([s for s in self.peer if s != self.peer_active
                    and s not in self._peer_reserved])
