"""The world of the ledger simulator (``mesh.sim.ledger_sim``): its data and its programs.

Theory of operation
-------------------
Plain data and the client programs (virtual time is ``mesh.sim.clock.Clock``):

* ``Worker``: one worker process of an agent: its FIFO of calls as the agent sees it,
  and how far the process itself got (see ``mesh.sim.ledger_workers``).
* ``Node``: one agent: its real ``Dispatcher``, whether it is alive, frozen or
  partitioned away, its inbox while frozen, its workers and the calls they hold.
* ``Report``: what one seeded run found: figures, and ``violations`` of the checks.

Programs: a few origins each run a client with a share of the task graph (roots,
chains, fan-in, a final reduction; with the simulator's ``labels``, about half of the
tasks need one of them, ``Call.needs``); a task is submitted when its dependencies'
results have arrived, with a call id unique per (task, submission); a failure result
is resubmitted (up to ``MAX_SUBMISSIONS``). As ``mesh.client`` does, a program keeps a
lease on each call in flight (``mesh.sched.leases.ClientLeases``): every ``CLIENT_TICK``
it asks its agent about those without news for a period (``Holds``) and sends again,
with the same id, those the agent does not hold; one given up on (the agent never took
it) fails here, and a result that comes for it later is counted, not taken. A program
takes randomness (``sim.rng``), the clock (``sim.now``) and the way to its agent
(``sim.client_send``) from its ``LedgerSim``, and reports what it sees wrong with
``sim.violation``.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.sched.dispatch import Dispatcher
from mesh.sched.leases import ClientLeases
from mesh.wire.messages import Call, Held, Holds, Needs, Result

if TYPE_CHECKING:
    from mesh.sim.ledger_sim import LedgerSim

MAX_SUBMISSIONS = 4
CLIENT_TICK = 0.25  # how often a program's client looks at its leases (its thread's wake-ups)


@dataclass(eq=False)
class Worker:
    """One worker process of an agent (``mesh.agent.pool.Worker``): its FIFO as the agent
    sees it, and how far the process itself got (ahead of the agent while it is frozen)."""

    queue: deque = field(default_factory=deque)  # calls given to it: queue[0] runs, then waiting
    started: float = 0.0  # when queue[0] started, as the agent saw it (its previous result read)
    withdrawn: bool = False  # asked to give back its waiting calls (its call runs long)
    done: int = 0  # calls at the head of ``queue`` that ended, their results not read yet
    token: int = -1  # the process's current run (its end event carries it)
    alive: bool = True  # False once killed (KillLocal of its call, or its agent died)
    check: float | None = None  # ``started`` of the pending long-call check, if any


@dataclass
class Node:
    i: int
    name: str
    id: str
    d: Dispatcher
    alive: bool = True
    frozen: bool = False
    side: int = 0  # partitions: nodes see each other only on the same side
    refuting: bool = False
    inbox: list = field(default_factory=list)
    # calls at its workers, running or waiting, that it still wants: call id -> (worker, origin)
    runs: dict[str, tuple[Worker, str]] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)  # withdrawn after they started: results dropped
    program: Program | None = None


@dataclass
class Report:
    seed: int
    agents: int
    tasks: int
    faults: list[str]
    calls: int = 0  # submitted by programs whose origin is alive at the end
    failures: dict[str, int] = field(default_factory=dict)
    gave_up: int = 0
    executions: int = 0
    extra_executions: int = 0
    dead_origin_runs: int = 0  # started where the (killed) origin was already declared dead
    dead_origin_kept: int = 0  # still running right after the holder declared the origin dead
    waited: int = 0  # runs a worker started after waiting behind another call (depth > 1)
    given_back: int = 0  # calls given back unstarted when the call ahead of them was killed
    withdrawn: int = 0  # calls given back unstarted because the call ahead of them ran long
    withdrawals: int = 0  # times a worker gave back its waiting calls for a long call
    lost_frames: int = 0  # frames dropped, refused or lost in a reset on live links
    late: int = 0  # results for calls a program had given up on (its agent never took them)
    longest_stall: float = 0.0  # with check_bound: the longest a call did not move, s
    leaks: dict[str, int] = field(default_factory=dict)
    end_time: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    trace: list[tuple] | None = None
    wall: float = field(default=0.0, compare=False)

    def summary(self) -> str:
        return (f"seed {self.seed}: {len(self.faults)} faults, {self.calls} calls, "
                f"{self.executions} runs (+{self.extra_executions}), failures "
                f"{dict(self.failures)}, leaks {dict(self.leaks)}, end {self.end_time:.1f}s, "
                f"{len(self.violations)} violation(s)")


class Program:
    """A client on ``node`` running ``deps`` (task -> its dependencies) with futures."""

    def __init__(self, sim: LedgerSim, node: Node, deps: list[list[int]]) -> None:
        self.sim, self.node, self.deps = sim, node, deps
        self.identity = b"client-" + node.name.encode()
        self.durations = [sim.rng.uniform(*sim.durations) for _ in deps]
        names = sim.label_names  # (with labels, about half of the tasks need one)
        self.needs = [Needs(labels=[sim.rng.choice(names)]) if names and sim.rng.random() < 0.5
                      else None for _ in deps]
        self.children: list[list[int]] = [[] for _ in deps]
        for t, ds in enumerate(deps):
            for p in ds:
                self.children[p].append(t)
        self.waiting = [len(ds) for ds in deps]
        self.subs = [0] * len(deps)
        self.calls: dict[str, int] = {}
        self.results: Counter[str] = Counter()
        self.done = 0
        self.gave_up = 0
        self.finished_at: float | None = None if deps else 0.0
        self.leases = ClientLeases()
        self.given_up: set[str] = set()  # calls the agent never took (failed here)
        self.late = 0  # results that came for them anyway
        self.submitted: dict[str, float] = {}  # call id -> when it was submitted

    def start(self) -> None:
        self.sim.at(self.sim.now + CLIENT_TICK, self.tick)
        for t, n in enumerate(self.waiting):
            if n == 0:
                self.submit(t)

    def submit(self, t: int) -> None:
        cid = f"{self.node.name}.t{t}.s{self.subs[t]}"
        self.subs[t] += 1
        self.calls[cid] = t
        self.submitted[cid] = self.sim.now
        call = Call(cid, "sim:task", repr(self.durations[t]).encode(), needs=self.needs[t])
        self.leases.sent(cid, call)
        self.sim.client_send(self.node, call)

    def tick(self) -> None:
        """The client's thread wakes: lease questions to the agent, if a round began."""
        if not self.node.alive:
            return
        self.sim.at(self.sim.now + CLIENT_TICK, self.tick)
        for ids in self.leases.tick(self.sim.now):
            self.sim.client_send(self.node, Holds(ids))

    def receive(self, msg: Result | Held) -> None:
        if not self.node.alive:
            return
        if isinstance(msg, Held):
            again, failed = self.leases.answered(msg.held, msg.unknown)
            for call in again:
                self.sim.client_send(self.node, call)
            for cid in failed:
                self.given_up.add(cid)
                self._outcome(Result(cid, False, b"", "", "AgentUnreachable", "never taken"))
            return
        if msg.call_id in self.given_up:
            self.late += 1
            return
        self.leases.ended(msg.call_id)
        self._outcome(msg)

    def _outcome(self, result: Result) -> None:
        cid, sim = result.call_id, self.sim
        self.results[cid] += 1
        if cid not in self.calls:
            sim.violation(f"{self.node.name} got a result for a call it never made: {cid}")
            return
        if self.results[cid] > 1:
            sim.violation(f"{self.node.name} got {self.results[cid]} results for {cid}")
            return
        t = self.calls[cid]
        if not result.ok:
            sim.failures[result.error_type] += 1
            if self.subs[t] < MAX_SUBMISSIONS:
                self.submit(t)
                return
            self.gave_up += 1
        self.done += 1
        for c in self.children[t]:
            self.waiting[c] -= 1
            if self.waiting[c] == 0:
                self.submit(c)
        if self.done == len(self.deps):
            self.finished_at = sim.now


def make_graph(rng: random.Random, n: int) -> list[list[int]]:
    """Roots (fan-out), chains, fan-ins, and a final reduction over every sink."""
    deps: list[list[int]] = []
    sinks: set[int] = set()
    for t in range(n):
        r = rng.random()
        if t and t == n - 1:
            ds = sorted(sinks)
        elif t == 0 or r < 0.35:
            ds = []
        elif r < 0.75:
            ds = [rng.randrange(max(0, t - 10), t)]
        else:
            ds = rng.sample(range(t), min(t, rng.randint(2, 4)))
        deps.append(ds)
        sinks.difference_update(ds)
        sinks.add(t)
    return deps
