"""The membership view of the ledger simulator (``mesh.sim.ledger_sim``), modelled.

Theory of operation
-------------------
Membership is modelled (SWIM itself is tested in ``test_sim_membership``): every
``HEARTBEAT`` a live agent's load (its real free slots, backlog and speed) reaches each live
observer that sees it and holds it alive (``peer_load``). When a node stops being
visible to an observer (killed, frozen, partitioned away), the observer gets
``peer_suspect`` after ``SUSPECT`` and ``peer_lost`` after ``DETECT`` (drawn per
observer), unless it became visible again meanwhile. When it is visible again,
observers that held it dead get ``peer_alive`` (then loads) after ``REVIVE``, and the
node itself gets ``declared_dead`` once after ``REFUTE`` if anyone had declared it
dead (the SWIM refutation; gossip carries the verdict). A node cut off from everyone
declares everyone dead.

State, kept here and indexed ``o * n + p`` (observer ``o``, peer ``p``, ``n``
agents): ``visible`` (``o`` sees ``p``), ``gen`` (bumped at every change of
``visible``: a pending suspicion, detection or revival of an older generation is
void), ``dead_view`` (``o`` holds ``p`` dead), and ``declared_by[p]`` (who declared
``p`` dead, for its refutation). A frozen observer acts when it wakes: its pending
suspicion, detection or revival is tried again every 0.2 s.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from mesh.sim.clock import Clock
from mesh.sim.ledger_model import Node

HEARTBEAT = 0.4
SUSPECT, DETECT = (0.4, 0.9), (1.0, 3.0)  # after a node stops being visible
REVIVE, REFUTE = (0.05, 1.0), (0.02, 0.3)  # after it is visible again


class MembershipModel:
    """What each agent's membership tells its dispatcher. A part of ``LedgerSim``, given
    the clock, the agents, the run's random stream, the round trips (``rtt``, indexed as
    the state) and what it calls back: ``do`` (carry out a dispatcher's actions) and
    ``record`` (trace). ``LedgerSim`` calls ``topology`` after every kill, freeze, wake,
    partition and heal, and starts each agent's ``heartbeat``."""

    def __init__(self, clock: Clock, nodes: list[Node], rng: random.Random, rtt: list[float], *,
                 do: Callable[[Node, list], None], record: Callable[[Node, str, str], None]) -> None:
        n = len(nodes)
        self.clock = clock
        self.nodes = nodes
        self.rng = rng
        self.rtt = rtt
        self._do, self._record = do, record
        self.visible = [True] * (n * n)
        self.gen = [0] * (n * n)
        self.dead_view: set[int] = set()  # o * n + p: o holds p dead
        self.declared_by: list[set[int]] = [set() for _ in range(n)]
        self.dead_origin_kept = 0  # calls still running right after their origin was declared dead

    def holds_dead(self, o: Node, p: Node) -> bool:
        """``o`` declared ``p`` dead (and has not seen it alive since)."""
        return o.i * len(self.nodes) + p.i in self.dead_view

    def topology(self) -> None:
        n, rng = len(self.nodes), self.rng
        for o in self.nodes:
            if not o.alive:
                continue
            for p in self.nodes:
                if p is o:
                    continue
                k = o.i * n + p.i
                v = p.alive and not p.frozen and o.side == p.side
                if v == self.visible[k]:
                    continue
                self.visible[k] = v
                self.gen[k] += 1
                if not v:
                    self.clock.at(self.clock.now + rng.uniform(*SUSPECT), self._suspect, o, p, self.gen[k])
                    self.clock.at(self.clock.now + rng.uniform(*DETECT), self._detect, o, p, self.gen[k])
                elif k in self.dead_view:
                    self.clock.at(self.clock.now + rng.uniform(*REVIVE), self._revive, o, p, self.gen[k])
        for p in self.nodes:
            if p.alive and not p.frozen and self.declared_by[p.i] and not p.refuting \
                    and self._seen(p):
                p.refuting = True
                self.clock.at(self.clock.now + rng.uniform(*REFUTE), self._refute, p)

    def _seen(self, p: Node) -> bool:
        n = len(self.nodes)
        return any(o.alive and o is not p and self.visible[o.i * n + p.i] for o in self.nodes)

    def _suspect(self, o: Node, p: Node, g: int) -> None:
        k = o.i * len(self.nodes) + p.i
        if self.gen[k] != g or not o.alive or k in self.dead_view:
            return
        if o.frozen:  # it suspects when it wakes and its probes go unanswered
            self.clock.at(self.clock.now + 0.2, self._suspect, o, p, g)
            return
        self._do(o, o.d.peer_suspect(p.id))

    def _detect(self, o: Node, p: Node, g: int) -> None:
        k = o.i * len(self.nodes) + p.i
        if self.gen[k] != g or not o.alive or k in self.dead_view:
            return
        if o.frozen:
            self.clock.at(self.clock.now + 0.2, self._detect, o, p, g)
            return
        self.dead_view.add(k)
        self.declared_by[p.i].add(o.i)
        self._do(o, o.d.peer_lost(p.id))
        if not p.alive:
            self.dead_origin_kept += sum(1 for _, origin in o.runs.values() if origin == p.id)

    def _revive(self, o: Node, p: Node, g: int) -> None:
        k = o.i * len(self.nodes) + p.i
        if self.gen[k] != g or not o.alive:
            return
        if o.frozen:
            self.clock.at(self.clock.now + 0.2, self._revive, o, p, g)
            return
        self.dead_view.discard(k)
        self._do(o, o.d.peer_alive(p.id))

    def _refute(self, p: Node) -> None:
        p.refuting = False
        if p.alive and not p.frozen and self.declared_by[p.i] and self._seen(p):
            self.declared_by[p.i].clear()
            self._record(p, "declared_dead", "")
            self._do(p, p.d.declared_dead())

    def heartbeat(self, p: Node, reschedule: bool = True) -> None:
        if not p.alive:
            return
        if reschedule:
            self.clock.at(self.clock.now + HEARTBEAT, self.heartbeat, p)
        if p.frozen:
            return
        n, local, queued = len(self.nodes), p.d.local, p.d.queued
        free = local.free
        for o in self.nodes:
            k = o.i * n + p.i
            if o is not p and o.alive and not o.frozen and self.visible[k] \
                    and k not in self.dead_view:
                self._do(o, o.d.peer_load(p.id, p.name, local.cpus, free, self.rtt[k], queued,
                                          local.speed, local.memory, local.labels))
