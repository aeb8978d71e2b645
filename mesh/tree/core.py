"""The latency tree: a spanning tree of the mesh rooted at an elected node, where each
node's parent is chosen for a short path latency to the root.

Theory of operation
-------------------
A pure state machine, one per node: the shell feeds it ``heard`` (a neighbour's
advert, with a round-trip sample), ``lost`` (membership says a node is dead or has
left), ``offer`` (a member it could measure) and ``tick``; it returns actions
(``SendAdvert``, ``Probe``, ``ParentChanged``, ``RootChanged``). Time and randomness
are passed in. Adverts, labels and the feasibility label are in ``advert.py``.

States (``TRANSITIONS``)::

    joining  -> attached   a tree advert arrived within join_wait
    joining  -> root       none did: found a tree (term = highest term heard, or 0)
    attached -> detached   the parent was lost and no neighbour is feasible
    attached|detached -> root    our root was lost and we stand for election
    detached -> attached   a feasible neighbour (usually one with a newer seq)
    root     -> attached   a better tree was heard (merge)

Neighbours (``Neighbours``, ``neighbours.py``, a part the tree owns): parent, children
(neighbours whose advert names us as parent) and at most ``max_candidates`` others,
found by probing members the shell offers.

Sending: children get our advert every period (a node forwards the root's new seq at
once, so it runs down the tree as a wave; a node without a route, or whose parent
went quiet, sends a copy every period so its subtree does not time it out). Parent
and candidates get it every ``refresh_every`` periods and at once when our root,
parent or route changes (``_dirty`` when the rank drifted by more than the hysteresis
margin); on a refresh we ask those we have not heard from lately for theirs, so their
adverts are fresh when we need one to switch or repair.

Root election. Trees are ordered by their root key ``(term, settled, score, id)``,
bigger wins: a node that hears a better tree joins it, so two trees that meet merge
into the better one. ``score`` is the capacity score the shell gives (cpus, power);
``settled`` becomes 1 once the root has been up ``settle_after`` periods.

* A new node listens ``join_wait`` periods and joins the first tree it hears, unless
  it would beat that tree's root (possible only while the tree is unsettled, as at
  start-up): then it founds its own, which wins. So at start-up the best score
  wins, and later a node that just joined never takes over, whatever its score.
  A node that hears no tree founds one at the highest term it has heard.
* When membership reports our root lost, the term goes up by one and ``succeeds``
  names the lost root: the nodes next to the hole (those whose parent was the root,
  and detached ones) stand for election with key ``(term+1, settled, score, id)``.
  Every node that adopts term+1 succeeding its own root stands too if its key
  would beat the one it hears. So the winner is the best key among all remaining
  nodes, whatever the order in which they learnt of the death: everyone reaches
  the same choice. A root's key is frozen when it is elected (``settled`` can only
  go up), so keys never flap; a node falsely reported dead may win again at term+1.
* Cost: a partition that outlives membership's failure detection elects its own
  root at term+1, and on healing that tree wins (higher term). Avoiding this would
  need a pre-vote; churn (joins, leaves, kills) never causes it.

Loop freedom at every step (feasibility, as Babel/DSDV). Each node keeps its
feasibility label ``fd``: the best label it has ever advertised; it never decreases.
A node adopts a neighbour as parent only if that neighbour's advert has a label
strictly better than our ``fd`` (and has a route). Claim: for every live node X whose
parent P is live, fd(P) > fd(X). Then parent pointers strictly increase ``fd`` along
any chain, so no chain can come back to where it started.

* Adopting P: label(advert of P) > fd(X), and every advert P ever sent is <= fd(P)
  now (fd(P) only grows). X's new label is the same key and seq with a larger rank
  (rank + link cost, cost > 0), so it is < label(advert of P) <= fd(P); fd(X)
  becomes max(old fd(X), new label) < fd(P).
* Updates from the current parent are taken even when they are worse (a parent's
  path may lengthen): fd(X) does not change then, and fd(P) has not decreased.
  Better updates raise fd(X) to a label below one P sent, so below fd(P).
* Becoming root sets fd to a label with a better root key than any held so far (a
  new term, or the first tree; ``_become_root`` refuses otherwise): the chain now
  ends at X. The root's seq and ``settled`` only go up. Detaching clears the
  pointer. Children are unaffected: fd(X) only grew.
* Stale, delayed, duplicated or reordered adverts change nothing in the argument:
  any advert P ever sent is <= fd(P) now.

So ranks may go up (a parent lost, a slower path) without any count-to-infinity: a
node that finds no feasible neighbour keeps its subtree and waits for the root's
next seq (every period), which is feasible for everyone outside the subtree and so
reaches it through any neighbour that still has a route. A path-vector check (never
adopt a parent whose ``path`` names us) is kept as a guard; it never fires.

Repair. A parent silent for half of ``parent_timeout`` is asked for its advert; silent
for ``parent_timeout`` periods, or reported lost, it is dropped: the best feasible
neighbour is adopted at once; if none, the node detaches (its subtree stays under
it) and asks every neighbour for a fresh advert; the next seq that reaches a
neighbour makes it feasible. If membership reported the root lost, the node stands
for election instead (a time-out alone is no proof: it may be our link).

Hysteresis. With a route, a node switches to another parent only if its path is
shorter by ``margin`` = max(switch_ratio x rank, switch_min); a better tree, or no
route, switches at once.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

from mesh.errors import LocalProtocolError
from mesh.tree.advert import BOTTOM, NO_ROUTE, Advert, Label, key, label, routed, valid
from mesh.tree.config import Action, ParentChanged, Probe, RootChanged, SendAdvert, TreeConfig
from mesh.tree.neighbours import Neighbours, Peer

STATES = ("joining", "attached", "detached", "root")
TRANSITIONS = {
    ("joining", "attached"),
    ("joining", "root"),
    ("attached", "detached"),
    ("attached", "root"),
    ("detached", "attached"),
    ("detached", "root"),
    ("root", "attached"),
}


class LatencyTree:
    """The tree state of one node. See the module docstring."""

    def __init__(self, me: str, score: float, rng: random.Random,
                 config: TreeConfig | None = None, now: float = 0.0) -> None:
        self.me = me
        self.score = float(score)
        self.rng = rng
        self.config = config or TreeConfig()
        self.state = "joining"
        self.nbrs = Neighbours(me, self.config, rng, now)
        self._counters: dict[str, int] = dict.fromkeys((
            "parent_changes", "root_changes", "elections", "adverts_sent", "bad_adverts",
            "stale_adverts", "infeasible", "timeouts", "loop_guard"), 0)
        self._parent: str | None = None
        self._key: tuple | None = None  # (term, settled, score, root) of our tree
        self._succeeds = ""
        self._seq = 0
        self._rank: float | None = None  # path latency to the root; None: no route
        self._path: list[str] = []
        self._fd: Label = BOTTOM
        self._dead: deque[tuple[int, str]] = deque(maxlen=self.config.dead_roots)  # (term, root)
        self._max_term = -1
        self._started = now
        self._stamp = 0
        self._adv: Advert | None = None
        self._adv_ask: Advert | None = None
        self._told_rank: float | None = None  # rank last sent to parent and candidates
        self._dirty = False  # parent and candidates should get our advert at the next tick
        self._next_period = now
        self._next_refresh = now + self.config.period * rng.uniform(1.0, self.config.refresh_every)
        self._last_flood = now
        self._next_forget = now

    # ------------------------------------------------------------------ queries

    @property
    def parent(self) -> str | None:
        return self._parent

    @property
    def children(self) -> list[str]:
        return sorted(self.nbrs.children)

    @property
    def peers(self) -> dict[str, Peer]:
        """Parent, children and candidates by id (read only: ``nbrs`` keeps them)."""
        return self.nbrs.peers

    def candidates(self) -> list[str]:
        return self.nbrs.candidates(self._parent)

    def neighbours(self) -> list[str]:
        """Parent, children and candidates: the peers the shell should keep heartbeating."""
        return sorted(self.nbrs.peers)

    @property
    def counters(self) -> dict[str, int]:
        return {**self._counters, "evictions": self.nbrs.counters["evictions"]}

    @property
    def root(self) -> str | None:
        return None if self._key is None else self._key[3]

    @property
    def term(self) -> int:
        return -1 if self._key is None else self._key[0]

    @property
    def rank(self) -> float | None:
        """Path latency to the root in seconds (0 for the root), None without a route."""
        return self._rank

    @property
    def depth(self) -> int | None:
        return None if self._rank is None else len(self._path)

    @property
    def fd(self) -> Label:
        """The feasibility label (see the module docstring)."""
        return self._fd

    def election_key(self, term: int, now: float) -> tuple:
        """Our root key if we stood for election at ``term`` now."""
        return (term, self._settled(now), self.score, self.me)

    def advert(self, ask: bool = False) -> Advert:
        """Our current advert (cached; a new ``stamp`` whenever its content changes)."""
        if self._adv is None:
            self._stamp += 1
            term, settled, score, root = self._key or (-1, 0, 0.0, "")
            self._adv = Advert(root, term, settled, score, self._succeeds, self._seq,
                               NO_ROUTE if self._rank is None else self._rank,
                               self._parent or "", self._path, self._stamp)
            self._adv_ask = None
        if not ask:
            return self._adv
        if self._adv_ask is None:
            self._adv_ask = replace(self._adv, ask=1)
        return self._adv_ask

    def view(self) -> dict:
        """This node's place in the tree and its neighbours, as plain data: the agent
        answers it to the ``tree-node`` query, and ``mesh tree`` draws the whole tree from
        every agent's (``mesh.faces.treeview``). ``rtt_ms``: the round trip to the parent;
        ``rank_ms``: the path latency to the root; ``depth``: hops to the root (None
        without a route)."""
        peers = self.nbrs.peers
        parent = peers.get(self._parent) if self._parent else None
        return {
            "id": self.me, "state": self.state, "root": self.root, "term": self.term,
            "parent": self._parent, "rank_ms": _ms(self._rank), "depth": self.depth,
            "rtt_ms": _ms(parent.rtt) if parent else None, "seq": self.advert().seq,
            "children": self.children,
            "candidates": [{"id": c, "rtt_ms": _ms(peers[c].rtt), "path_ms": _ms(self.nbrs.via(peers[c]))}
                           for c in self.candidates()],
            "counters": self.counters,
        }

    def next_timer(self, now: float) -> float:
        """The latest time by which ``tick`` should run again."""
        times = [self._next_period]
        parent = self.nbrs.peers.get(self._parent) if self._parent else None
        if parent is not None:
            timeout = self.config.parent_timeout * self.config.period
            ask = max(parent.heard + timeout / 2, parent.asked + self.config.period / 2)
            times += [parent.heard + timeout, ask]
        return max(min(times), now)

    # ------------------------------------------------------------------ events

    def set_score(self, score: float) -> None:
        """Our capacity score for future elections (a root keeps the key it won with)."""
        self.score = float(score)

    def offer(self, peer: str, rtt: float | None, now: float) -> list[Action]:
        """The shell knows a live member we could measure (``rtt`` in seconds if known):
        probed on a later tick (``neighbours.py``)."""
        self.nbrs.offer(peer, rtt)
        return []

    def heard(self, peer: str, advert: Advert, rtt: float | None, now: float) -> list[Action]:
        """An advert from ``peer``, with a round-trip sample (seconds, or None if not
        measured). A malformed advert is counted and dropped; nothing is raised."""
        if peer == self.me or not valid(advert, self.config.max_depth):
            self._counters["bad_adverts"] += 1
            return []
        if advert.term > self._max_term:
            self._max_term = advert.term
        acts: list[Action] = []
        if advert.ask:
            acts.append(self._send(peer))
        p = self.nbrs.peers.get(peer)
        if p is None:
            p = self.nbrs.admit(peer, advert, rtt, now, self._parent)
            if p is None:
                return acts
        else:
            if advert.stamp < p.advert.stamp:
                self._counters["stale_adverts"] += 1
                return acts
            p.heard = now
            if rtt is not None and rtt >= 0.0:
                p.rtt = rtt if p.rtt is None else p.rtt + self.config.rtt_alpha * (rtt - p.rtt)
            if advert.stamp == p.advert.stamp:
                return acts  # a repeat: only a sign of life
            p.advert = advert
            if advert.parent == self.me:
                self.nbrs.children.add(peer)
            elif peer in self.nbrs.children:
                self.nbrs.children.discard(peer)
                self.nbrs.bound(self._parent)
                if peer not in self.nbrs.peers:
                    return acts
        if peer == self._parent:
            return acts + self._from_parent(now)
        if peer in self.nbrs.children:
            return acts
        return acts + self._consider(p, now)

    def lost(self, peer: str, now: float) -> list[Action]:
        """Membership says ``peer`` is dead or has left."""
        self.nbrs.lost(peer)
        acts: list[Action] = []
        if peer == self.root and peer != self.me:
            if (self.term, peer) not in self._dead:
                self._dead.append((self.term, peer))  # that tree, not the node: it may return
            if peer != self._parent and self.state == "detached":
                return self._stand(now, "root lost")
        if peer == self._parent:
            acts += self._lose_parent(now, "lost")
        return acts

    def tick(self, now: float) -> list[Action]:
        """Timers: founding a tree, the root's seq, parent time-out, refresh, probes."""
        acts: list[Action] = []
        cfg, period = self.config, self.config.period
        parent = self.nbrs.peers.get(self._parent) if self._parent else None
        if parent is not None:
            silent = now - parent.heard
            if silent >= cfg.parent_timeout * period:
                self._counters["timeouts"] += 1
                del self.nbrs.peers[parent.id]
                acts += self._lose_parent(now, "timeout")
            elif silent >= cfg.parent_timeout * period / 2 and now - parent.asked >= period / 2:
                parent.asked = now  # a lost advert or two upstream: ask before giving up
                acts.append(self._send(parent.id, ask=True))
        if now < self._next_period:
            return acts
        self._next_period = max(self._next_period + period, now + period / 2)
        if self.state == "joining" and now - self._started >= cfg.join_wait * period:
            acts += self._become_root(max(self._max_term, 0), "", now, "no tree heard")
        if self.state == "root":
            assert self._key is not None
            if self._key[1] == 0 and self._settled(now):
                self._key = (self._key[0], 1, self._key[2], self._key[3])
                self._dirty = True
            self._seq += 1
            self._raise_fd()
            self._adv = None
        if now >= self._next_forget:
            self._next_forget = now + cfg.forget_after * period / 4
            self.nbrs.forget_silent(now, self._parent)
        if self.state == "root" or self._rank is None or now - self._last_flood >= 1.5 * period:
            acts += self._flood(now)
        if self._dirty or now >= self._next_refresh:
            if now >= self._next_refresh:
                self._next_refresh = now + period * cfg.refresh_every * self.rng.uniform(0.8, 1.2)
            acts += self._tell_others(now, refresh=True)
        if self._rank is None and self.state != "joining":
            acts += self._ask_all(now)
        for peer in self.nbrs.explore(now, self._parent, self._rank is not None):
            self._counters["adverts_sent"] += 1  # an offer stays until admitted: a probe may be lost
            acts += [Probe(peer), SendAdvert(peer, self.advert(ask=True))]
        return acts

    # ------------------------------------------------------------------ choosing

    def _feasible(self, p: Peer) -> bool:
        a = p.advert
        if a.rank < 0.0 or a.parent == self.me or (a.term, a.root) in self._dead \
                or len(a.path) >= self.config.max_depth:
            return False
        if label(a) <= self._fd:
            self._counters["infeasible"] += 1
            return False
        if self.me in a.path:  # cannot happen (see the module docstring): a guard
            self._counters["loop_guard"] += 1
            return False
        return True

    def _better(self, p: Peer) -> bool:
        """Whether ``p`` is worth a switch from our current route (with hysteresis)."""
        if self._rank is None or self._key is None:
            return True
        theirs = key(p.advert)
        if theirs != self._key:
            return theirs > self._key
        return self.nbrs.via(p) < self._rank - self.config.margin(self._rank)

    def _consider(self, p: Peer, now: float) -> list[Action]:
        if self._better(p) and self._feasible(p):
            return self._choose(now, "better")
        return []

    def _choose(self, now: float, reason: str) -> list[Action]:
        """Adopt the best feasible neighbour if it beats our route (or we have none)."""
        best, best_merit = None, None
        for p in self.nbrs.peers.values():
            if p.advert.rank < 0.0 or p.id == self._parent or p.id in self.nbrs.children:
                continue
            merit = (key(p.advert), -self.nbrs.via(p))
            if (best_merit is None or merit > best_merit) and self._feasible(p):
                best, best_merit = p, merit
        if best is None or not self._better(best):
            return []
        return self._adopt(best, now, reason)

    def _adopt(self, p: Peer, now: float, reason: str) -> list[Action]:
        a = p.advert
        if self.state == "joining" and self.election_key(a.term, now) > key(a):
            # an unsettled tree, and we would beat its root: found ours, it will win
            return self._become_root(a.term, a.succeeds, now, "better key than the tree heard")
        if self._succeeds_better(a, now):
            return self._become_root(a.term, a.succeeds, now, "succession")
        old_parent, old_root, old_term = self._parent, self.root, self.term
        self._parent = p.id
        self._set_state("attached")
        self._set_route(a, self.nbrs.via(p))
        self._counters["parent_changes"] += 1
        acts: list[Action] = [ParentChanged(old_parent, p.id, reason)]
        if (old_root, old_term) != (a.root, a.term):
            self._counters["root_changes"] += 1
            acts.append(RootChanged(old_root, a.root, a.term))
        self.nbrs.bound(self._parent)
        return acts + self._send_all(now)

    def _from_parent(self, now: float) -> list[Action]:
        """An advert from our parent: take it, even if worse (see the loop argument)."""
        p = self.nbrs.peers[self._parent]
        a = p.advert
        if self.me in a.path:  # cannot happen (see the module docstring): a guard
            self._counters["loop_guard"] += 1
            del self.nbrs.peers[p.id]
            return self._lose_parent(now, "loop guard")
        if not routed(a):
            if self._rank is None:
                return []
            self._rank = None
            self._adv = None
            return self._flood(now) + self._tell_others(now) + self._choose(now, "parent detached") \
                + self._ask_all(now)
        old_key, old_seq, old_rank = self._key, self._seq, self._rank
        if self._succeeds_better(a, now):
            return self._become_root(a.term, a.succeeds, now, "succession")
        self._set_route(a, self.nbrs.via(p))
        acts: list[Action] = []
        if key(a) != old_key:  # another root or term (or the root became settled)
            if old_key is None or (old_key[3], old_key[0]) != (a.root, a.term):
                self._counters["root_changes"] += 1
                acts.append(RootChanged(None if old_key is None else old_key[3], a.root, a.term))
            return acts + self._send_all(now)
        assert self._rank is not None
        moved = old_rank is None or abs(self._rank - old_rank) > self.config.margin(old_rank)
        if a.seq != old_seq or moved:
            acts += self._flood(now)
        told = self._told_rank
        if told is None or abs(self._rank - told) > self.config.margin(told):
            self._dirty = True
        if old_rank is None or self._rank > old_rank + self.config.margin(old_rank) / 2:
            acts += self._choose(now, "parent worse")
        return acts

    def _lose_parent(self, now: float, reason: str) -> list[Action]:
        """Our parent is gone (its peer entry already removed)."""
        old = self._parent
        self._rank = None
        self._adv = None
        acts = self._choose(now, f"parent {reason}")
        if acts:
            return acts
        if (self.term, self.root) in self._dead:  # membership said so: a time-out alone is no proof
            return self._stand(now, f"parent {reason}")
        self._parent = None
        self._set_state("detached")
        self._counters["parent_changes"] += 1
        return [ParentChanged(old, None, f"detached: {reason}")] + self._flood(now) \
            + self._ask_all(now, force=True)

    def _succeeds_better(self, a: Advert, now: float) -> bool:
        """Whether ``a`` is the election after our root's loss and we would win it."""
        ours = self._key
        return ours is not None and a.term == ours[0] + 1 and a.succeeds == ours[3] \
            and self.election_key(a.term, now) > key(a)

    def _stand(self, now: float, reason: str) -> list[Action]:
        """Our root is lost: stand for election at the next term."""
        assert self._key is not None
        self._counters["elections"] += 1
        return self._become_root(self._key[0] + 1, self._key[3], now, reason)

    def _become_root(self, term: int, succeeds: str, now: float, reason: str) -> list[Action]:
        mine = self.election_key(term, now)
        fd = (*mine, 0, -0.0)
        if fd <= self._fd:
            raise LocalProtocolError(f"root key {mine} is not above our feasibility label {self._fd}")
        old_parent, old_root = self._parent, self.root
        self._set_state("root")
        self._parent = None
        self._key, self._succeeds, self._seq, self._rank, self._path = mine, succeeds, 0, 0.0, []
        self._fd = fd
        self._adv = None
        acts: list[Action] = []
        if old_parent is not None:
            self._counters["parent_changes"] += 1
            acts.append(ParentChanged(old_parent, None, reason))
        self._counters["root_changes"] += 1
        acts.append(RootChanged(old_root, self.me, term))
        return acts + self._send_all(now)

    # ------------------------------------------------------------------ sending

    def _send(self, peer: str, ask: bool = False) -> SendAdvert:
        self._counters["adverts_sent"] += 1
        return SendAdvert(peer, self.advert(ask))

    def _flood(self, now: float) -> list[Action]:
        """Our advert to every child."""
        self._last_flood = now
        return [self._send(c) for c in sorted(self.nbrs.children)]

    def _tell_others(self, now: float, refresh: bool = False) -> list[Action]:
        """Our advert to parent and candidates; on a refresh, ask those we have not
        heard from lately for theirs."""
        self._dirty = False
        self._told_rank = self._rank
        stale = now - self.config.refresh_every * self.config.period
        children = self.nbrs.children
        acts = []
        for pid, p in self.nbrs.peers.items():
            if pid not in children:
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
        children = self.nbrs.children
        acts = []
        for pid, p in self.nbrs.peers.items():
            if pid not in children and (force or now - p.asked >= self.config.period):
                p.asked = now
                acts.append(self._send(pid, ask=True))
        return acts

    # ------------------------------------------------------------------ state

    def _set_state(self, new: str) -> None:
        if new == self.state:
            return
        if (self.state, new) not in TRANSITIONS:
            raise LocalProtocolError(f"tree: {self.state} -> {new} is not allowed")
        self.state = new

    def _settled(self, now: float) -> int:
        return int(now - self._started >= self.config.settle_after * self.config.period)

    def _set_route(self, a: Advert, rank: float) -> None:
        self._key = key(a)
        self._succeeds = a.succeeds
        self._seq = a.seq
        self._rank = rank
        self._path = [self._parent, *a.path]
        self._raise_fd()
        self._adv = None

    def _raise_fd(self) -> None:
        assert self._key is not None and self._rank is not None
        label = (*self._key, self._seq, -self._rank)
        if label > self._fd:
            self._fd = label



def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
