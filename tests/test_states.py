"""The state table: every documented path exists, nothing else is allowed."""

from __future__ import annotations

import pytest

from roamlink.core.states import TRANSITIONS, State, Trigger, next_state
from roamlink.errors import InvalidTransition


def test_lifecycle_paths() -> None:
    s = next_state(State.HANDSHAKING, Trigger.HANDSHAKE_DONE)
    assert s is State.ESTABLISHED
    s = next_state(s, Trigger.PATH_CANDIDATE)
    assert s is State.VALIDATING_PATH
    assert next_state(s, Trigger.PATH_FAILED) is State.ESTABLISHED
    assert next_state(s, Trigger.PATH_VALIDATED) is State.ESTABLISHED
    assert next_state(State.ESTABLISHED, Trigger.LOCAL_CLOSE) is State.CLOSING
    assert next_state(State.ESTABLISHED, Trigger.STREAMS_DONE) is State.DRAINING
    assert next_state(State.CLOSING, Trigger.DRAIN_DONE) is State.CLOSED
    assert next_state(State.DRAINING, Trigger.DRAIN_DONE) is State.CLOSED


def test_closed_is_terminal_and_draining_ignores_late_input() -> None:
    for trigger in Trigger:
        assert next_state(State.CLOSED, trigger) is State.CLOSED
    assert next_state(State.DRAINING, Trigger.PEER_CLOSE) is State.DRAINING


def test_invalid_transition_raises() -> None:
    with pytest.raises(InvalidTransition):
        next_state(State.HANDSHAKING, Trigger.PATH_VALIDATED)
    with pytest.raises(InvalidTransition):
        next_state(State.ESTABLISHED, Trigger.DRAIN_DONE)


def test_no_transition_leaves_closed() -> None:
    assert all(src is not State.CLOSED for src, _ in TRANSITIONS)
