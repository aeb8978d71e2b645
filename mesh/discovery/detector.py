"""Pieces of the failure detector that Lifeguard added to SWIM, each pure.

Theory of operation
-------------------
``LocalHealth`` (Lifeguard's local health multiplier, LHM): a saturating counter
in ``[0, maximum]``. It goes up when this node has signs that *it* is the slow
one: a probe failed and no helper even answered our indirect-probe request with
a nack; we had to refute a suspicion about ourselves; our own timers fired late
(the loop was starved of CPU). It goes down by one on every successful probe.
Probe timeouts and the protocol period are multiplied by ``1 + score``, so a node
that is slow itself waits longer before it accuses anyone.

``suspicion_timeout``: a suspected member is declared dead after a timeout that
starts at ``max`` and shrinks, logarithmically, with every independent
confirmation of the suspicion (another member that suspects it too), down to
``min`` once ``expected`` confirmations have been seen. ``min`` grows with the
logarithm of the mesh's size, as in memberlist.

``GossipBuffer``: the updates to disseminate, piggybacked on every message. Each
update is sent at most ``retransmit_mult * ceil(log10(n + 1))`` times, least sent
first (among updates sent as many times, the one that has waited longest); a newer
update about the same node replaces the older one and counts as never sent. It holds
at most ``max_updates`` (news arriving faster than it is sent, as under heavy churn):
beyond that the update sent most times goes first (the oldest of them). A message's
gossip costs the updates it takes, whatever the buffer holds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from mesh.wire.messages import Digest


@dataclass
class LocalHealth:
    maximum: int = 8
    score: int = 0

    def up(self) -> None:
        self.score = min(self.score + 1, self.maximum)

    def down(self) -> None:
        self.score = max(self.score - 1, 0)

    def scale(self, seconds: float) -> float:
        return seconds * (1 + self.score)


def suspicion_bounds(n_members: int, period: float, alpha: float, beta: float) -> tuple[float, float]:
    """(min, max) suspicion timeout for a mesh of ``n_members`` (ourselves included)."""
    low = alpha * max(1.0, math.log10(max(n_members, 1))) * period
    return low, beta * low


def suspicion_timeout(low: float, high: float, confirmations: int, expected: int) -> float:
    """Lifeguard's dynamic suspicion timeout. ``confirmations`` counts independent
    suspicions beyond the first; ``expected`` is how many we hope for."""
    if expected <= 0 or high <= low:
        return low
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(low, high - (high - low) * frac)


@dataclass(eq=False)
class _Update:
    digest: Digest
    sent: int = 0


class GossipBuffer:
    """The updates to disseminate (module docstring). They wait in one queue per number
    of times sent (``_queues[k]``: sent ``k`` times, in the order they got there), so a
    message's gossip costs what it takes, not a pass over the buffer."""

    def __init__(self, retransmit_mult: int = 3, max_updates: int = 2048) -> None:
        self.retransmit_mult = retransmit_mult
        self.max_updates = max_updates
        self.updates: dict[str, _Update] = {}  # node id -> its update (read only)
        self._queues: list[OrderedDict[str, _Update]] = []

    def add(self, digest: Digest) -> None:
        """Queue ``digest`` for dissemination (replacing older news of the same node, and
        counting as never sent)."""
        old = self.updates.pop(digest.id, None)
        if old is not None:
            del self._queues[old.sent][digest.id]
        upd = self.updates[digest.id] = _Update(digest)
        self._queue(0)[digest.id] = upd
        if len(self.updates) > self.max_updates:  # the update sent most, the oldest of them
            most = next(q for q in reversed(self._queues) if q)
            node_id, _ = most.popitem(last=False)
            del self.updates[node_id]

    def take(self, limit: int, n_members: int, first: Digest | None = None) -> list[Digest]:
        """Up to ``limit`` digests to piggyback, least sent first (among as many sends,
        the longest waiting); ``first`` (news the receiver must hear, e.g. its own
        suspicion) goes in front, and its update here is not counted as sent."""
        out: list[Digest] = [first] if first is not None else []
        if not self.updates or len(out) >= limit:
            return out
        skip = None if first is None else first.id
        taken: list[_Update] = []
        room = limit - len(out)
        for queue in self._queues:
            if not queue:
                continue
            for node_id, upd in queue.items():
                if node_id != skip:
                    taken.append(upd)
                    if len(taken) == room:
                        break
            if len(taken) == room:
                break
        cap = self.retransmit_mult * max(1, math.ceil(math.log10(n_members + 1)))
        queues, updates = self._queues, self.updates
        for upd in taken:  # (moved after the walk: none is taken twice)
            node_id = upd.digest.id
            out.append(upd.digest)
            del queues[upd.sent][node_id]
            upd.sent += 1
            if upd.sent >= cap:
                del updates[node_id]
            else:
                self._queue(upd.sent)[node_id] = upd
        return out

    def _queue(self, sent: int) -> OrderedDict[str, _Update]:
        queues = self._queues
        while len(queues) <= sent:
            queues.append(OrderedDict())
        return queues[sent]

    def __len__(self) -> int:
        return len(self.updates)
