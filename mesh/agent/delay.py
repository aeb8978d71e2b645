"""Latency emulation for tests and demos on one machine (no netem here).

``MESH_EMULATE_DELAY='{"peer-name": ms, ...}'`` in an agent's environment makes it
hold every frame it sends to the named peers for that many milliseconds (a
one-way delay; give the other side the same figure for a symmetric link). The
agent's loop flushes due frames; nothing sleeps. Real deployments never set it.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os

log = logging.getLogger("mesh.delay")

ENV = "MESH_EMULATE_DELAY"


def from_env(env: dict | None = None) -> dict[str, float]:
    """Peer name -> one-way delay in seconds; {} when unset or malformed (logged)."""
    text = (os.environ if env is None else env).get(ENV, "")
    if not text:
        return {}
    try:
        table = json.loads(text)
        delays = {str(k): float(v) / 1000.0 for k, v in table.items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring %s: expected a JSON object of peer name -> milliseconds", ENV)
        return {}
    if any(d < 0 or d > 10 for d in delays.values()):
        log.warning("ignoring %s: delays must be between 0 and 10,000 ms", ENV)
        return {}
    log.warning("emulating one-way delays %s (test knob)", {k: v * 1000 for k, v in delays.items()})
    return delays


class DelayLine:
    """Frames waiting for their due time, oldest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple]] = []
        self._seq = itertools.count()

    def push(self, due: float, item: tuple) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def due(self, now: float) -> list[tuple]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
