"""RangeSet: sorted, merged half-open integer ranges (received packet numbers, acked bytes)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Final

# (compiled, a Final global is a C variable; an imported name a dict lookup per call)
bisect_left: Final = bisect.bisect_left
bisect_right: Final = bisect.bisect_right


class RangeSet:
    """Disjoint half-open ranges ``[start, end)`` kept sorted and merged."""

    __slots__ = ("_starts", "_ends")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        # fast path: extends or follows the last range (in-order arrival)
        if starts:
            last_end = ends[-1]
            if start == last_end:
                ends[-1] = end
                return
            if start > last_end:
                starts.append(start)
                ends.append(end)
                return
        else:
            starts.append(start)
            ends.append(end)
            return
        # general case: merge every range touching [start, end)
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]

    def contains(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def shift_until(self, value: int) -> None:
        """Forget everything below ``value``."""
        starts, ends = self._starts, self._ends
        # a linear scan, not bisect: the ranges forgotten are few (one, per ACK), and each is
        # deleted anyway; compiled, the loop is native where bisect and a slice deletion are
        # calls into the interpreter
        n = len(ends)
        i = 0
        while i < n and ends[i] <= value:
            i += 1
        if i == n:
            if n:
                starts.clear()
                ends.clear()
            return
        if i == 1:
            starts.pop(0)
            ends.pop(0)
        elif i:
            del starts[:i]
            del ends[:i]
        if starts[0] < value:
            starts[0] = value

    def end_of_first_covering(self, value: int) -> int:
        """The end of the first range when that range holds ``value``, else -1."""
        starts = self._starts
        if starts and starts[0] <= value < self._ends[0]:
            return self._ends[0]
        return -1

    def drop_oldest(self, keep: int) -> None:
        """Keep only the ``keep`` highest ranges."""
        if len(self._starts) > keep:
            del self._starts[:-keep]
            del self._ends[:-keep]

    def first(self) -> tuple[int, int] | None:
        return (self._starts[0], self._ends[0]) if self._starts else None

    def first_start(self) -> int:
        """The start of the first range (there must be one); ``first()`` without its tuple."""
        return self._starts[0]

    def first_end(self) -> int:
        """The end of the first range (there must be one)."""
        return self._ends[0]

    def pop_first(self) -> tuple[int, int]:
        return self._starts.pop(0), self._ends.pop(0)

    def inclusive_newest_first(self) -> list[tuple[int, int]]:
        """Every range as ``(first, last)`` inclusive, highest first (an ACK frame's order)."""
        starts, ends = self._starts, self._ends
        return [(starts[i], ends[i] - 1) for i in range(len(starts) - 1, -1, -1)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __reversed__(self) -> Iterator[tuple[int, int]]:
        return zip(reversed(self._starts), reversed(self._ends), strict=True)

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"
