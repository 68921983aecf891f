"""Network paths: which peer address we send to, and how a new one is proven (PATH_CHALLENGE).

How a new path is validated
---------------------------
1. A *candidate* path appears in one of two ways:

   * passive: a packet arrives from an address other than ``remote_addr``, it is the newest
     packet so far (highest packet number; an old, reordered or replayed packet never moves
     the path) and it carries more than probing frames (so the peer's own probes from a new
     address do not drag us along before the peer itself has chosen that path);
   * active: the application calls ``migrate()`` (another peer address, or a new local socket).

2. We send PATH_CHALLENGE with 64 fresh random bits to the candidate, padded to the full
   datagram size so a path that cannot carry full-size datagrams is never validated. A
   challenge is repeated with *new* random bits on a timer that starts at one PTO and doubles,
   until ``Config.path_validation_timeout`` has passed since the candidate appeared.

3. Until a candidate is validated we send it at most 3x the bytes received from it
   (anti-amplification: a spoofed source address cannot turn us into a traffic cannon). When
   that budget is too small for a padded challenge, a smaller one goes out; its answer (the
   peer pads its PATH_RESPONSE) only shows reachability and refills the budget, and a padded
   challenge follows at once.

4. A PATH_RESPONSE counts only if its bits match a challenge sent to that candidate *and* it
   arrives from the candidate's address. Then the connection switches ``remote_addr``, the
   socket layer re-keys its address map (``addr_updates``, the seed's UpdateAddr), and every
   other candidate is abandoned. A candidate that times out is dropped and the connection
   simply stays on the old path, which carried data all along.

At most ``Config.max_candidate_paths`` candidates exist at once; a flood of spoofed
addresses evicts only other passive candidates, so memory and CPU stay bounded, and the
genuine peer (whose packets keep being the newest) is re-admitted by its next packet.

Sans-I/O like the rest of the core: the connection builds and sends the datagrams; this
module decides what to probe, when, and how big.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config
from .events import Address

logger = logging.getLogger("roamlink.paths")

#: Anti-amplification factor for unvalidated addresses.
AMPLIFICATION_FACTOR = 3
#: Unvalidated addresses whose byte counts are remembered (oldest forgotten first; forgetting
#: drops both counts together, so the 3x bound still holds overall).
_LEDGER_SIZE = 32
#: Pending PATH_RESPONSEs kept at most (a flood of challenges cannot grow memory).
_MAX_RESPONSES = 8
#: Smallest probe worth sending: header + one path frame.
MIN_PROBE_SIZE = 40


@dataclass(eq=False)
class Candidate:
    """A path being validated."""

    addr: Address
    local: object | None  # None: our current socket; otherwise the new socket's token
    reason: str  # "passive" or "active"
    started: float
    deadline: float
    dcid_seq: int | None = None  # the peer CID reserved for this path (None: current one)
    dcid: bytes | None = None
    challenges: dict[bytes, bool] = field(default_factory=dict)  # data -> was padded
    next_send: float = 0.0
    attempts: int = 0
    blocked: bool = False  # waiting for bytes from the address (amplification budget)
    reachable: bool = False  # an unpadded challenge was answered

    @property
    def key(self) -> tuple[object | None, Address]:
        return (self.local, self.addr)


class PathManager:
    """Owns the peer address in use, the candidates being validated, and the challenges."""

    def __init__(self, remote_addr: Address, config: Config | None = None,
                 random_bytes: Callable[[int], bytes] | None = None) -> None:
        import os

        self.config = config or Config()
        self._random = random_bytes or os.urandom
        self.remote_addr: Address = remote_addr
        #: token of the local socket in use (None: the one the connection started on)
        self.local: object | None = None
        self.path_changes = 0
        self.validations_failed = 0
        self.challenges_sent = 0
        self.candidates: dict[tuple[object | None, Address], Candidate] = {}
        self.failed: list[tuple[Candidate, str]] = []
        #: (old, new) address changes for the socket layer's address map (UpdateAddr)
        self.addr_updates: list[tuple[Address, Address]] = []
        #: datagrams that must leave from another local socket: (token, data, addr)
        self.alt_out: list[tuple[object, bytes, Address]] = []
        self._responses: list[tuple[Address, bytes]] = []
        self._ledger: OrderedDict[Address, list[int]] = OrderedDict()  # addr -> [recv, sent]

    # ------------------------------------------------------------------ amplification
    def budget(self, addr: Address) -> int | None:
        """Bytes we may still send to ``addr`` (None: validated, no limit)."""
        if addr == self.remote_addr:
            return None
        for cand in self.candidates.values():
            if cand.addr == addr and cand.reason == "active":
                return None  # our own application chose it: no spoofer is involved
        entry = self._ledger.get(addr)
        if entry is None:
            return 0
        return max(AMPLIFICATION_FACTOR * entry[0] - entry[1], 0)

    def on_sent(self, addr: Address, size: int) -> None:
        entry = self._ledger.get(addr)
        if entry is not None:
            entry[1] += size

    def _count_received(self, addr: Address, size: int) -> None:
        entry = self._ledger.get(addr)
        if entry is None:
            entry = self._ledger[addr] = [0, 0]
            if len(self._ledger) > _LEDGER_SIZE:
                self._ledger.popitem(last=False)
        else:
            self._ledger.move_to_end(addr)
        entry[0] += size

    # ------------------------------------------------------------------ candidates
    def on_packet(self, addr: Address, size: int, may_migrate: bool,
                  now: float) -> Candidate | None:
        """An accepted packet from ``addr``; returns a new passive candidate, if one starts."""
        if addr == self.remote_addr:
            return None
        self._count_received(addr, size)
        for cand in self.candidates.values():
            if cand.addr == addr:
                cand.blocked = False  # more budget: the next challenge may fit now
        if not may_migrate or (None, addr) in self.candidates:
            return None
        return self._add(Candidate(addr, None, "passive", now,
                                   now + self.config.path_validation_timeout, next_send=now))

    def start(self, addr: Address, local: object | None, now: float,
              timeout: float | None = None) -> Candidate | None:
        """Active migration: validate ``addr`` (from socket ``local``); None if no room."""
        key = (local, addr)
        existing = self.candidates.get(key)
        if existing is not None:
            existing.reason = "active"
            return existing
        limit = timeout if timeout is not None else self.config.path_validation_timeout
        return self._add(Candidate(addr, local, "active", now, now + limit, next_send=now))

    def _add(self, cand: Candidate) -> Candidate | None:
        if len(self.candidates) >= self.config.max_candidate_paths:
            victim = next((c for c in self.candidates.values() if c.reason == "passive"), None)
            if victim is None or (cand.reason == "passive" and victim.started >= cand.started):
                return None
            self._abandon(victim, "evicted by a newer candidate")
        self.candidates[cand.key] = cand
        logger.debug("validating %s path to %s", cand.reason, cand.addr)
        return cand

    def _abandon(self, cand: Candidate, reason: str) -> None:
        del self.candidates[cand.key]
        self.validations_failed += 1
        self.failed.append((cand, reason))

    def abandon_all(self, reason: str) -> None:
        for cand in list(self.candidates.values()):
            self._abandon(cand, reason)

    def take_failed(self) -> list[tuple[Candidate, str]]:
        out, self.failed = self.failed, []
        return out

    # ------------------------------------------------------------------ challenges
    def due_challenges(self, now: float, pto: float
                       ) -> list[tuple[Candidate, bytes, int]]:
        """Challenges to send now: ``(candidate, 8 random bytes, datagram size)``."""
        out: list[tuple[Candidate, bytes, int]] = []
        mtu = self.config.max_datagram_size
        for cand in self.candidates.values():
            if cand.next_send > now or now >= cand.deadline:
                continue
            budget = self.budget(cand.addr)
            size = mtu if budget is None else min(mtu, budget)
            if size < MIN_PROBE_SIZE:
                cand.blocked = True
                continue
            data = self._random(8)
            cand.challenges[data] = size >= mtu
            if len(cand.challenges) > 16:  # old ones are very unlikely to be answered now
                del cand.challenges[next(iter(cand.challenges))]
            cand.attempts += 1
            self.challenges_sent += 1
            cand.next_send = min(now + pto * (1 << min(cand.attempts - 1, 8)), cand.deadline)
            out.append((cand, data, size))
        return out

    def on_challenge(self, addr: Address, data: bytes) -> None:
        """Echo a challenge at once, on the path it came from."""
        if len(self._responses) < _MAX_RESPONSES:
            self._responses.append((addr, data))

    def take_responses(self) -> list[tuple[Address, bytes]]:
        out, self._responses = self._responses, []
        return out

    def on_response(self, addr: Address, data: bytes, now: float) -> Candidate | None:
        """A PATH_RESPONSE: the candidate it validates, if it matches and came from there."""
        for cand in self.candidates.values():
            padded = cand.challenges.get(data)
            if padded is None:
                continue
            if cand.addr != addr:
                logger.debug("PATH_RESPONSE for %s arrived from %s: ignored", cand.addr, addr)
                return None
            if padded:
                return cand
            cand.reachable = True
            cand.next_send = now  # prove full-size datagrams fit, now that we may send more
            cand.blocked = False
            return None
        return None

    def switch(self, cand: Candidate) -> Address:
        """Make the validated ``cand`` the path in use; return the old peer address."""
        old = self.remote_addr
        self.candidates.pop(cand.key, None)
        self.remote_addr = cand.addr
        if cand.local is not None:
            self.local = cand.local
        self.path_changes += 1
        self._ledger.pop(cand.addr, None)
        self.abandon_all("another path was validated")
        if old != cand.addr:
            self.addr_updates.append((old, cand.addr))
        return old

    # ------------------------------------------------------------------ timers
    def timer(self) -> float | None:
        deadlines = [c.deadline for c in self.candidates.values()]
        deadlines += [c.next_send for c in self.candidates.values() if not c.blocked]
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        for cand in list(self.candidates.values()):
            if now >= cand.deadline:
                self._abandon(cand, "validation timed out")


class SilenceProbe:
    """Pings a peer that falls silent in the middle of sending us data.

    A receiver only sends ACKs, and only when data arrives. If its NAT rebinds, the peer's
    packets go to the dead mapping, nothing arrives, nothing is acknowledged, and both sides
    wait. So when stream data stops arriving before the stream ended (or none came yet after
    the handshake), we send a padded PING after one PTO, then after 2, 4, ... PTOs (at most
    ``MAX_PROBES``): the first one that reaches the peer reveals our new address, and the peer
    validates it. A peer that merely paused costs a handful of packets. (A connection idle
    for longer than that is found again only when it next sends: set
    ``Config.keepalive_interval`` below the NAT's mapping timeout.)
    """

    MAX_PROBES = 6

    def __init__(self) -> None:
        self.armed = False
        self.probes = 0
        self.last_data = 0.0
        self.sent = 0

    def on_data(self, now: float) -> None:
        self.armed = True
        self.probes = 0
        self.last_data = now

    def disarm(self) -> None:
        self.armed = False

    def deadline(self, pto: float) -> float | None:
        if not self.armed:
            return None
        return self.last_data + pto * ((1 << (self.probes + 1)) - 1)

    def due(self, now: float, pto: float) -> bool:
        deadline = self.deadline(pto)
        if deadline is None or now < deadline:
            return False
        self.probes += 1
        self.sent += 1
        if self.probes >= self.MAX_PROBES:
            self.armed = False
        return True
