"""Network paths: which peer address we send to, and how a new one is proven (PATH_CHALLENGE).

This module answers challenges from the peer. Validating a new path (passive and active
migration) builds on it.
"""

from __future__ import annotations

from .events import Address


class PathManager:
    """Owns the peer address in use and the path-validation exchanges."""

    def __init__(self, remote_addr: Address) -> None:
        self.remote_addr: Address = remote_addr
        self.path_changes = 0
        self._responses: list[tuple[Address, bytes]] = []

    def on_challenge(self, addr: Address, data: bytes) -> None:
        """Echo a challenge at once, on the path it came from."""
        if len(self._responses) < 8:  # bounded: a flood of challenges cannot grow memory
            self._responses.append((addr, data))

    def take_responses(self) -> list[tuple[Address, bytes]]:
        out, self._responses = self._responses, []
        return out
