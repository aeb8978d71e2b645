"""Virtual time for the simulators (``Clock``).

Theory of operation
-------------------
No real clock is read: events wait in a heap ordered by (virtual time, scheduling
order), so events due at the same time run in the order they were scheduled, and a
simulator whose randomness comes from one seeded ``random.Random`` gives one run per
seed. ``run_until`` runs what is due, one event at a time, moving ``now`` to each
event's time, and leaves ``now`` at the end of the window.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Clock:
    """Virtual time: ``at`` schedules ``fn(*args)``; ``run_until`` and ``run_for`` run
    what is due, in order. See the module docstring."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple] = []
        self._seq = itertools.count()

    def at(self, when: float, fn: Callable[..., object], *args: object) -> None:
        """Call ``fn(*args)`` at virtual time ``when``."""
        heapq.heappush(self._heap, (when, next(self._seq), fn, args))

    def run_until(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run the events due by ``until``; True as soon as ``stop()`` (asked after every
        event) says so, else False with ``now`` at ``until``."""
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= until:
            when, _, fn, args = pop(heap)
            self.now = when
            fn(*args)
            if stop is not None and stop():
                return True
        self.now = max(self.now, until)
        return False

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        """``run_until(now + seconds)``."""
        return self.run_until(self.now + seconds, stop)

    def __len__(self) -> int:
        """How many events wait."""
        return len(self._heap)
