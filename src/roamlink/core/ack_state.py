"""Received packet numbers and the ACKs we owe the peer (the one packet-number space).

Duplicates are recognised here; which ranges an ACK reports, when a delayed ACK is due, and
which old ranges the peer no longer needs to hear about (it saw an ACK of ours that carried
them: "ack of ack") are decided here too.
"""

from __future__ import annotations

from typing import Final

from . import wire
from .ranges import RangeSet

#: A packet number this far past the largest received cannot be genuine (forged or corrupt).
MAX_PACKET_NUMBER_JUMP: Final = 1 << 20
#: Packet numbers below the newest one the peer knows we acknowledged that we still report
#: (so a slightly reordered packet is not taken for a duplicate).
ACK_HISTORY: Final = 16


class AckState:
    """What we received, and the ACK we owe for it."""

    __slots__ = ("received", "largest", "largest_time", "pending", "deadline",
                 "path_pn_floor", "eliciting_unacked", "data_unacked", "ack_every",
                 "max_ack_delay")

    def __init__(self, ack_every: int, max_ack_delay: float) -> None:
        #: ``Config.ack_every`` and ``Config.max_ack_delay``, held here: read from the
        #: (interpreted) config they were two dictionary lookups per packet received
        self.ack_every = ack_every
        self.max_ack_delay = max_ack_delay
        self.received = RangeSet()  # packet numbers received on the validated path
        self.largest = -1
        self.largest_time = 0.0  # when ``largest`` arrived (the ACK delay counts from it)
        self.pending = False  # an ACK goes out at the next opportunity
        self.deadline: float | None = None  # a delayed ACK is due then
        #: packets at or below this number cannot move the path (they predate the current one)
        self.path_pn_floor = -1
        self.eliciting_unacked = 0  # ack-eliciting packets since our last ACK
        self.data_unacked = False  # stream data arrived since our last ACK

    def is_duplicate(self, pn: int) -> bool:
        """``pn`` (not above the largest received) was seen, or is older than we remember."""
        lowest = self.received.first()
        return self.received.contains(pn) or (lowest is not None and pn < lowest[0])

    def record(self, pn: int, now: float, is_newest: bool) -> None:
        """A packet arrived over the validated path: it will be acknowledged."""
        received = self.received
        received.add(pn, pn + 1)
        received.drop_oldest(wire.MAX_ACK_RANGES)
        if is_newest:
            self.largest = pn
            self.largest_time = now

    def on_ack_eliciting(self, now: float, immediately: bool) -> None:
        """Schedule the ACK for an ack-eliciting packet: at once, or within the ACK delay."""
        self.eliciting_unacked += 1
        if immediately or self.eliciting_unacked >= self.ack_every:
            self.pending = True
            self.deadline = None
        elif self.deadline is None:
            self.deadline = now + self.max_ack_delay

    def send_delayed_now(self) -> None:
        """A delayed ACK must not wait (no ACK timer runs while draining)."""
        if self.deadline is not None:
            self.pending = True
            self.deadline = None

    def encode(self, now: float) -> bytes:
        """The ACK frame for everything received; nothing is owed afterwards."""
        received = self.received
        delay_us = int(max(now - self.largest_time, 0.0) * 1e6)
        self.pending = False
        self.deadline = None
        self.eliciting_unacked = 0
        self.data_unacked = False
        if len(received) == 1:  # no gap: the common ACK, without a list of ranges
            # (nor a tuple: its two numbers are boxed, and freed, on every ACK sent)
            return wire.encode_one_range_ack(received.first_start(), received.first_end() - 1,
                                             delay_us)
        return wire.encode_ack(received.inclusive_newest_first(), delay_us)

    def on_peer_saw(self, largest: int) -> None:
        """The peer received our ACK reporting up to ``largest``: stop repeating old ranges."""
        if largest > ACK_HISTORY:
            self.received.shift_until(largest - ACK_HISTORY)

    def on_path_validated(self, pns: RangeSet, largest_pn: int, now: float) -> None:
        """Acknowledge what arrived over a path while it was a candidate (the peer, blocked by
        its congestion window, would otherwise wait for timeouts on packets we have)."""
        received = self.received
        for lo, hi in pns:
            received.add(lo, hi)
            if hi - 1 > self.largest:
                self.largest = hi - 1
                self.largest_time = now
        received.drop_oldest(wire.MAX_ACK_RANGES)
        # packets older than the newest one seen on the new path never move us back
        self.path_pn_floor = max(self.path_pn_floor, self.largest, largest_pn)
