"""Connection-level flow control: the credit (MAX_DATA) each side grants the other.

The receiver grants ``receive_window`` bytes beyond what the application has read, and
re-advertises when a quarter of the window was freed. A sender stopped by the peer's limit
says so once per limit (DATA_BLOCKED), which also probes for a lost MAX_DATA.
"""

from __future__ import annotations

from ..errors import ProtocolViolation
from . import wire

#: Credit each side may use before the peer's first MAX_DATA arrives (0-RTT data).
INITIAL_MAX_DATA = 64 * 1024


class FlowControl:
    """Both directions' credit for one connection."""

    __slots__ = ("window", "peer_max_data", "local_max_data", "advertised_max_data",
                 "send_max_data", "blocked_sent_at", "blocked_count")

    def __init__(self, receive_window: int) -> None:
        self.window = receive_window
        self.peer_max_data = INITIAL_MAX_DATA  # we may send up to this stream offset
        self.local_max_data = max(INITIAL_MAX_DATA, receive_window)  # the peer may, soon
        self.advertised_max_data = INITIAL_MAX_DATA  # ... what it was told so far
        self.send_max_data = True  # a MAX_DATA frame should go out
        self.blocked_sent_at = -1
        self.blocked_count = 0  # DATA_BLOCKED frames sent

    # ------------------------------------------------------------------ receiving
    def on_consumed(self, consumed: int) -> None:
        """The application has read (or discarded) ``consumed`` bytes in all."""
        window = self.window
        self.local_max_data = consumed + window
        if self.local_max_data - self.advertised_max_data >= window // 4:
            self.send_max_data = True

    def check_received(self, end: int) -> None:
        """Stream data up to offset ``end`` arrived: it must be within our credit."""
        if end > self.advertised_max_data:
            raise ProtocolViolation(wire.CloseCode.FLOW_CONTROL_ERROR,
                                    f"peer sent to offset {end} beyond our credit "
                                    f"{self.advertised_max_data}")

    def advertise(self) -> wire.MaxDataFrame:
        """The MAX_DATA frame granting our current credit."""
        self.advertised_max_data = self.local_max_data
        return wire.MaxDataFrame(self.local_max_data)

    # ------------------------------------------------------------------ sending
    def on_max_data(self, maximum: int) -> None:
        if maximum > self.peer_max_data:
            self.peer_max_data = maximum

    def blocked_frame(self, unsent: bool) -> wire.DataBlockedFrame | None:
        """Flow control stops us: tell the peer once per limit (a probe for a lost update)."""
        if unsent and self.peer_max_data != self.blocked_sent_at:
            self.blocked_sent_at = self.peer_max_data
            self.blocked_count += 1
            return wire.DataBlockedFrame(self.peer_max_data)
        return None
