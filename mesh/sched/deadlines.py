"""Deadlines: which keys expire when, with no clock inside.

A heap of ``(at, serial, key)`` with lazy deletion: ``disarm`` only forgets the key,
and stale heap entries are skipped when popped. When stale entries outnumber live
ones the heap is rebuilt, so its size stays within a constant factor of the keys
armed, however many are armed and disarmed over time.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class Deadlines:
    """Keys, each with one deadline (monotonic seconds passed in by the caller)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, float] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._live)

    def arm(self, key: Hashable, at: float) -> None:
        """Set (or move) the deadline of ``key``."""
        self._live[key] = at
        self._serial += 1
        heapq.heappush(self._heap, (at, self._serial, key))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._live):
            self._heap = [e for e in self._heap if self._live.get(e[2]) == e[0]]
            heapq.heapify(self._heap)

    def disarm(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def expired(self, now: float) -> list[Hashable]:
        """Pop and return the keys whose deadline is ``<= now``, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._live.get(key) == at:
                del self._live[key]
                out.append(key)
        return out

    def next(self) -> float | None:
        """The earliest live deadline, or None."""
        while self._heap and self._live.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None
