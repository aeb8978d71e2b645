"""The bounded neighbour set of a latency tree node (``Neighbours``).

Theory of operation
-------------------
A node keeps its parent, its children (neighbours whose latest advert names it as
parent: their word, no handshake) and at most ``max_candidates`` others, the
candidates. A candidate's merit is its root key, then its path latency (advertised
rank + our smoothed RTT to it). When a new neighbour would overflow the set, the
worst candidate is evicted, except the ``diverse`` best ones whose route avoids our
parent: when the parent dies, those are the ones still fed by the root. An evicted
or refused neighbour goes back to the offers, to be explored again later. Children are
not counted: each is a live node naming us; a neighbour reported lost goes at once, one
silent for ``forget_after`` periods (the parent aside: it times out sooner) is dropped.

Offers come from the shell (members it knows, with a round trip if measured), at
most ``max_offers``. While the set is not full (or we have no route) we probe
``probe_burst`` offers a period, the closest first (a near node is a likely parent
or child), the others at random; once full, one random offer every
``explore_every`` periods, so that better candidates are found as the mesh changes
(after a re-root every node's best neighbours differ). An offer stays until it is
admitted: a probe may be lost.

Which neighbour is the parent is the tree's choice (``mesh.tree.core``): the methods
that treat the parent apart are given it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.tree.advert import key
from mesh.tree.config import TreeConfig
from mesh.wire.messages import Advert

INF = float("inf")


@dataclass
class Peer:
    """A neighbour: its last advert, our smoothed round trip to it, when we heard it."""

    id: str
    advert: Advert
    rtt: float | None
    heard: float
    asked: float = -1e9  # when we last asked it for its advert


class Neighbours:
    """Peers by id (parent, children and candidates), which of them are children, and
    the offers. See the module docstring."""

    def __init__(self, me: str, config: TreeConfig, rng: random.Random, now: float) -> None:
        self.peers: dict[str, Peer] = {}
        self.children: set[str] = set()
        self.offers: dict[str, float | None] = {}  # member -> round trip, if measured
        self.counters = {"evictions": 0}
        self._me = me
        self._config = config
        self._rng = rng
        self._next_explore = now + config.period * config.explore_every

    def candidates(self, parent: str | None) -> list[str]:
        return sorted(p for p in self.peers if p != parent and p not in self.children)

    # ------------------------------------------------------------------ offers

    def offer(self, peer: str, rtt: float | None) -> None:
        """The shell knows a live member we could measure (probed on a later tick)."""
        if peer == self._me or peer in self.peers:
            return
        offers = self.offers
        if peer not in offers and len(offers) >= self._config.max_offers:
            del offers[self._rng.choice(list(offers))]
        offers[peer] = rtt

    def explore(self, now: float, parent: str | None, routed: bool) -> list[str]:
        """The offers to probe now (module docstring)."""
        if not self.offers:
            return []
        cfg = self._config
        full = len(self.peers) - len(self.children) - (parent is not None) >= cfg.max_candidates
        if not full or not routed:
            n = cfg.probe_burst
        elif now >= self._next_explore:
            n = 1
        else:
            return []
        self._next_explore = now + cfg.explore_every * cfg.period
        # filling up: the closest offer first (a near node is a likely parent or child);
        # then, and when exploring, at random
        measured = [(rtt, peer) for peer, rtt in self.offers.items() if rtt is not None]
        picks = [min(measured)[1]] if measured and n > 1 else []
        rest = sorted(p for p in self.offers if p not in picks)
        return picks + self._rng.sample(rest, min(n - len(picks), len(rest)))

    # ------------------------------------------------------------------ merit

    def via(self, p: Peer) -> float:
        """Path latency to the root through ``p`` (infinite without a route)."""
        rank = p.advert.rank
        if rank < 0.0:
            return INF
        rtt = p.rtt
        return rank + (self._config.unknown_rtt if rtt is None else max(rtt, self._config.min_cost))

    def merit(self, p: Peer) -> tuple:
        a = p.advert
        return (key(a), -self.via(p)) if a.rank >= 0.0 else ((-2,), 0.0)

    # ------------------------------------------------------------------ the set

    def admit(self, peer: str, advert: Advert, rtt: float | None, now: float,
              parent: str | None) -> Peer | None:
        """A new neighbour, if there is room (a child always has room)."""
        p = Peer(peer, advert, rtt if rtt is not None and rtt >= 0.0 else None, now)
        if advert.parent != self._me:
            children = self.children
            cands = [q for q in self.peers.values() if q.id != parent and q.id not in children]
            if len(cands) >= self._config.max_candidates:
                merit, merits = self.merit(p), {q.id: self.merit(q) for q in cands}
                if merit <= min(merits.values()):
                    return None  # no room now: it stays offered, explored again later
                worst = self._worst(cands, parent, merits)
                if worst is None or merit <= merits[worst.id]:
                    return None  # no room now: it stays offered, explored again later
                self.drop(worst.id)
                self.counters["evictions"] += 1
        else:
            self.children.add(peer)
        self.peers[peer] = p
        self.offers.pop(peer, None)
        return p

    def _worst(self, cands: list[Peer], parent: str | None,
               merits: dict[str, tuple] | None = None) -> Peer | None:
        """The candidate to evict: the lowest merit (``merits`` by id, if computed
        already), sparing the ``diverse`` best whose route avoids our parent."""
        ranked = sorted(cands, key=self.merit if merits is None else lambda q: merits[q.id],
                        reverse=True)
        spared = [p.id for p in ranked
                  if parent is None or parent not in p.advert.path][:self._config.diverse]
        for p in reversed(ranked):
            if p.id not in spared:
                return p
        return None

    def bound(self, parent: str | None) -> None:
        """Evict candidates beyond ``max_candidates`` (a child became one, or the parent)."""
        cands = [self.peers[c] for c in self.candidates(parent)]
        while len(cands) > self._config.max_candidates:
            worst = self._worst(cands, parent)
            if worst is None:
                return
            self.drop(worst.id)
            self.counters["evictions"] += 1
            cands.remove(worst)

    def drop(self, peer: str) -> None:
        """Forget a neighbour (not the parent); it may be offered again."""
        p = self.peers.pop(peer, None)
        self.children.discard(peer)
        if len(self.offers) < self._config.max_offers:
            self.offers[peer] = None if p is None else p.rtt

    def lost(self, peer: str) -> None:
        """Membership says ``peer`` is gone: forget it altogether."""
        self.offers.pop(peer, None)
        self.peers.pop(peer, None)
        self.children.discard(peer)

    def forget_silent(self, now: float, parent: str | None) -> None:
        """Drop the neighbours (the parent aside) silent for ``forget_after`` periods."""
        cutoff = now - self._config.forget_after * self._config.period
        for pid in [pid for pid, p in self.peers.items() if p.heard < cutoff and pid != parent]:
            self.drop(pid)
