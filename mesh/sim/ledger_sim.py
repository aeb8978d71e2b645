"""A virtual clock and fake network that drive real ``Dispatcher`` ledgers (issue 6).

Theory of operation
-------------------
No socket, thread or real clock: events wait on a virtual ``Clock`` (``mesh.sim.clock``,
the simulators' one) and all randomness comes from one seeded ``random.Random``, so one
seed gives one run, action for action (``python -m mesh.sim.ledger_sim --seed N``
replays it).

Modules, one concept each (every name they define is importable from here too):
``ledger_model`` (``Worker``, ``Node``, ``Report``, ``Program``, ``make_graph``),
``ledger_workers`` (``WorkerPoolModel``: the agents' worker processes),
``ledger_membership`` (``MembershipModel``: the modelled membership view), and this
one: ``LedgerSim``, which holds a clock, the agents, the programs and the two models as
its parts, and does the links, carrying out actions, faults and the checks; ``run_seed``
and the command line.

Agents: each holds a real ``mesh.sched.dispatch.Dispatcher``; its actions are carried
out as ``Agent._do`` does (``mesh/agent/agent.py``):

* ``RunLocal``: one of the agent's ``cpus`` virtual worker processes runs the call for
  its duration (in the payload), then the agent gets ``local_done``. ``KillLocal`` kills
  the worker running the call. Both as ``mesh.agent.pool.WorkerPool`` does (see
  ``ledger_workers``).
* ``Forward(peer, call)``: the peer gets ``submit(call, <our id bytes>, from_peer=us)``.
* ``Deliver(identity, result)``: our client's identity: the program gets it; a peer's
  identity (16 bytes): the peer gets ``remote_result(result, us)`` (a ROUTER reply).
* ``SendTo(peer, msg)``: Result -> ``remote_result``, Cancel -> ``cancel(id, <our id
  bytes>)``, Handback -> ``handed_back``, Reclaim -> ``reclaim`` (work stealing).

Dispatchers run as agents do: ``prefetch`` 1 (a busy peer may queue one call per slot
from us), so work stealing is on (``--no-steal`` turns it off, ``--prefetch 0`` both).
With ``--hetero`` slots have random speeds (1, 0.5 or 0.25 of a core, reported with
the load; a call runs for its duration divided by the speed). With ``--labels N``
agents offer random subsets of N labels (each offered by at least one agent with
slots; reported with the load) and about half of the tasks need one of them
(``Call.needs``).

Links: per direction and per connection (our DEALER -> their ROUTER for Forward and
SendTo; our ROUTER reply -> their DEALER for Deliver) FIFO as TCP, delay ``DELAY``.
A message is lost if its sender or receiver is dead at arrival, or a partition
separates them. A frozen agent (SIGSTOP) processes nothing and so emits nothing; what
reaches it (messages, its workers' completions) waits in its inbox (kernel buffers)
and is processed in order when it wakes. Its workers keep running.

Membership is modelled, not run (see ``ledger_membership``; SWIM itself is tested in
``test_sim_membership``): observers get ``peer_load``, ``peer_suspect``, ``peer_lost``
and ``peer_alive`` as what they can see changes, and a node declared dead gets
``declared_dead`` once it is seen again.

Programs: a few origins each run a client with a share of the task graph (see
``ledger_model``). Faults per seed: kills, freezes (0.5-6 s) and partitions (healed
after 1-8 s), aimed at random agents, origins, or the agent holding the most calls.

Checks (``Report.violations``): a live origin gets exactly one result for each call
it submitted, never two; no agent runs, or asks back (work stealing), a call whose
constraints it does not meet; every live program finishes within ``TIME_LIMIT``; after
quiescing no live agent holds entries (leaks, by kind) and its busy slots match its
calls held by its workers. Figures: extra executions (runs beyond one per call; a run
is counted when a worker starts the call), runs of a killed origin's calls started
where its death was already detected, failures; with ``depth`` > 1, runs that waited
behind another call and calls given back unstarted (their call ahead killed, or long).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from mesh.sched.dispatch import Deliver, Dispatcher, Forward, KillLocal, RunLocal, SendTo
from mesh.sched.leases import CLIENT_PERIOD, PERIODS
from mesh.sim.clock import Clock
from mesh.sim.ledger_links import REFUSED, Links
from mesh.sim.ledger_membership import DETECT, HEARTBEAT, REFUTE, REVIVE, SUSPECT, MembershipModel
from mesh.sim.ledger_model import MAX_SUBMISSIONS, Node, Program, Report, Worker, make_graph
from mesh.sim.ledger_workers import SLOW_CHECK, WorkerPoolModel
from mesh.wire.messages import Call, Cancel, Handback, Held, Holds, Reclaim, Result

__all__ = [
    "DELAY", "DETECT", "DURATION", "HEARTBEAT", "LOCAL", "MAX_SUBMISSIONS", "QUIESCE",
    "REFUTE", "REVIVE", "SLOW_CHECK", "SUSPECT", "TIME_LIMIT", "Clock", "LedgerSim",
    "MembershipModel",
    "Node", "Program", "Report", "Worker", "WorkerPoolModel", "main", "make_graph",
    "random_faults", "run_seed",
]

DELAY = (0.0005, 0.005)  # one-way link delay, s
LOCAL = 0.0002  # client <-> its agent
DURATION = (0.005, 0.2)
TIME_LIMIT = 120.0  # virtual seconds for every live program to finish
QUIESCE = 6.0  # run on after the last program and fault, then look for leaks
LEASE = PERIODS * HEARTBEAT  # the agents' lease period (``mesh.sched.leases``), as agents run
AGENT_TICK = 0.1  # how often an agent's loop ticks its dispatcher (leases)
SAMPLE = 0.05  # with ``check_bound``: how often every call's path is looked at
SLACK = 0.4  # the bound's allowance for ticks, samples and round trips


class LedgerSim:
    """Agents with real dispatchers, a fake network, programs; its parts: the ``clock``,
    modelled membership (``membership``: ``MembershipModel``) and worker processes
    (``workers``: ``WorkerPoolModel``)."""

    def __init__(self, seed: int, *, agents: int = 50, tasks: int = 500,
                 cpus: list[int] | None = None, origins: list[int] | None = None,
                 durations: tuple[float, float] = DURATION, record: bool = False,
                 hold: bool = False, prefetch: int = 1, steal: bool | None = None,
                 hetero: bool = False, tree: bool = False, depth: int = 1,
                 long_call: float | None = None, labels: int = 0, drop: float = 0.0,
                 refuse: float = 0.0, reset: float = 0.0, check_bound: bool = False) -> None:
        self.rng = rng = random.Random(seed)
        self.seed, self.durations, self.hold = seed, durations, hold
        self.clock = Clock()
        self.held: list[tuple] = []  # with ``hold``: messages waiting for a partition to heal
        self.links = Links(self.clock, seed, drop=drop, refuse=refuse)
        self.reset = reset  # probability that a frame to a member finds its connection reset
        self.stalls: dict[str, float] = {}  # with ``check_bound``: call -> since when nothing moves it
        self.longest_stall = 0.0
        self.violations: list[str] = []
        self.failures: Counter[str] = Counter()
        self.trace: list[tuple] | None = [] if record else None
        self.faults: list[str] = []
        self.fault_end = 0.0
        if cpus is None:
            cpus = [0 if rng.random() < 0.15 else rng.randint(1, 4) for _ in range(agents)]
        n = len(cpus)
        speeds = [rng.choice((1.0, 0.5, 0.25)) if hetero else 1.0 for _ in cpus]
        self.label_names = [f"l{k}" for k in range(labels)]
        offers = self._offers(rng, cpus) if labels else [frozenset()] * n
        ids = [f"{rng.getrandbits(128):032x}" for _ in cpus]
        self.nodes = [Node(i, f"a{i:02d}", ids[i],
                           Dispatcher(f"a{i:02d}", c, ids[i], prefetch=prefetch, steal=steal,
                                      speed=speeds[i], depth=max(depth, 1), labels=offers[i],
                                      lease=LEASE),
                           workers=[Worker() for _ in range(c)])
                      for i, c in enumerate(cpus)]
        self.by_id = {node.id: node for node in self.nodes}
        self.rtt = [rng.uniform(0.001, 0.01) for _ in range(n * n)]
        self.parent: list[int | None] = [None] * n
        if tree:  # delegation along a latency tree: each agent's parent is its nearest elder
            for i in range(1, n):
                self.parent[i] = min(range(i), key=lambda j: self.rtt[i * n + j])
            hood: list[list[int]] = [[p] if p is not None else [] for p in self.parent]
            for i, p in enumerate(self.parent):
                if p is not None:
                    hood[p].append(i)
            for node in self.nodes:
                node.d.neighbours = frozenset(self.nodes[j].id for j in hood[node.i])
        self.membership = MembershipModel(self.clock, self.nodes, rng, self.rtt, do=self._do,
                                          record=self._record)
        self.workers = WorkerPoolModel(self.clock, self.by_id, depth=max(depth, 1),
                                       long_call=long_call, handle=self._handle, do=self._do,
                                       record=self._record, violation=self.violation,
                                       holds_dead=self.membership.holds_dead)
        if origins is None:
            origins = sorted(rng.sample(range(n), min(n, rng.randint(3, 5))))
        share = [tasks // len(origins) + (k < tasks % len(origins)) for k in range(len(origins))]
        self.programs = [Program(self, self.nodes[o], make_graph(rng, s))
                         for o, s in zip(origins, share, strict=True)]
        for prog in self.programs:
            prog.node.program = prog
        for node in self.nodes:  # every agent knows every other (a converged mesh)
            self.membership.heartbeat(node, reschedule=False)
            self.at(rng.uniform(0, HEARTBEAT), self.membership.heartbeat, node)
        for prog in self.programs:
            self.at(0.001, prog.start)
        for node in self.nodes:
            self.at(AGENT_TICK, self._tick, node)
        if check_bound:
            self.at(SAMPLE, self._sample)

    def _offers(self, rng: random.Random, cpus: list[int]) -> list[frozenset]:
        """With ``labels``: each agent offers a random subset of the labels (most none);
        every label is offered by at least one agent with slots, so every call can run."""
        offers = [frozenset(lb for lb in self.label_names if rng.random() < 0.3) for _ in cpus]
        able = [i for i, c in enumerate(cpus) if c > 0] or [0]
        for lb in self.label_names:
            if not any(lb in offers[i] for i in able):
                i = rng.choice(able)
                offers[i] = offers[i] | {lb}
        return offers

    # ------------------------------------------------------------------ clock

    @property
    def now(self) -> float:
        return self.clock.now

    def at(self, when: float, fn, *args) -> None:
        self.clock.at(when, fn, *args)

    def run_until(self, until: float, stop=None) -> bool:
        return self.clock.run_until(until, stop)

    def finished(self) -> bool:
        return all(p.finished_at is not None for p in self.programs if p.node.alive)

    def violation(self, text: str) -> None:
        self.violations.append(f"t={self.now:.3f} {text}")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # ------------------------------------------------------------------ faults

    def kill(self, node: Node) -> None:
        self.faults.append(f"t={self.now:.2f} kill {node.name}")
        node.alive, node.frozen = False, False
        node.runs.clear()
        node.inbox.clear()
        for w in node.workers:  # its workers die with it (PR_SET_PDEATHSIG)
            w.alive = False
        node.workers.clear()
        node.cancelled.clear()
        self.membership.topology()

    def freeze(self, node: Node, seconds: float) -> None:
        self.faults.append(f"t={self.now:.2f} freeze {node.name} {seconds:.1f}s")
        node.frozen = True
        self.fault_end = max(self.fault_end, self.now + seconds)
        self.at(self.now + seconds, self._wake, node)
        self.membership.topology()

    def partition(self, nodes: list[Node], seconds: float) -> None:
        names = ",".join(n.name for n in nodes)
        self.faults.append(f"t={self.now:.2f} partition [{names}] {seconds:.1f}s")
        for n in nodes:
            n.side = 1
        self.fault_end = max(self.fault_end, self.now + seconds)
        self.at(self.now + seconds, self._heal)
        self.membership.topology()

    def _wake(self, node: Node) -> None:
        if not node.alive:
            return
        node.frozen = False
        inbox, node.inbox = node.inbox, []
        for fn, args in inbox:
            if node.alive and not node.frozen:
                fn(*args)
        self.membership.topology()

    def _heal(self) -> None:
        for n in self.nodes:
            n.side = 0
        held, self.held = self.held, []
        for args in held:
            self._arrive(*args)
        self.membership.topology()

    def holder(self) -> Node:
        """The live agent holding the most calls."""
        return max((n for n in self.nodes if n.alive), key=lambda n: (len(n.d.pending), -n.i))

    # ------------------------------------------------------------------ network

    def _handle(self, node: Node, fn, *args) -> None:
        if node.frozen:
            node.inbox.append((fn, args))
        else:
            fn(*args)

    def _tick(self, node: Node) -> None:
        """The agent's loop ticks its dispatcher (leases), unless it is frozen or dead."""
        if not node.alive:
            return
        self.at(self.now + AGENT_TICK, self._tick, node)
        if not node.frozen:
            self._do(node, node.d.tick(self.now))

    def client_send(self, node: Node, msg) -> None:
        """A program's frame to its agent (a Call, a lease question, a Cancel)."""
        track = ("call", msg.call_id, node.id) if isinstance(msg, Call) else None
        asks = tuple(msg.call_ids) if isinstance(msg, Holds) else ()
        self.links.send(("prog", node.i, "up"), ("prog", node.i), LOCAL, self._client_in,
                        (node, msg), may_refuse=False, track=track, asks=asks)

    def _client_in(self, node: Node, msg) -> None:
        if node.alive:
            self._handle(node, self._from_client, node, msg)

    def _from_client(self, node: Node, msg) -> None:
        d, identity = node.d, node.program.identity
        d.heard(identity)
        if isinstance(msg, Call):
            self._do(node, d.submit(msg, identity))
        elif isinstance(msg, Holds):
            self._to_program(node, d.holding(msg.call_ids, identity))
        else:
            self._do(node, d.cancel(msg.call_id, identity, msg.owner))

    def _to_program(self, node: Node, msg) -> None:
        """An agent's frame to its program (a result, a lease answer); one refused is lost."""
        prog = node.program
        track = ("result", msg.call_id, prog.identity) if isinstance(msg, Result) else None
        asks = tuple(msg.held + msg.unknown) if isinstance(msg, Held) else ()
        self.links.send(("prog", node.i, "down"), ("prog", node.i), LOCAL, prog.receive, (msg,),
                        track=track, asks=asks)

    def _send(self, src: Node, dst: Node, conn: str, kind: str, msg) -> str:
        """A frame from ``src`` to ``dst`` over ``src``'s DEALER (``conn`` "dealer") or its
        ROUTER's reply to ``dst``'s DEALER ("router"): ``Links.send``'s verdict."""
        delay = self.rng.uniform(*DELAY)
        pair = (src.i, dst.i) if conn == "dealer" else (dst.i, src.i)  # (the DEALER's end first)
        if self.reset and self.links.rng.random() < self.reset:
            self.links.reset(pair)  # (this frame goes on the new connection)
        track = asks = None
        if kind in ("call", "result", "handback"):
            track = (kind, msg.call_id, dst.id)
        elif kind == "holds":
            asks = tuple(msg.call_ids)
        elif kind == "held":
            asks = tuple(msg.held + msg.unknown)
        return self.links.send((src.i, dst.i, conn), pair, delay, self._arrive,
                               (src, dst, kind, msg), track=track, asks=asks or ())

    def _arrive(self, src: Node, dst: Node, kind: str, msg) -> None:
        if not (src.alive and dst.alive):
            return
        if src.side == dst.side:
            self._handle(dst, self._receive, src, dst, kind, msg)
        elif self.hold:  # TCP retransmits over the connection until the partition heals
            self.held.append((src, dst, kind, msg))

    def _receive(self, src: Node, dst: Node, kind: str, msg) -> None:
        d, ident = dst.d, bytes.fromhex(src.id)
        if kind == "call":
            acts = d.submit(msg, ident, src.id)
        elif kind == "result":
            acts = d.remote_result(msg, src.id)
        elif kind == "cancel":
            acts = d.cancel(msg.call_id, ident, msg.owner)
        elif kind == "reclaim":
            acts = d.reclaim(msg.call_ids, src.id, msg.free, msg.queued)
        elif kind == "holds":  # answered at once, over the same connection
            self._send(dst, src, "router", "held", d.holding(msg.call_ids, ident))
            return
        elif kind == "held":
            acts = d.held(msg.held, msg.unknown, src.id)
        else:
            acts = d.handed_back(msg.call_id, src.id)
        self._do(dst, acts)

    def _record(self, node: Node, what: str, detail: str) -> None:
        if self.trace is not None:
            self.trace.append((round(self.now, 9), node.name, what, detail))

    def _do(self, node: Node, actions: list) -> None:
        """Carry out ``node``'s dispatcher actions, as ``Agent._do`` does."""
        for act in actions:
            if isinstance(act, RunLocal):
                self._record(node, "run" + " behind" * act.behind, act.call.call_id)
                if act.call.needs is not None and not node.d.local.fits(act.call.needs):
                    self.violation(f"{node.name} runs {act.call.call_id}, whose constraints "
                                   f"it does not meet")
                self.workers.run(node, act.call, act.behind)
            elif isinstance(act, Forward):
                self._record(node, "forward", f"{act.call.call_id} {self.by_id[act.peer_id].name}")
                if self._send(node, self.by_id[act.peer_id], "dealer", "call", act.call) is REFUSED:
                    self._record(node, "refused", act.call.call_id)  # (as Agent._flush does)
                    self._do(node, node.d.forward_failed(act.call.call_id, act.peer_id))
            elif isinstance(act, Deliver):
                self._record(node, "deliver", act.result.call_id)
                prog = node.program
                if prog is not None and act.identity == prog.identity:
                    self._to_program(node, act.result)
                elif len(act.identity) == 16 and act.identity.hex() in self.by_id:
                    peer = self.by_id[act.identity.hex()]
                    if self._send(node, peer, "router", "result", act.result) is REFUSED:
                        # (our ROUTER could not route it: over our own connection, as
                        # Agent._flush does)
                        self._send(node, peer, "dealer", "result", act.result)
                else:
                    self.violation(f"{node.name} delivers to unknown identity {act.identity!r}")
            elif isinstance(act, SendTo):
                msg = act.message
                kind = ("result" if isinstance(msg, Result) else "cancel"
                        if isinstance(msg, Cancel) else "handback" if isinstance(msg, Handback)
                        else "reclaim" if isinstance(msg, Reclaim) else "holds"
                        if isinstance(msg, Holds) else None)
                if kind is None:
                    raise TypeError(f"unexpected message {msg!r}")
                self._record(node, kind, f"{getattr(msg, 'call_id', '')} "
                             f"{self.by_id[act.peer_id].name}")
                if kind == "reclaim":
                    self._check_reclaim(node, msg)
                self._send(node, self.by_id[act.peer_id], "dealer", kind, msg)
            elif isinstance(act, KillLocal):
                self._record(node, "kill", act.call_id)
                self.workers.kill_local(node, act.call_id)
            else:
                raise TypeError(f"unknown action {act!r}")

    def _sample(self) -> None:
        """(``check_bound``) Every call in flight at a live program: does anything move it?
        A call moves while some agent holds it, waiting or running, for a path of
        requesters that leads back to its program, or while its call or result frame is on
        its way along that path. A call that does not move is stalled: a frame of it was
        lost. When it moves again (its loss was found out: it was placed or sent again),
        the stall is checked against the bound (``_stalled``)."""
        self.at(self.now + SAMPLE, self._sample)
        now = self.now
        for prog in self.programs:
            if not prog.node.alive:
                continue
            for cid in list(prog.leases.frames):
                if self._moving(prog, cid):
                    since = self.stalls.pop(cid, None)
                    if since is not None:
                        self._stalled(cid, since, now)
                elif cid not in self.stalls:
                    self.stalls[cid] = now
        for cid in [c for c in self.stalls if not any(c in p.leases.frames for p in self.programs)]:
            self._stalled(cid, self.stalls.pop(cid), now)  # (it ended meanwhile)

    def _moving(self, prog: Program, cid: str) -> bool:
        node, links = prog.node, self.links
        if links.in_flight("call", cid, node.id) or links.in_flight("result", cid, prog.identity):
            return True
        return self._moving_at(cid, node, prog.identity, None, 0)

    def _moving_at(self, cid: str, node: Node, identity: bytes, asker: str | None, hops: int) -> bool:
        entry = node.d.pending.get(cid)
        if entry is None or hops > 8 or not any(
                r.identity == identity or (asker is not None and r.peer == asker)
                for r in entry.requesters):
            return False  # (held for nobody on the path: its outcome would not come back)
        if entry.where in ("local", "backlog"):
            return True
        holder = self.by_id.get(entry.where)
        if holder is None:
            return False
        if self.links.in_flight("call", cid, holder.id) or self.links.in_flight("result", cid, node.id):
            return True
        return self._moving_at(cid, holder, bytes.fromhex(node.id), node.id, hops + 1)

    @staticmethod
    def bound(losses: int, rounds: int) -> float:
        """How long a call may stall: each loss of a frame carrying it (the call, its
        result, a Handback; at least one: a client whose agent gave up on its silence
        lost nothing) is found out within two lease periods (the round it was handed on
        in, and the round it became due), plus one for each lease question or answer
        naming it that was lost meanwhile, plus ``SLACK`` (ticks, samples, round trips).
        (Two stalls closer than a sample count as one.)"""
        return (2 * max(losses, 1) + rounds) * max(LEASE, CLIENT_PERIOD) + SLACK

    def _stalled(self, cid: str, since: float, now: float) -> None:
        span = now - since
        self.longest_stall = max(self.longest_stall, span)
        losses, rounds = self.links.lost_between(cid, since - SAMPLE - DELAY[1], now)
        if span > self.bound(losses, rounds):
            self.violation(f"{cid} did not move for {span:.2f} s (bound {self.bound(losses, rounds):.2f}"
                           f" s: {losses} frame(s) of it and {rounds} lease question(s) or "
                           f"answer(s) naming it lost)")

    def _check_reclaim(self, node: Node, msg: Reclaim) -> None:
        """Work stealing takes back only calls the stealer can run: one whose constraints
        it does not meet would only be forwarded again."""
        for cid in msg.call_ids:
            entry = node.d.pending.get(cid)
            if entry is not None and entry.call.needs is not None \
                    and not node.d.local.fits(entry.call.needs):
                self.violation(f"{node.name} asks back {cid}, whose constraints it does not "
                               f"meet (labels {sorted(node.d.local.labels)}, the call needs "
                               f"{entry.call.needs.labels})")

    # ------------------------------------------------------------------ end

    def finish(self, limit: float = TIME_LIMIT) -> Report:
        """Run until every live program is done (or ``limit``), quiesce, and check."""
        done = self.run_until(limit, lambda: self.finished() and self.now >= self.fault_end)
        for cid, since in list(self.stalls.items()):  # (still stalled at the end)
            if not any(cid in p.leases.frames for p in self.programs if p.node.alive):
                continue  # (it moved and ended since the last sample)
            del self.stalls[cid]
            self._stalled(cid, since, self.now)
        end = max((p.finished_at or 0.0) for p in self.programs if p.node.alive) \
            if any(p.node.alive for p in self.programs) else self.now
        if not done:
            for p in self.programs:
                if p.node.alive and p.finished_at is None:
                    self.violation(f"program on {p.node.name} unfinished: {p.done}/{len(p.deps)}"
                                   f" tasks done by the time limit")
        self.run_until(self.now + QUIESCE)
        rep = Report(self.seed, len(self.nodes), sum(len(p.deps) for p in self.programs),
                     self.faults, end_time=round(end, 6), trace=self.trace)
        killed = {n.id for n in self.nodes if not n.alive}
        resolved: set[str] = set()
        for p in self.programs:
            if not p.node.alive:
                continue
            rep.calls += len(p.calls)
            rep.gave_up += p.gave_up
            rep.late += p.late
            resolved.update(p.results)
            missing = [c for c in p.calls if p.results[c] == 0]
            if missing and p.finished_at is not None:
                self.violation(f"{p.node.name} never got results for {missing[:5]}")
        leaks: Counter[str] = Counter()
        counters: Counter[str] = Counter()
        for node in self.nodes:
            if not node.alive:
                continue
            counters.update(node.d.counters)
            for cid, e in node.d.pending.items():
                kind = ("dead-origin" if e.call.origin in killed else
                        "finished" if cid in resolved else "other")
                leaks[f"{kind}:{e.where if e.where in ('local', 'backlog') else 'peer'}"] += 1
                self.violation(f"leak on {node.name}: {cid} ({kind}) where={e.where}")
            held = sum(len(w.queue) for w in node.workers)
            if node.d.running != len(node.runs) or held != len(node.runs):
                self.violation(f"{node.name} counts {node.d.running} busy slots, "
                               f"runs {len(node.runs)}, its workers hold {held}")
        rep.leaks, rep.counters = dict(sorted(leaks.items())), dict(sorted(counters.items()))
        rep.failures = dict(sorted(self.failures.items()))
        workers = self.workers
        rep.executions = sum(workers.executions.values())
        rep.extra_executions = sum(c - 1 for c in workers.executions.values() if c > 1)
        rep.dead_origin_runs = workers.dead_origin_runs
        rep.dead_origin_kept = self.membership.dead_origin_kept
        rep.waited, rep.given_back = workers.waited, workers.given_back
        rep.withdrawn, rep.withdrawals = workers.withdrawn, workers.withdrawals
        links = self.links
        rep.lost_frames = links.lost + links.refused + links.reset_lost
        rep.longest_stall = round(self.longest_stall, 3)
        rep.violations = self.violations
        return rep


def random_faults(sim: LedgerSim, rng: random.Random, horizon: float) -> None:
    """Schedule 1-8 kills, freezes and partitions over ``horizon`` virtual seconds."""
    origins = [p.node for p in sim.programs]

    def target(kind: str) -> Node | None:
        live = [n for n in sim.nodes if n.alive and not (kind == "freeze" and n.frozen)]
        r = rng.random()
        if r < 0.25:
            live_origins = [n for n in origins if n in live]
            if kind != "kill" or sum(o.alive for o in origins) > 1:
                live = live_origins or live
        elif r < 0.55:
            return sim.holder() if kind != "freeze" or not sim.holder().frozen else None
        return rng.choice(live) if live else None

    def fire(kind: str, seconds: float) -> None:
        node = target(kind)
        if kind == "kill" and node is not None:
            sim.kill(node)
        elif kind == "freeze" and node is not None:
            sim.freeze(node, seconds)
        elif kind == "partition" and all(n.side == 0 for n in sim.nodes):
            small = rng.sample(sim.nodes, rng.randint(1, len(sim.nodes) // 3))
            if node is not None and rng.random() < 0.5 and node not in small:
                small.append(node)
            sim.partition(small, seconds)

    for _ in range(rng.randint(1, 8)):
        kind = rng.choices(("kill", "freeze", "partition"), (0.35, 0.4, 0.25))[0]
        seconds = rng.uniform(0.5, 6.0) if kind == "freeze" else rng.uniform(1.0, 8.0)
        when = rng.uniform(0.05, horizon)
        sim.fault_end = max(sim.fault_end, when)
        sim.at(when, fire, kind, seconds)


def run_seed(seed: int, *, agents: int = 50, tasks: int = 500, faults: bool = True,
             record: bool = False, hold: bool = False, **options) -> Report:
    """One seeded run: random agents, programs and faults. Same seed, same report.
    ``options``: ``prefetch``, ``steal``, ``hetero``, ``tree``, ``depth``, ``long_call``,
    ``labels``, ``drop``, ``refuse``, ``reset``, ``check_bound`` (``LedgerSim``)."""
    start = time.perf_counter()
    sim = LedgerSim(seed, agents=agents, tasks=tasks, record=record, hold=hold, **options)
    if faults:
        random_faults(sim, random.Random(f"faults-{seed}"), horizon=1.5)
    rep = sim.finish()
    rep.wall = time.perf_counter() - start
    return rep


def _sweep_one(args: tuple[int, int, int, bool, dict]) -> Report:
    return run_seed(args[0], agents=args[1], tasks=args[2], hold=args[3], **args[4])


def _option_flags(options: dict, hold: bool) -> str:
    """The command line options that replay a sweep's seed."""
    flags = " --hold" * hold
    for name, default in (("prefetch", 1), ("depth", 1), ("long_call", None), ("labels", 0),
                          ("drop", 0.0), ("refuse", 0.0), ("reset", 0.0)):
        if options.get(name, default) != default:
            flags += f" --{name.replace('_', '-')} {options[name]}"
    for name, flag in (("steal", "--no-steal"), ("hetero", "--hetero"), ("tree", "--tree"),
                       ("check_bound", "--bound")):
        if options.get(name) not in (None, False) or (name == "steal" and options.get(name) is False):
            flags += f" {flag}"
    return flags + " --no-faults" * (options.get("faults") is False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, help="run (replay) one seed and print its report")
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to sweep")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--hold", action="store_true",
                    help="partitions delay messages (TCP) instead of dropping them")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for a sweep")
    ap.add_argument("--prefetch", type=int, default=1,
                    help="calls a busy peer may queue per slot (agents: 1)")
    ap.add_argument("--no-steal", action="store_true", help="no work stealing (Reclaim)")
    ap.add_argument("--hetero", action="store_true", help="slots of random speeds")
    ap.add_argument("--tree", action="store_true",
                    help="delegate along a latency tree only (as agents of a big mesh)")
    ap.add_argument("--depth", type=int, default=1,
                    help="calls a slot may hold (Dispatcher.depth): >1, calls wait at busy workers")
    ap.add_argument("--labels", type=int, default=0, metavar="N",
                    help="agents offer random subsets of N labels; half the tasks need one")
    ap.add_argument("--long-call", type=float, default=None, metavar="S",
                    help="a call running longer than S virtual seconds makes its worker give "
                         "back the calls waiting behind it (default: never)")
    ap.add_argument("--drop", type=float, default=0.0, metavar="P",
                    help="links that stay up lose each frame with probability P, each way")
    ap.add_argument("--refuse", type=float, default=0.0, metavar="P",
                    help="sends are refused (high-water mark) with probability P")
    ap.add_argument("--reset", type=float, default=0.0, metavar="P",
                    help="a frame to a member finds its connection reset with probability P "
                         "(what sat in it, both ways, is lost)")
    ap.add_argument("--no-faults", action="store_true",
                    help="no kills, freezes nor partitions (only the link faults above)")
    ap.add_argument("--bound", action="store_true",
                    help="check that no call stalls longer than the lease bound (LedgerSim.bound; "
                         "meant for runs with --no-faults)")
    args = ap.parse_args(argv)
    options = {"prefetch": args.prefetch, "hetero": args.hetero, "tree": args.tree,
               "depth": args.depth, "long_call": args.long_call, "labels": args.labels,
               "drop": args.drop, "refuse": args.refuse, "reset": args.reset,
               "check_bound": args.bound, "faults": not args.no_faults}
    if args.no_steal:
        options["steal"] = False
    if args.seed is not None:
        rep = run_seed(args.seed, agents=args.agents, tasks=args.tasks, hold=args.hold, **options)
        print("\n".join(rep.faults))
        print(rep.summary(), f"counters {rep.counters}", f"at workers: {rep.waited} waited, "
              f"{rep.given_back} given back (call ahead killed), {rep.withdrawn} withdrawn "
              f"({rep.withdrawals} long calls)", sep="\n")
        print("\n".join(rep.violations))
        return 1 if rep.violations else 0
    started = time.perf_counter()
    work = [(s, args.agents, args.tasks, args.hold, options)
            for s in range(args.start, args.start + args.seeds)]
    if args.jobs > 1:
        from multiprocessing import Pool

        with Pool(args.jobs) as pool:
            reports = pool.map(_sweep_one, work, chunksize=4)
    else:
        reports = [_sweep_one(w) for w in work]
    bad = [r for r in reports if r.violations]
    flags = _option_flags(options, args.hold)
    for r in bad:
        print(r.summary(), *r.violations[:5], f"  replay: python -m mesh.sim.ledger_sim "
              f"--seed {r.seed} --agents {r.agents} --tasks {r.tasks}{flags}", sep="\n  ")
    nfaults = sum(len(r.faults) for r in reports)
    extra = sum(r.extra_executions for r in reports)
    fails: Counter[str] = Counter()
    leaks: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    for r in reports:
        fails.update(r.failures)
        leaks.update(r.leaks)
        counters.update(r.counters)
    print(f"{len(reports)} seeds, {len(bad)} with violations, {nfaults} faults, "
          f"{sum(r.calls for r in reports)} calls, {sum(r.executions for r in reports)} runs, "
          f"{extra} extra ({extra / max(nfaults, 1):.2f} per fault), failures {dict(fails)}, "
          f"gave up {sum(r.gave_up for r in reports)}, leaks {dict(leaks)}, dead-origin runs "
          f"{sum(r.dead_origin_runs for r in reports)} (+{sum(r.dead_origin_kept for r in reports)}"
          f" kept), end {sum(r.end_time for r in reports) / len(reports):.2f}s mean, "
          f"{max(r.end_time for r in reports):.1f}s max, stealing: "
          f"{counters['reclaims_sent']} Reclaims, {counters['reclaim_asked']} calls asked back, "
          f"{counters['reclaim_got']} given back, at workers: {counters['behind']} behind, "
          f"{sum(r.waited for r in reports)} waited, {sum(r.given_back for r in reports)} given "
          f"back (call ahead killed), {sum(r.withdrawn for r in reports)} withdrawn "
          f"({sum(r.withdrawals for r in reports)} long calls), leases: "
          f"{counters['lease_questions']} questions, {counters['lease_lost']} calls found lost "
          f"({sum(r.lost_frames for r in reports)} frames lost), {counters['client_gone']} "
          f"calls of gone clients cancelled, {sum(r.late for r in reports)} late results, longest stall "
          f"{max(r.longest_stall for r in reports):.2f}s, {time.perf_counter() - started:.1f}s wall")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
