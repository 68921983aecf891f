"""Connection-ID bookkeeping: a retired peer CID never comes back."""

from __future__ import annotations

import itertools

from roamlink.core import wire
from roamlink.core.cids import ConnectionIds


def _ids() -> ConnectionIds:
    counter = itertools.count(1)
    return ConnectionIds(b"L" * 8, b"P" * 8, spare=4,
                         random_bytes=lambda n: next(counter).to_bytes(n, "big"))


def test_retransmitted_new_cid_does_not_resurrect_a_retired_one() -> None:
    ids = _ids()
    for seq in (1, 2):
        ids.on_new_cid(wire.NewConnectionIdFrame(seq, 0, bytes([seq]) * 8))
    reserved = ids.reserve_unused_peer_cid()
    assert reserved is not None and reserved[0] == 1
    assert ids.switch_to(1) == 0  # migrated: CID 0 retired
    failed = ids.reserve_unused_peer_cid()
    assert failed is not None and failed[0] == 2
    assert ids.release(2) == 2  # that path failed: CID 2 retired too
    # our ACKs of the first copies were lost: the peer sends both frames again
    ids.on_new_cid(wire.NewConnectionIdFrame(2, 0, b"\x02" * 8))
    ids.on_new_cid(wire.NewConnectionIdFrame(0, 0, b"P" * 8))
    assert ids.reserve_unused_peer_cid() is None  # nothing the peer stopped routing
    assert ids.spare_peer_cids == 0
    ids.on_new_cid(wire.NewConnectionIdFrame(3, 0, b"\x03" * 8))  # a real replacement
    fresh = ids.reserve_unused_peer_cid()
    assert fresh is not None and fresh[0] == 3


def test_retire_prior_to_retires_and_remembers() -> None:
    ids = _ids()
    for seq in (1, 2, 3):
        ids.on_new_cid(wire.NewConnectionIdFrame(seq, 0, bytes([seq]) * 8))
    assert sorted(ids.on_new_cid(wire.NewConnectionIdFrame(4, 3, b"\x04" * 8))) == [1, 2]
    ids.on_new_cid(wire.NewConnectionIdFrame(1, 0, b"\x01" * 8))  # late copy
    assert sorted(ids.peer) == [0, 3, 4]
