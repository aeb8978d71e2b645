"""A virtual clock, a latency model and a fake network that drive ``LatencyTree`` cores.

Theory of operation
-------------------
No socket, thread or real clock: events wait on a virtual ``Clock``
(``mesh.sim.clock``), and all randomness comes from one seeded ``random.Random``, so
one seed gives one run.

Latency model (``clustered``): a server, hubs around it, devices around each hub,
placed on a plane whose unit is one millisecond of one-way delay. Every node has an
access delay (its last link). Inside a cluster, one way = the two access delays;
between clusters, traffic goes through the hubs' network: the two access delays
plus the distance between the two hubs (the server sits at the origin).

Links: a node can only measure, and so talk to, the nodes it has a link with:

* the server and every hub; each hub and its 3 nearest hubs;
* each device and its hub, ``peers`` random devices of its cluster, and ``far``
  random nodes anywhere (the random far links).

Links are symmetric. The shell's ``offer`` gives a node exactly its links, so the
fair oracle for path latency is the shortest-path tree to the elected root over the
same links (Dijkstra, ``oracle``), with the same true round-trip times.

Network: an advert from A to B arrives after the one-way delay times a random
factor in [1, 1 + jitter] (so it may overtake an older one), is lost with
probability ``loss`` or delivered twice with probability ``duplicate``; each delivery carries a round-trip sample (true RTT times the
same kind of factor). Membership is modelled, not run: when a node is killed, every
node that knows it (a neighbour, an offer, or everyone if it was the root) gets
``lost`` after a delay drawn from ``detect`` (SWIM's detection time); after a
graceful leave, from ``leave_detect``.

Checks: after every event that changes a parent pointer the simulator follows the
pointers from that node over the global state (live nodes only): a new cycle would
have to go through it, so this checks the whole forest after every event.
``check_all`` walks every node, and runs after every kill, leave and join. With
``paranoid`` the cores' actions are not trusted: after every event the simulator reads
the parent pointer of the core the event was for, and walks the whole forest when it
moved, and after every event that was not one core's (a boot, a kill, a leave, a join);
the forest changes at no other step (an event calls one core; ``_do`` calls none), so
this is a whole-forest check after every event.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.sim.clock import Clock
from mesh.tree import LatencyTree, ParentChanged, Probe, RootChanged, SendAdvert, TreeConfig


@dataclass
class Topology:
    """Nodes (by index), their latency model and the links they can measure."""

    kind: list[str] = field(default_factory=list)  # "server" | "hub" | "device"
    hub: list[int] = field(default_factory=list)  # a device's hub; a hub itself; -1 server
    pos: list[tuple[float, float]] = field(default_factory=list)  # of the node's hub, ms
    access: list[float] = field(default_factory=list)  # one-way access delay, seconds
    score: list[float] = field(default_factory=list)
    links: list[set[int]] = field(default_factory=list)
    members: dict[int, list[int]] = field(default_factory=dict)  # hub -> its devices
    # one-way delays computed so far, by (a, b) (a node's place never changes)
    _delays: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.kind)

    def one_way(self, a: int, b: int) -> float:
        """One-way delay between two nodes, seconds."""
        d = self._delays.get((a, b))
        if d is None:
            d = self.access[a] + self.access[b]
            if self.hub[a] != self.hub[b]:
                (xa, ya), (xb, yb) = self.pos[a], self.pos[b]
                d += math.hypot(xa - xb, ya - yb) / 1000.0
            self._delays[(a, b)] = self._delays[(b, a)] = d
        return d

    def rtt(self, a: int, b: int) -> float:
        return 2.0 * self.one_way(a, b)

    def link(self, a: int, b: int) -> None:
        if a != b:
            self.links[a].add(b)
            self.links[b].add(a)

    def _node(self, kind: str, hub: int, pos: tuple[float, float], access: float,
              score: float) -> int:
        self.kind.append(kind)
        self.hub.append(hub)
        self.pos.append(pos)
        self.access.append(access)
        self.score.append(score)
        self.links.append(set())
        return len(self.kind) - 1

    def add_device(self, hub: int, rng: random.Random, alive: set[int] | None = None,
                   peers: int = 4, far: int = 2) -> int:
        """A device near ``hub``, linked to it, to ``peers`` devices of its cluster and
        to ``far`` nodes elsewhere (among ``alive`` nodes if given)."""
        i = self._node("device", hub, self.pos[hub], rng.uniform(0.0005, 0.004),
                       rng.uniform(1.0, 5.0))
        self.link(i, hub)
        mates = [m for m in self.members.setdefault(hub, [])
                 if alive is None or m in alive]
        for m in rng.sample(mates, min(peers, len(mates))):
            self.link(i, m)
        self.members[hub].append(i)
        pool = [j for j in (alive if alive is not None else range(len(self) - 1))
                if self.hub[j] != hub]
        for j in rng.sample(sorted(pool), min(far, len(pool))):
            self.link(i, j)
        return i


def clustered(n: int, rng: random.Random, hubs: int | None = None, peers: int = 4,
              far: int = 2) -> Topology:
    """``n`` nodes: one server (index 0, the best score), hubs within 3-25 ms of it,
    and devices 0.5-4 ms from their hub (see the module docstring)."""
    hubs = hubs if hubs is not None else max(1, round(math.sqrt(n) * 1.25))
    topo = Topology()
    topo._node("server", -1, (0.0, 0.0), 0.0002, 100.0)
    for _ in range(hubs):
        r, a = rng.uniform(3.0, 25.0), rng.uniform(0.0, 2 * math.pi)
        h = topo._node("hub", -2, (r * math.cos(a), r * math.sin(a)), 0.0003,
                       rng.uniform(10.0, 20.0))
        topo.hub[h] = h
        topo.link(0, h)
    for h in range(1, hubs + 1):
        near = sorted(range(1, hubs + 1), key=lambda g: topo.one_way(h, g))[1:4]
        for g in near:
            topo.link(h, g)
    for _ in range(n - 1 - hubs):
        topo.add_device(rng.randrange(1, hubs + 1), rng, peers=peers, far=0)
    devices = [i for i in range(len(topo)) if topo.kind[i] == "device"]
    for i in devices:  # far links once every node exists
        pool = range(len(topo))
        for _ in range(far):
            j = rng.choice(pool)
            if topo.hub[j] != topo.hub[i]:
                topo.link(i, j)
    return topo


def node_id(i: int) -> str:
    return f"n{i:05d}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


class LoopError(AssertionError):
    """Parent pointers of live nodes formed a cycle."""


class TreeSim:
    """Virtual clock plus fake network for ``LatencyTree`` cores. See the module docstring."""

    def __init__(self, topo: Topology, seed: int = 0, config: TreeConfig | None = None, *,
                 loss: float = 0.0, duplicate: float = 0.0, jitter: float = 0.1,
                 detect: tuple[float, float] = (1.5, 4.0),
                 leave_detect: tuple[float, float] = (0.02, 0.3),
                 paranoid: bool = False) -> None:
        self.topo = topo
        self.rng = random.Random(seed)
        self.config = config or TreeConfig()
        self.loss, self.duplicate, self.jitter = loss, duplicate, jitter
        self.paranoid = paranoid  # check_all whenever the forest may have changed (docstring)
        self.detect, self.leave_detect = detect, leave_detect
        self.clock = Clock()
        self.cores: dict[int, LatencyTree] = {}
        self.ids: list[str] = [node_id(i) for i in range(len(topo))]  # node_id(i), made once
        self.alive: set[int] = set()
        self.index: dict[str, int] = {}
        self.stats: Counter[str] = Counter()
        self.root_changes: list[tuple[float, int, str | None]] = []
        # (how the parent went, seconds from its going to its orphan's repair)
        self.repairs: list[tuple[str, float]] = []
        self._pending: dict[int, tuple[str, float]] = {}  # orphan -> (how, when)
        self._polling = False
        self._event_core: int | None = None  # the core the running event is for (paranoid)
        self._parents: dict[int, str | None] = {}  # (paranoid) parents at the last check

    # ------------------------------------------------------------------ setup

    def start(self, i: int, at: float | None = None) -> None:
        """Start node ``i`` at virtual time ``at`` (now by default)."""
        when = self.now if at is None else at
        self.clock.at(when, self._boot, i)

    def _boot(self, i: int) -> None:
        while len(self.ids) <= i:  # (a device that joined since)
            self.ids.append(node_id(len(self.ids)))
        nid = self.ids[i]
        core = LatencyTree(nid, self.topo.score[i], random.Random(f"{nid}/{self.rng.random()}"),
                           self.config, self.now)
        self.cores[i] = core
        self.index[nid] = i
        self.alive.add(i)
        for j in sorted(self.topo.links[i]):
            if j in self.alive and j != i:
                self._do(i, core.offer(node_id(j), self.topo.rtt(i, j), self.now))
                self._do(j, self.cores[j].offer(nid, self.topo.rtt(i, j), self.now))
        self.clock.at(self.now + self.rng.uniform(0, self.config.period / 10), self._tick, i)

    def join(self, hub: int | None = None) -> int:
        """A new device joins now, near ``hub`` (a random live hub by default)."""
        hubs = [h for h in sorted(self.alive) if self.topo.kind[h] == "hub"]
        hub = hub if hub is not None else self.rng.choice(hubs or sorted(self.alive))
        i = self.topo.add_device(hub, self.rng, self.alive)
        self._boot(i)
        self.check_all()
        return i

    # ------------------------------------------------------------------ faults

    def kill(self, i: int) -> None:
        """Node ``i`` stops now; membership tells those who know it after ``detect``."""
        self._remove(i, self.detect, "kill")

    def leave(self, i: int) -> None:
        """Node ``i`` leaves gracefully; membership tells after ``leave_detect``."""
        self._remove(i, self.leave_detect, "leave")

    def _remove(self, i: int, delay: tuple[float, float], how: str) -> None:
        """Times the repair of a non-root node's orphans (a root's: ``kill_root``)."""
        if i not in self.alive:
            return
        nid = node_id(i)
        self.alive.discard(i)
        self._pending.pop(i, None)
        was_root = self.cores[i].state == "root"
        for j in sorted(self.alive):
            c = self.cores[j]
            knows = was_root or nid in c.peers or nid in c.nbrs.offers or c.root == nid
            if knows:
                self.clock.at(self.now + self.rng.uniform(*delay), self._lost, j, nid)
            if c.parent == nid and not was_root:
                self._pending.setdefault(j, (how, self.now))
        if self._pending and not self._polling:
            self._polling = True
            self.clock.at(self.now, self._poll)
        self.check_all()

    # ------------------------------------------------------------------ clock

    @property
    def now(self) -> float:
        return self.clock.now

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at virtual time ``when``."""
        self.clock.at(when, fn)

    def run_until(self, until: float) -> None:
        self.clock.run_until(until, self._check_after_each if self.paranoid else None)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def _check_after_each(self) -> bool:
        """``paranoid``: the whole forest is walked after every event that moved a parent
        pointer (read from the core) or was not one core's (module docstring)."""
        self.stats["events_checked"] += 1
        i, self._event_core = self._event_core, None
        if i is None:
            self._parents = {j: self.cores[j].parent for j in self.alive}
        else:
            parent = self.cores[i].parent
            if parent == self._parents.get(i):
                return False
            self._parents[i] = parent
        self.check_all()
        return False  # (never stops the run)

    # ------------------------------------------------------------------ events

    def _deliver(self, i: int, sender: int, advert) -> None:
        self._event_core = i
        if i in self.alive:
            self.stats["delivered"] += 1
            rtt = self.topo.rtt(i, sender) * (1.0 + self.jitter * self.rng.random())
            self._do(i, self.cores[i].heard(self.ids[sender], advert, rtt, self.clock.now))
        else:
            self.stats["dropped"] += 1

    def _tick(self, i: int) -> None:
        self._event_core = i
        if i in self.alive:
            now, core = self.clock.now, self.cores[i]
            self._do(i, core.tick(now))
            self.clock.at(max(core.next_timer(now), now + 1e-3), self._tick, i)

    def _lost(self, i: int, peer: str) -> None:
        self._event_core = i
        if i in self.alive:
            self._do(i, self.cores[i].lost(peer, self.clock.now))

    def _do(self, i: int, actions: list) -> None:
        for act in actions:
            if type(act) is SendAdvert:
                j = self.index.get(act.peer)
                if j is None or (self.loss and self.rng.random() < self.loss):
                    self.stats["lost"] += 1
                    continue
                self.stats["sent"] += 1
                copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
                for _ in range(copies):
                    delay = self.topo.one_way(i, j) * (1.0 + self.jitter * self.rng.random())
                    self.clock.at(self.clock.now + delay, self._deliver, j, i, act.advert)
            elif type(act) is ParentChanged:
                self.stats["parent_changes"] += 1
                if act.new is not None:
                    self.check_from(i)
            elif type(act) is RootChanged:
                self.stats["root_changes"] += 1
                if act.new == self.ids[i]:
                    self.root_changes.append((self.now, i, act.old))
            elif type(act) is Probe:
                self.stats["probes"] += 1
            else:
                raise TypeError(f"unknown action {act!r}")

    # ------------------------------------------------------------------ global views

    def parent_of(self, i: int) -> int | None:
        """The live parent of ``i`` (None: no parent, or a dead one)."""
        p = self.cores[i].parent
        j = None if p is None else self.index.get(p)
        return j if j in self.alive else None

    def check_from(self, i: int) -> None:
        """Follow parent pointers from ``i``; raise ``LoopError`` on a cycle."""
        self.stats["loop_checks"] += 1
        seen = {i}
        j = self.parent_of(i)
        while j is not None:
            if j in seen:
                raise LoopError(f"t={self.now:.3f}: cycle through {node_id(i)}: "
                                + " -> ".join(node_id(k) for k in seen))
            seen.add(j)
            j = self.parent_of(j)

    def check_all(self) -> None:
        """Follow the parent pointers of every live node; raise ``LoopError`` on a cycle."""
        self.stats["full_checks"] += 1
        done: set[int] = set()
        for i in self.alive:
            trail: list[int] = []
            on_trail: set[int] = set()
            j: int | None = i
            while j is not None and j not in done:
                if j in on_trail:
                    raise LoopError(f"t={self.now:.3f}: cycle: "
                                    + " -> ".join(node_id(k) for k in trail))
                trail.append(j)
                on_trail.add(j)
                j = self.parent_of(j)
            done.update(trail)

    def top(self, i: int) -> int:
        """The node reached by following parent pointers from ``i``."""
        j = i
        while (p := self.parent_of(j)) is not None:
            j = p
        return j

    def connected(self, i: int) -> bool:
        """Whether ``i``'s parent chain ends at a live root."""
        return self.cores[self.top(i)].state == "root"

    def roots(self) -> list[int]:
        return sorted(i for i in self.alive if self.cores[i].state == "root")

    def path_latency(self, i: int) -> float | None:
        """True round-trip latency along ``i``'s parent chain to a root (None if none)."""
        total, j = 0.0, i
        while (p := self.parent_of(j)) is not None:
            total += self.topo.rtt(j, p)
            j = p
        return total if self.cores[j].state == "root" else None

    def oracle(self, root: int) -> dict[int, float]:
        """Shortest round-trip path latency from every live node to ``root`` over the
        links among live nodes (Dijkstra)."""
        dist = {root: 0.0}
        heap = [(0.0, root)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist.get(u, math.inf):
                continue
            for v in self.topo.links[u]:
                if v in self.alive:
                    nd = d + self.topo.rtt(u, v)
                    if nd < dist.get(v, math.inf):
                        dist[v] = nd
                        heapq.heappush(heap, (nd, v))
        return dist

    def stretch(self) -> list[float]:
        """For every live node but the root that has some path to it over live links:
        tree path latency / shortest path latency (``inf`` if not connected to it)."""
        roots = self.roots()
        if len(roots) != 1:
            return [math.inf] * len(self.alive)
        root = roots[0]
        best = self.oracle(root)
        out = []
        for i in self.alive:
            if i != root and i in best:
                lat = self.path_latency(i)
                out.append(math.inf if lat is None else lat / best[i])
        return out

    def reachable_connected(self) -> bool:
        """Whether there is one root and every live node with a path to it over live
        links (a node whose links all died has none), and done joining, is connected
        to it."""
        roots = self.roots()
        return len(roots) == 1 and all(self.connected(i) for i in self.oracle(roots[0])
                                       if self.cores[i].state != "joining")

    def best_candidate(self) -> int:
        """The live node with the best election key (the expected root after a re-root)."""
        return max(self.alive, key=lambda i: self.cores[i].election_key(0, self.now)[1:])

    # ------------------------------------------------------------------ repair

    def _poll(self) -> None:
        for i in list(self._pending):
            if i not in self.alive:
                del self._pending[i]
            elif self.connected(i):
                how, since = self._pending.pop(i)
                self.repairs.append((how, self.now - since))
        if self._pending:
            self.clock.at(self.now + 0.05, self._poll)
        else:
            self._polling = False


def grow(n: int, seed: int, config: TreeConfig | None = None, start_within: float = 2.0,
         **net) -> TreeSim:
    """A ``clustered`` mesh of ``n`` nodes, all started within ``start_within`` seconds."""
    rng = random.Random(seed)
    sim = TreeSim(clustered(n, rng), seed, config, **net)
    for i in range(n):
        sim.start(i, at=rng.uniform(0.0, start_within))
    return sim


@dataclass
class Reroot:
    """A timed root kill: ``seconds`` to ``reachable_connected`` again, and the root."""

    killed: int
    at: float
    expected: int  # the best election key among the survivors
    seconds: float | None = None
    root: int | None = None


def kill_root(sim: TreeSim, poll: float = 0.05) -> Reroot:
    """Kill the current root and time the re-root (see ``Reroot``)."""
    (root,) = sim.roots()
    sim.kill(root)
    r = Reroot(root, sim.now, sim.best_candidate())

    def check() -> None:
        if sim.reachable_connected():
            r.seconds, r.root = sim.now - r.at, sim.roots()[0]
        else:
            sim.at(sim.now + poll, check)

    sim.at(sim.now + poll, check)
    return r


def churn(sim: TreeSim, seconds: float, rng: random.Random, mean_gap: float = 2.0,
          mix: tuple[float, float, float] = (0.4, 0.3, 0.3),
          root_kills: tuple[float, ...] = ()) -> tuple[Counter[str], list[Reroot]]:
    """Random kills, leaves and joins (``mix``), one every ``mean_gap`` seconds on
    average, for ``seconds``; the root is killed at the offsets in ``root_kills``.
    Kills and leaves pick any node but the root. Returns the events done and the
    timed re-roots."""
    end = sim.now + seconds
    kills = sorted(sim.now + t for t in root_kills)
    events: Counter[str] = Counter()
    reroots: list[Reroot] = []
    t = sim.now
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        while kills and kills[0] <= min(t, end):
            sim.run_until(kills.pop(0))
            reroots.append(kill_root(sim))
            events["root kill"] += 1
        if t >= end:
            break
        sim.run_until(t)
        r = rng.random()
        if r < mix[0] + mix[1]:
            victims = sorted(i for i in sim.alive if sim.cores[i].state != "root")
            victim = rng.choice(victims)
            if r < mix[0]:
                sim.kill(victim)
                events["kill"] += 1
            else:
                sim.leave(victim)
                events["leave"] += 1
        else:
            sim.join()
            events["join"] += 1
    sim.run_until(end)
    return events, reroots
