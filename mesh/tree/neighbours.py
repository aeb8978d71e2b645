"""The bounded neighbour set of a latency tree node, and what it sends to it.

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

Sending: children get our advert every period (a node forwards the root's new seq
at once, so it runs down the tree as a wave; a node without a route, or whose
parent went quiet, sends a copy every period so its subtree does not time it
out). Parent and candidates get it every ``refresh_every`` periods and at once when
our root, parent or route changes (``_dirty`` when the rank drifted by more than the
hysteresis margin); on a refresh we ask those we have not heard from lately for
theirs, so their adverts are fresh when we need one to switch or repair.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.tree.advert import Advert
from mesh.tree.config import Action, Probe, SendAdvert, TreeConfig

INF = float("inf")


@dataclass
class Peer:
    """A neighbour: its last advert, our smoothed round trip to it, when we heard it."""

    id: str
    advert: Advert
    rtt: float | None
    heard: float
    asked: float = -1e9  # when we last asked it for its advert


class NeighbourSet:
    """Neighbour bookkeeping for ``LatencyTree`` (a mixin: the state lives there)."""

    me: str
    rng: random.Random
    config: TreeConfig
    peers: dict[str, Peer]
    counters: dict[str, int]
    _parent: str | None
    _children: set[str]
    _offers: dict[str, float | None]
    _rank: float | None
    _dirty: bool
    _told_rank: float | None
    _last_flood: float
    _next_explore: float

    def advert(self, ask: bool = False) -> Advert:
        raise NotImplementedError

    def candidates(self) -> list[str]:
        return sorted(p for p in self.peers if p != self._parent and p not in self._children)

    def neighbours(self) -> list[str]:
        """Parent, children and candidates: the peers the shell should keep heartbeating."""
        return sorted(self.peers)

    # ------------------------------------------------------------------ offers

    def offer(self, peer: str, rtt: float | None, now: float) -> list[Action]:
        """The shell knows a live member we could measure (probed on a later tick)."""
        if peer == self.me or peer in self.peers:
            return []
        if peer not in self._offers and len(self._offers) >= self.config.max_offers:
            del self._offers[self.rng.choice(list(self._offers))]
        self._offers[peer] = rtt
        return []

    def _via(self, p: Peer) -> float:
        """Path latency to the root through ``p`` (infinite without a route)."""
        rank = p.advert.rank
        if rank < 0.0:
            return INF
        rtt = p.rtt
        return rank + (self.config.unknown_rtt if rtt is None else max(rtt, self.config.min_cost))

    # ------------------------------------------------------------------ neighbours

    def _merit(self, p: Peer) -> tuple:
        a = p.advert
        return (a.key(), -self._via(p)) if a.rank >= 0.0 else ((-2,), 0.0)

    def _admit(self, peer: str, advert: Advert, rtt: float | None, now: float) -> Peer | None:
        """A new neighbour, if there is room (a child always has room)."""
        p = Peer(peer, advert, rtt if rtt is not None and rtt >= 0.0 else None, now)
        if advert.parent != self.me:
            cands = [q for q in self.peers.values()
                     if q.id != self._parent and q.id not in self._children]
            if len(cands) >= self.config.max_candidates:
                merit = self._merit(p)
                if merit <= min(map(self._merit, cands)):
                    return None  # no room now: it stays offered, explored again later
                worst = self._worst(cands)
                if worst is None or merit <= self._merit(worst):
                    return None  # no room now: it stays offered, explored again later
                self._drop(worst.id)
                self.counters["evictions"] += 1
        else:
            self._children.add(peer)
        self.peers[peer] = p
        self._offers.pop(peer, None)
        return p

    def _worst(self, cands: list[Peer]) -> Peer | None:
        """The candidate to evict: the lowest merit, sparing the ``diverse`` best whose
        route avoids our parent."""
        ranked = sorted(cands, key=self._merit, reverse=True)
        spared = [p.id for p in ranked
                  if self._parent is None or self._parent not in p.advert.path][:self.config.diverse]
        for p in reversed(ranked):
            if p.id not in spared:
                return p
        return None

    def _bound_candidates(self) -> None:
        cands = [self.peers[c] for c in self.candidates()]
        while len(cands) > self.config.max_candidates:
            worst = self._worst(cands)
            if worst is None:
                return
            self._drop(worst.id)
            self.counters["evictions"] += 1
            cands.remove(worst)

    def _drop(self, peer: str) -> None:
        """Forget a neighbour (not the parent); it may be offered again."""
        p = self.peers.pop(peer, None)
        self._children.discard(peer)
        if len(self._offers) < self.config.max_offers:
            self._offers[peer] = None if p is None else p.rtt

    # ------------------------------------------------------------------ sending

    def _send(self, peer: str, ask: bool = False) -> SendAdvert:
        self.counters["adverts_sent"] += 1
        return SendAdvert(peer, self.advert(ask))

    def _flood(self, now: float) -> list[Action]:
        """Our advert to every child."""
        self._last_flood = now
        return [self._send(c) for c in sorted(self._children)]

    def _tell_others(self, now: float, refresh: bool = False) -> list[Action]:
        """Our advert to parent and candidates; on a refresh, ask those we have not
        heard from lately for theirs."""
        self._dirty = False
        self._told_rank = self._rank
        stale = now - self.config.refresh_every * self.config.period
        acts = []
        for pid, p in self.peers.items():
            if pid not in self._children:
                ask = refresh and pid != self._parent and p.heard < stale
                if ask:
                    p.asked = now
                acts.append(self._send(pid, ask))
        return acts

    def _send_all(self, now: float) -> list[Action]:
        return self._flood(now) + self._tell_others(now)

    def _ask_all(self, now: float, force: bool = False) -> list[Action]:
        """Ask every neighbour but our children for a fresh advert (at most once a
        period each, unless ``force``)."""
        acts = []
        for pid, p in self.peers.items():
            if pid not in self._children and (force or now - p.asked >= self.config.period):
                p.asked = now
                acts.append(self._send(pid, ask=True))
        return acts

    def _explore(self, now: float) -> list[Action]:
        if not self._offers:
            return []
        full = len(self.peers) - len(self._children) - (self._parent is not None) \
            >= self.config.max_candidates
        if not full or self._rank is None:
            n = self.config.probe_burst
        elif now >= self._next_explore:
            n = 1
        else:
            return []
        self._next_explore = now + self.config.explore_every * self.config.period
        # filling up: the closest offer first (a near node is a likely parent or child);
        # then, and when exploring, at random
        measured = [(rtt, peer) for peer, rtt in self._offers.items() if rtt is not None]
        picks = [min(measured)[1]] if measured and n > 1 else []
        rest = sorted(p for p in self._offers if p not in picks)
        picks += self.rng.sample(rest, min(n - len(picks), len(rest)))
        acts: list[Action] = []
        for peer in picks:  # an offer stays until admitted: a probe may be lost
            self.counters["adverts_sent"] += 1
            acts += [Probe(peer), SendAdvert(peer, self.advert(ask=True))]
        return acts
