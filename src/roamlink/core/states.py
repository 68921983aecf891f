"""Connection states and every allowed transition, written down in one table (as h11 does)."""

from __future__ import annotations

from enum import Enum

from ..errors import InvalidTransition


class State(Enum):
    HANDSHAKING = "Handshaking"
    ESTABLISHED = "Established"
    VALIDATING_PATH = "ValidatingPath"
    CLOSING = "Closing"  # we sent CLOSE; we answer late packets with CLOSE, nothing else
    DRAINING = "Draining"  # closed; IDs stay reserved so late packets are ignored
    CLOSED = "Closed"


class Trigger(Enum):
    HANDSHAKE_DONE = "handshake done"
    PATH_CANDIDATE = "new path seen"  # a packet from a new address, or migrate()
    PATH_VALIDATED = "path validated"
    PATH_FAILED = "path validation failed"  # or all candidates abandoned
    LOCAL_CLOSE = "local abort"  # we sent CLOSE with an error code
    PEER_CLOSE = "peer sent CLOSE"
    STREAMS_DONE = "both FINs acknowledged"  # the four-way FIN/ACK close completed
    DRAIN_DONE = "draining period over"
    TIMEOUT = "idle or handshake timeout"


S, T = State, Trigger
_LIVE = (S.ESTABLISHED, S.VALIDATING_PATH)

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.HANDSHAKING, T.HANDSHAKE_DONE): S.ESTABLISHED,
    (S.HANDSHAKING, T.LOCAL_CLOSE): S.CLOSING,
    (S.HANDSHAKING, T.PEER_CLOSE): S.DRAINING,
    (S.HANDSHAKING, T.TIMEOUT): S.CLOSED,
    (S.ESTABLISHED, T.PATH_CANDIDATE): S.VALIDATING_PATH,
    (S.VALIDATING_PATH, T.PATH_CANDIDATE): S.VALIDATING_PATH,
    (S.VALIDATING_PATH, T.PATH_VALIDATED): S.ESTABLISHED,
    (S.VALIDATING_PATH, T.PATH_FAILED): S.ESTABLISHED,
    **{(s, T.LOCAL_CLOSE): S.CLOSING for s in _LIVE},
    **{(s, T.PEER_CLOSE): S.DRAINING for s in _LIVE},
    **{(s, T.STREAMS_DONE): S.DRAINING for s in _LIVE},
    **{(s, T.TIMEOUT): S.CLOSED for s in _LIVE},
    (S.CLOSING, T.PEER_CLOSE): S.DRAINING,
    (S.CLOSING, T.DRAIN_DONE): S.CLOSED,
    (S.CLOSING, T.TIMEOUT): S.CLOSED,
    (S.DRAINING, T.DRAIN_DONE): S.CLOSED,
    (S.DRAINING, T.TIMEOUT): S.CLOSED,
}

#: Triggers that may arrive in a state without changing it (e.g. a late CLOSE while draining).
IGNORED: frozenset[tuple[State, Trigger]] = frozenset(
    {(S.DRAINING, t) for t in T if (S.DRAINING, t) not in TRANSITIONS}
    | {(S.CLOSED, t) for t in T}
    | {(S.CLOSING, t) for t in (T.PATH_CANDIDATE, T.PATH_VALIDATED, T.PATH_FAILED,
                                T.LOCAL_CLOSE, T.STREAMS_DONE, T.HANDSHAKE_DONE)}
    | {(s, T.HANDSHAKE_DONE) for s in _LIVE}
)


def next_state(state: State, trigger: Trigger) -> State:
    new = TRANSITIONS.get((state, trigger))
    if new is not None:
        return new
    if (state, trigger) in IGNORED:
        return state
    raise InvalidTransition(f"{trigger.value!r} is not allowed in state {state.value}")
