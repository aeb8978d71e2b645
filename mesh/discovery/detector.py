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
first; a newer update about the same node replaces the older one. It holds at most
``max_updates`` (news arriving faster than it is sent, as under heavy churn): beyond
that the update sent most times goes first (the oldest of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@dataclass
class _Update:
    digest: Digest
    sent: int = 0


@dataclass
class GossipBuffer:
    retransmit_mult: int = 3
    max_updates: int = 2048
    updates: dict[str, _Update] = field(default_factory=dict)

    def add(self, digest: Digest) -> None:
        """Queue ``digest`` for dissemination (replacing older news of the same node)."""
        self.updates[digest.id] = _Update(digest)
        if len(self.updates) > self.max_updates:
            most = max(self.updates, key=lambda node_id: self.updates[node_id].sent)
            del self.updates[most]

    def take(self, limit: int, n_members: int, first: Digest | None = None) -> list[Digest]:
        """Up to ``limit`` digests to piggyback, least sent first; ``first`` (news the
        receiver must hear, e.g. its own suspicion) goes in front."""
        cap = self.retransmit_mult * max(1, math.ceil(math.log10(n_members + 1)))
        out: list[Digest] = [first] if first is not None else []
        for node_id, upd in sorted(self.updates.items(), key=lambda kv: kv[1].sent):
            if len(out) >= limit:
                break
            if first is not None and node_id == first.id:
                continue
            out.append(upd.digest)
            upd.sent += 1
            if upd.sent >= cap:
                del self.updates[node_id]
        return out

    def __len__(self) -> int:
        return len(self.updates)
