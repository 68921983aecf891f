"""Reusable simulator scenarios: establish a connection, move bytes both ways, check them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..core.connection import Connection
from .simnet import SimNetwork, SimNode


def establish(net: SimNetwork, client: SimNode, server: SimNode, *,
              early_data: bytes = b"", timeout: float = 30.0) -> tuple[Connection, Connection]:
    """Open a connection and return ``(client_conn, server_conn)`` once both are established."""
    conn = client.connect(server.addr, early_data=early_data)
    queue = server.dispatcher.accept_queue

    def mine() -> Connection | None:
        # the server end answers our CID (other SYNs, e.g. forged ones, queue there too)
        return next((c for c in queue if c.peer_cid == conn.local_cid), None)

    def ready() -> bool:
        theirs = mine()
        return conn.is_established and theirs is not None and theirs.is_established

    if not net.run_until(ready, timeout):
        raise AssertionError(f"handshake did not complete: client {conn.state}, "
                             f"server queue {[c.state for c in queue]}")
    theirs = mine()
    assert theirs is not None
    queue.remove(theirs)
    return conn, theirs


@dataclass
class Pump:
    """Feeds ``payload`` into ``sender`` and collects what ``receiver`` reads."""

    net: SimNetwork
    sender: Connection
    sender_node: SimNode
    receiver: Connection
    receiver_node: SimNode
    payload: bytes
    chunk: int = 256 * 1024
    eof: bool = True
    received: list[bytes] = field(default_factory=list)
    _offset: int = 0
    _eof_sent: bool = False
    received_bytes: int = 0

    def step(self) -> None:
        """Write while the send buffer has room, read what arrived (like an application)."""
        sender = self.sender
        limit = sender.config.send_buffer_size
        wrote = False
        while (self._offset < len(self.payload) and sender.send_buffered < limit
               and not sender.is_terminated):
            piece = self.payload[self._offset:self._offset + self.chunk]
            sender.send(piece)
            self._offset += len(piece)
            wrote = True
        if self.eof and self._offset >= len(self.payload) and not self._eof_sent:
            sender.send_eof()
            self._eof_sent = True
            wrote = True
        if wrote:
            self.net.flush(self.sender_node)
        data = self.receiver.read()
        if data:
            self.received.append(data)
            self.received_bytes += len(data)
            self.net.flush(self.receiver_node)

    @property
    def done(self) -> bool:
        if self.eof:
            return self.receiver.at_eof
        return self.received_bytes >= len(self.payload)

    def data(self) -> bytes:
        return b"".join(self.received)

    def exact(self) -> bool:
        got = self.data()
        return (len(got) == len(self.payload)
                and hashlib.sha256(got).digest() == hashlib.sha256(self.payload).digest())


def run_pumps(net: SimNetwork, pumps: list[Pump], timeout: float) -> bool:
    """Drive the pumps until all are done or ``timeout`` simulated seconds pass."""
    def check() -> bool:
        for p in pumps:
            p.step()
        return all(p.done for p in pumps)

    return net.run_until(check, timeout)
