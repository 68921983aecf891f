"""Stream buffers: what we still owe the peer (SendBuffer) and what arrived (RecvBuffer)."""

from __future__ import annotations

import heapq

from .ranges import RangeSet, bisect_right


class SendBuffer:
    """Bytes written by the application, kept until acknowledged.

    Data is stored as the application's chunks (no copies); new data is sent in offset order,
    lost ranges are queued for retransmission ahead of new data.
    """

    __slots__ = ("_chunks", "_chunk_starts", "_first", "base", "end", "next_offset",
                 "_acked", "_lost", "fin_requested", "fin_sent", "fin_acked", "taken_offset",
                 "taken_fin")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._chunk_starts: list[int] = []
        self._first = 0  # index of the first live chunk
        self.base = 0  # everything below is acknowledged and released
        self.end = 0  # offset after the last written byte
        self.next_offset = 0  # first byte never sent
        self._acked = RangeSet()
        self._lost = RangeSet()
        self.fin_requested = False
        self.fin_sent = False
        self.fin_acked = False
        self.taken_offset = 0  # where the data :meth:`take` returned last starts
        self.taken_fin = False  # and whether it ends the stream

    # application side
    def write(self, data: bytes) -> None:
        if self.fin_requested:
            raise RuntimeError("write after end of stream")
        if data:
            # (a copy only of what is not bytes yet: the caller may reuse a bytearray)
            self._chunks.append(data if type(data) is bytes else bytes(data))
            self._chunk_starts.append(self.end)
            self.end += len(data)

    def write_eof(self) -> None:
        self.fin_requested = True

    @property
    def buffered(self) -> int:
        """Bytes written but not yet acknowledged."""
        return self.end - self.base

    @property
    def unsent(self) -> int:
        return self.end - self.next_offset

    # sender side
    def has_data_to_send(self) -> bool:
        return (bool(self._lost) or self.next_offset < self.end
                or (self.fin_requested and not self.fin_sent))

    def has_retransmission(self) -> bool:
        return bool(self._lost)

    def next_range(self, max_len: int, limit: int) -> tuple[int, bytes, bool] | None:
        """Take the next ``(offset, data, fin)`` to send: lost bytes first, then new ones.

        ``limit`` is the flow-control limit on new data (offsets at or above it are not sent).
        Returns None when nothing can be sent.
        """
        data = self.take(max_len, limit)
        if data is None:
            return None
        return self.taken_offset, data, self.taken_fin

    def take(self, max_len: int, limit: int) -> bytes | None:
        """:meth:`next_range` without its tuple: the data, or None; its offset and fin are
        left in ``taken_offset`` and ``taken_fin`` (native attributes: the tuple boxed the
        offset, and was built and unpacked for every data packet)."""
        while self._lost:
            start, stop = self._lost.pop_first()
            # the range may have been acknowledged since it was declared lost (a late ACK of
            # the first copy: reordering, or a migration's requeue) and its bytes released
            if stop <= self.base:
                continue
            start = max(start, self.base)
            if stop > start + max_len:
                self._lost.add(start + max_len, stop)
                stop = start + max_len
            fin = self.fin_requested and not self.fin_sent and stop == self.end
            if fin:
                self.fin_sent = True
            self.taken_offset = start
            self.taken_fin = fin
            return self._slice(start, stop)
        start = self.next_offset
        # stop = min(end, start + max_len, max(limit, start)), without the generic min() call
        # compiled code makes of three arguments
        stop = start + max_len
        if self.end < stop:
            stop = self.end
        if limit < stop:
            stop = limit if limit > start else start
        if stop <= start:
            if self.fin_requested and not self.fin_sent and start == self.end:
                self.fin_sent = True
                self.taken_offset = start
                self.taken_fin = True
                return b""
            return None
        self.next_offset = stop
        fin = False
        if self.fin_requested and stop == self.end:
            self.fin_sent = True
            fin = True
        self.taken_offset = start
        self.taken_fin = fin
        return self._slice(start, stop)

    def _slice(self, start: int, stop: int) -> bytes:
        chunks, starts = self._chunks, self._chunk_starts
        i = len(starts) - 1
        if starts[i] > start:  # (not in the last chunk written: new data mostly is)
            i = bisect_right(starts, start, self._first) - 1
        chunk = chunks[i]
        cstart = starts[i]
        if stop - cstart <= len(chunk):
            if start == cstart and stop - cstart == len(chunk):
                return chunk
            return chunk[start - cstart:stop - cstart]
        parts = []
        pos = start
        while pos < stop:
            chunk = chunks[i]
            cstart = starts[i]
            take = min(stop, cstart + len(chunk))
            parts.append(chunk[pos - cstart:take - cstart])
            pos = take
            i += 1
        return b"".join(parts)

    def on_acked(self, offset: int, length: int, fin: bool) -> None:
        if fin:
            self.fin_acked = True
        end = offset + length
        base = self.base
        if end <= base:
            return  # acknowledged before (the range was sent twice): base never moves back
        acked = self._acked
        if offset <= base and not acked:
            # in order, with nothing acknowledged beyond the base (the common case): the base
            # moves to ``end``, which is what adding the range and releasing the first one
            # covering the base comes to, without three list operations on boxed offsets
            self._release(end)
            return
        acked.add(max(offset, base), end)
        upto = acked.end_of_first_covering(base)
        if upto >= 0:
            self._release(upto)

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        """Queue a lost range for retransmission, except the parts acknowledged since."""
        stop = offset + length
        if fin and not self.fin_acked:
            self.fin_sent = False  # resent with the last bytes, or alone
        if stop <= self.base:
            return
        start = max(offset, self.base)
        # skip sub-ranges that were acknowledged in the meantime
        pos = start
        for a_start, a_end in self._acked:
            if a_end <= pos:
                continue
            if a_start >= stop:
                break
            if a_start > pos:
                self._lost.add(pos, a_start)
            pos = max(pos, a_end)
        if pos < stop:
            self._lost.add(pos, stop)

    def _release(self, upto: int) -> None:
        self.base = upto
        self._acked.shift_until(upto)
        chunks, starts = self._chunks, self._chunk_starts
        first = self._first
        while first < len(chunks) and starts[first] + len(chunks[first]) <= upto:
            chunks[first] = b""
            first += 1
        self._first = first
        if first > 64 and first * 2 > len(chunks):
            del chunks[:first]
            del starts[:first]
            self._first = 0

    @property
    def all_acked(self) -> bool:
        return self.base == self.end and (not self.fin_requested or self.fin_acked)


class RecvBuffer:
    """Reassembles stream bytes by offset and hands them out in order, once each."""

    __slots__ = ("_segments", "_offsets", "_ready", "_ready_size", "delivered",
                 "received_end", "fin_offset", "_pending_size")

    def __init__(self) -> None:
        self._segments: dict[int, bytes] = {}  # out-of-order data by offset
        self._offsets: list[int] = []  # heap of the keys of _segments
        self._pending_size = 0
        self._ready: list[bytes] = []
        self._ready_size = 0
        self.delivered = 0  # offset up to which data is in _ready or read
        self.received_end = 0  # highest offset seen + 1
        self.fin_offset: int | None = None

    def receive(self, offset: int, data: bytes, fin: bool) -> int:
        """Store a segment; return how many new in-order bytes became readable."""
        end = offset + len(data)
        if fin:
            if self.fin_offset is not None and self.fin_offset != end:
                raise ValueError("final size changed")
            self.fin_offset = end
        if self.fin_offset is not None and end > self.fin_offset:
            raise ValueError("data beyond final size")
        if end > self.received_end:
            self.received_end = end
        if end <= self.delivered:
            return 0  # duplicate
        if offset > self.delivered:
            old = self._segments.get(offset)
            if old is None:
                heapq.heappush(self._offsets, offset)
            if old is None or len(old) < len(data):
                self._pending_size += len(data) - (len(old) if old else 0)
                self._segments[offset] = data
            return 0
        if offset < self.delivered:
            data = data[self.delivered - offset:]
        before = self.delivered
        self._push_ready(data)
        if self._segments:
            self._drain_segments()
        return self.delivered - before

    def _push_ready(self, data: bytes) -> None:
        self._ready.append(data)
        self._ready_size += len(data)
        self.delivered += len(data)

    def _drain_segments(self) -> None:
        """Move stored segments that now touch the delivery point into the ready queue."""
        segs, offsets = self._segments, self._offsets
        while offsets and offsets[0] <= self.delivered:
            off = heapq.heappop(offsets)
            data = segs.pop(off)
            self._pending_size -= len(data)
            end = off + len(data)
            if end > self.delivered:
                self._push_ready(data[self.delivered - off:])

    @property
    def segment_count(self) -> int:
        """Out-of-order segments held (bounded by the connection against hostile peers)."""
        return len(self._segments)

    @property
    def readable(self) -> int:
        return self._ready_size

    @property
    def at_eof(self) -> bool:
        """All data up to the FIN was read by the application."""
        return (self.fin_offset is not None and self.delivered == self.fin_offset
                and self._ready_size == 0)

    def read(self, n: int = -1) -> bytes:
        if not self._ready:
            return b""
        if n < 0 or n >= self._ready_size:
            out = self._ready[0] if len(self._ready) == 1 else b"".join(self._ready)
            self._ready.clear()
            self._ready_size = 0
            return out
        parts = []
        need = n
        while need:
            chunk = self._ready[0]
            if len(chunk) <= need:
                parts.append(chunk)
                self._ready.pop(0)
                need -= len(chunk)
            else:
                parts.append(chunk[:need])
                self._ready[0] = chunk[need:]
                need = 0
        self._ready_size -= n
        return b"".join(parts)

    @property
    def consumed(self) -> int:
        """Bytes the application has read (drives flow-control credit)."""
        return self.delivered - self._ready_size

    @property
    def buffered(self) -> int:
        return self._ready_size + self._pending_size
