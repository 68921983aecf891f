"""Network paths and how a new one is proven (seed section 3.2).

A path is a (local socket, peer address) pair. The connection sends on one validated path.
A *candidate* path appears when:

* the peer's newest packet arrives from another address (passive migration: NAT rebinding,
  Wi-Fi to 4G), or
* the application calls ``migrate()`` (active migration: another peer address and/or a new
  local socket).

A candidate is never used for data. We send it PATH_CHALLENGE (8 fresh random bytes, padded to
the full datagram size so that a path which cannot carry full-size datagrams never validates)
and switch only when a PATH_RESPONSE echoing an outstanding challenge arrives *from that
address on that socket*. Challenges are retried on an RTO-derived interval with fresh data,
until ``Config.path_validation_timeout``. Until a candidate is validated we send it at most
three times the bytes it sent us (anti-amplification), and at most
``Config.max_candidate_paths`` candidates exist at once, so a flood of spoofed source
addresses costs bounded memory and traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .events import Address, MigrationReason
from .ranges import RangeSet

#: Anti-amplification factor for unvalidated addresses.
AMPLIFICATION_FACTOR: Final = 3
#: Outstanding challenge values remembered per candidate (each retry adds one).
_MAX_CHALLENGES: Final = 8
#: Ranges of packet numbers remembered per candidate, to acknowledge once the path is proven
#: (ranges, not numbers: a fast sender delivers thousands of packets during one validation,
#: and leaving most unacknowledged would make it declare them lost and halve its window).
_MAX_PENDING_RANGES: Final = 32
#: Challenges from the peer answered per call (a flood cannot grow memory).
_MAX_RESPONSES: Final = 8

PathKey = tuple[int, Address]  # (local socket id, peer address)


@dataclass
class Candidate:
    """A path being validated."""

    socket_id: int
    addr: Address
    reason: MigrationReason
    started: float
    deadline: float
    next_send: float  # when the next challenge is due (now: at once)
    retry_interval: float
    dcid_seq: int | None = None  # peer CID reserved for this path (active migration)
    challenges: dict[bytes, bool] = field(default_factory=dict)  # data -> was padded
    address_proven: bool = False  # an unpadded challenge was answered; MTU still unproven
    largest_pn: int = -1  # newest packet number that arrived over this path
    #: packet numbers that arrived over this path: acknowledged once it is proven (bounded)
    pns: RangeSet = field(default_factory=RangeSet)
    bytes_received: int = 0
    bytes_sent: int = 0
    attempts: int = 0
    last_packet: float = 0.0  # when a packet last arrived over this path

    @property
    def key(self) -> PathKey:
        return (self.socket_id, self.addr)

    def budget(self) -> int:
        """Bytes we may still send to this address (unlimited once it proved itself)."""
        if self.address_proven:
            return 1 << 40
        return AMPLIFICATION_FACTOR * self.bytes_received - self.bytes_sent


@dataclass
class ValidationResult:
    candidate: Candidate
    ok: bool
    elapsed: float
    why: str = ""


class PathManager:
    """Owns the path in use and every candidate path's validation."""

    def __init__(self, remote_addr: Address, socket_id: int = 0, *,
                 random_bytes: Callable[[int], bytes] | None = None,
                 max_candidates: int = 3, validation_timeout: float = 3.0,
                 datagram_size: int = 1200) -> None:
        self.remote_addr: Address = remote_addr
        self.socket_id = socket_id
        self.random_bytes = random_bytes
        self.max_candidates = max_candidates
        self.validation_timeout = validation_timeout
        self.datagram_size = datagram_size
        self.candidates: dict[PathKey, Candidate] = {}
        self.path_changes = 0
        self.challenges_sent = 0
        self.candidates_refused = 0
        self.candidates_evicted = 0
        self.validations_failed = 0
        self._responses: list[tuple[int, Address, bytes]] = []
        #: the size of an unpadded challenge, as ``due_challenges`` was last told: a candidate
        #: whose budget allows one has its retries timed too
        self.small_probe_size = datagram_size
        #: paths we left on purpose, until when: the peer keeps using them until it follows
        #: us, and that must not drag us back. Only for a while (one validation timeout):
        #: later the peer may really want that path again (bounded)
        self.abandoned: dict[PathKey, float] = {}

    # ------------------------------------------------------------------ inbound
    def is_current(self, socket_id: int, addr: Address) -> bool:
        return socket_id == self.socket_id and addr == self.remote_addr

    def on_packet(self, socket_id: int, addr: Address, size: int, pn: int, is_newest: bool,
                  now: float, retry_interval: float) -> Candidate | None:
        """Account a packet from a non-current path; start validating it if it is newest.

        Only the newest packet can start a migration: a delayed or duplicated packet from a
        former address is processed but never moves the path back.
        """
        cand = self.candidates.get((socket_id, addr))
        if cand is not None:
            cand.bytes_received += size
            cand.largest_pn = max(cand.largest_pn, pn)
            cand.last_packet = now
            cand.pns.add(pn, pn + 1)
            if len(cand.pns) > _MAX_PENDING_RANGES:
                cand.pns.drop_oldest(_MAX_PENDING_RANGES)
            return None
        if not is_newest or self._left_recently((socket_id, addr), now):
            return None
        if len(self.candidates) >= self.max_candidates:
            self._evict_stale(now)
        cand = self.start(socket_id, addr, now, "passive", retry_interval)
        if cand is not None:
            cand.bytes_received += size
            cand.largest_pn = pn
            cand.last_packet = now
            cand.pns.add(pn, pn + 1)
        return cand

    def _evict_stale(self, now: float) -> None:
        """Make room for a new passive candidate by dropping a passive one gone quiet.

        Spoofed sources send a packet or two and then nothing, while a peer that really moved
        keeps sending from its new address. Refusing newcomers whenever the slots are full
        would let a flood of spoofed addresses lock the real peer out until the spoofed
        candidates time out (``Config.path_validation_timeout``, again and again); dropping
        the quietest passive candidate that has heard nothing for a retry interval keeps
        the slots for addresses that keep talking. Active (``migrate()``) candidates stay.
        """
        quiet = [c for c in self.candidates.values()
                 if c.reason == "passive" and now - c.last_packet >= c.retry_interval]
        if quiet:
            victim = min(quiet, key=lambda c: c.last_packet)
            del self.candidates[victim.key]
            self.candidates_evicted += 1

    def start(self, socket_id: int, addr: Address, now: float, reason: MigrationReason,
              retry_interval: float, timeout: float | None = None, *,
              unlimited_budget: bool = False) -> Candidate | None:
        """Begin validating a path; None when too many candidates are in progress."""
        key = (socket_id, addr)
        if reason == "active":
            self.abandoned.pop(key, None)
        existing = self.candidates.get(key)
        if existing is not None:
            if reason == "active":
                existing.reason = "active"
            return existing
        if len(self.candidates) >= self.max_candidates and reason == "active":
            # the application's own request outranks addresses nobody asked for
            passive = [c for c in self.candidates.values() if c.reason == "passive"]
            if passive:
                del self.candidates[min(passive, key=lambda c: c.last_packet).key]
                self.candidates_evicted += 1
        if len(self.candidates) >= self.max_candidates:
            self.candidates_refused += 1
            return None
        cand = Candidate(socket_id, addr, reason, now, now + (timeout or self.validation_timeout),
                         now, retry_interval)
        if unlimited_budget:
            # we chose this address ourselves (migrate()): it is not an amplification target
            cand.bytes_received = 1 << 40
        self.candidates[key] = cand
        return cand

    def on_challenge(self, socket_id: int, addr: Address, data: bytes) -> None:
        """Echo a challenge at once, on the path it came from."""
        if len(self._responses) < _MAX_RESPONSES:
            self._responses.append((socket_id, addr, data))

    def on_response(self, socket_id: int, addr: Address, data: bytes, now: float
                    ) -> ValidationResult | None:
        """A PATH_RESPONSE counts only if it echoes an outstanding challenge of the path it
        arrived on."""
        cand = self.candidates.get((socket_id, addr))
        if cand is None or data not in cand.challenges:
            return None
        if not cand.challenges[data]:
            # the address is proven, but the challenge was small: prove the path also
            # carries full-size datagrams before using it (RFC 9000 section 8.2.1)
            cand.address_proven = True
            cand.next_send = now
            return None
        del self.candidates[cand.key]
        return ValidationResult(cand, True, now - cand.started)

    def abandon(self, cand: Candidate) -> bool:
        """Stop validating ``cand`` (the application gave up); False if it is not pending."""
        if self.candidates.get(cand.key) is not cand:
            return False
        del self.candidates[cand.key]
        return True

    def _left_recently(self, key: PathKey, now: float) -> bool:
        until = self.abandoned.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self.abandoned[key]
        return False

    def switch_to(self, cand: Candidate, now: float | None = None) -> tuple[int, Address]:
        """Make ``cand`` the path in use; return the old (socket_id, address)."""
        old = (self.socket_id, self.remote_addr)
        if cand.reason == "active":
            start = cand.started if now is None else now
            self.abandoned.pop(old, None)
            self.abandoned[old] = start + self.validation_timeout
            while len(self.abandoned) > 8:
                del self.abandoned[next(iter(self.abandoned))]
        self.socket_id, self.remote_addr = cand.socket_id, cand.addr
        self.path_changes += 1
        # a candidate on the path we just left is meaningless now
        self.candidates.pop(old, None)
        return old

    # ------------------------------------------------------------------ outbound
    def take_responses(self, socket_id: int) -> list[tuple[Address, bytes]]:
        out = [(a, d) for (loc, a, d) in self._responses if loc == socket_id]
        self._responses = [r for r in self._responses if r[0] != socket_id]
        return out

    def due_challenges(self, socket_id: int, now: float, small_size: int
                       ) -> list[tuple[Candidate, bytes, int]]:
        """``(candidate, data, datagram size)`` of the challenges due on socket ``socket_id``.

        Each carries fresh random data. A challenge is padded to the full datagram size when
        the anti-amplification budget allows; otherwise it goes out small (``small_size``) to
        prove the address first, and a padded one follows once that is answered.
        """
        out = []
        self.small_probe_size = small_size
        for cand in self.candidates.values():
            if cand.socket_id != socket_id or now < cand.next_send:
                continue
            budget = cand.budget()
            size = self.datagram_size if budget >= self.datagram_size else small_size
            if budget < size:
                continue  # wait until the address has sent us enough (anti-amplification)
            assert self.random_bytes is not None
            data = self.random_bytes(8)
            cand.challenges[data] = size >= self.datagram_size
            while len(cand.challenges) > _MAX_CHALLENGES:
                del cand.challenges[next(iter(cand.challenges))]
            cand.bytes_sent += size
            cand.attempts += 1
            cand.next_send = now + cand.retry_interval * (1 << min(cand.attempts - 1, 4))
            self.challenges_sent += 1
            out.append((cand, data, size))
        return out

    def response_size(self, socket_id: int, addr: Address, small_size: int) -> int:
        """How big a PATH_RESPONSE to ``addr`` may be (0: not at all), and charge it."""
        cand = self.candidates.get((socket_id, addr))
        if cand is None:
            if self.is_current(socket_id, addr):
                return self.datagram_size
            # an address we know nothing about (e.g. a spoofed source whose packet was not
            # the newest, or no candidate slot was free): the challenge that reached us was
            # at least as big as this reply, so answering small keeps the amplification
            # below 1x; a padded reply would be a 40x amplifier against a spoofing victim
            return small_size
        for size in (self.datagram_size, small_size):
            if cand.budget() >= size:
                cand.bytes_sent += size
                return size
        return 0

    def has_work(self) -> bool:
        return bool(self._responses or self.candidates)

    def sockets_with_work(self) -> set[int]:
        """Sockets other than the current one that have probes or responses to send."""
        out = {c.socket_id for c in self.candidates.values()}
        out.update(r[0] for r in self._responses)
        out.discard(self.socket_id)
        return out

    # ------------------------------------------------------------------ timers
    def timer(self) -> float | None:
        if not self.candidates:
            return None
        # a retry is due at ``next_send`` if the budget allows at least a small challenge
        # (a padded one if it allows that: see due_challenges); below that, only more bytes
        # from the address (a packet, which is handled at once) or the deadline can help
        small = min(self.small_probe_size, self.datagram_size)
        times = [min(c.next_send, c.deadline) for c in self.candidates.values()
                 if c.budget() >= small]
        times += [c.deadline for c in self.candidates.values()]
        return min(times, default=None)

    def expire(self, now: float) -> list[ValidationResult]:
        failed = [c for c in self.candidates.values() if now >= c.deadline]
        for cand in failed:
            del self.candidates[cand.key]
            self.validations_failed += 1
        return [ValidationResult(c, False, now - c.started,
                                 f"no PATH_RESPONSE from {c.addr} after {c.attempts} "
                                 f"challenge(s)") for c in failed]
