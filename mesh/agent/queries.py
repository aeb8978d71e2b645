"""What an agent tells clients, and what operators may change at run time.

``Queries`` answers ``Query`` (status, peers, progress, tree-node) and carries
out ``Resources`` (COMPSs add/reduce/lost), in the agent's loop like everything else. The
status document reads every part of the agent; it is the one place that knows them all,
and only reads them (a resource change goes through the part that owns what changes).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

from mesh.agent.actions import Actions
from mesh.agent.cpuquota import slot_speed
from mesh.agent.faults import Faults
from mesh.agent.input import Input
from mesh.agent.objects import ObjectService
from mesh.agent.slots import Slots
from mesh.agent.transport import Transport
from mesh.discovery import membership as mb
from mesh.sched import dispatch as dp
from mesh.tree import LatencyTree
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")


class Queries:
    def __init__(self, config, started: float, cpu_quota: float | None, members: mb.Membership,
                 dispatcher: dp.Dispatcher, tree: LatencyTree, transport: Transport,
                 slots: Slots, objects: ObjectService, input: Input, actions: Actions,
                 dropped: Counter, faults: Faults, faces: dict,
                 leaving: Callable[[], bool]) -> None:
        self.config = config  # (AgentConfig: a resource change updates its cpus)
        self.cpu_quota = cpu_quota  # cores the cgroup lets us use (None: no cap)
        self.started = started  # (the agent's start, for its uptime)
        self.members = members
        self.dispatcher = dispatcher
        self.tree = tree
        self.transport = transport
        self.slots = slots
        self.objects = objects
        self.input = input
        self.actions = actions
        self.dropped = dropped
        self.faults = faults
        self.faces = faces  # name -> a face the agent serves (REST): its status
        self.leaving = leaving
        input.handle(m.Query, self._on_query)
        input.handle(m.Resources, self._on_resources)

    def _on_query(self, msg: m.Query, identity: bytes, peer_id: str | None, address: None,
                  now: float) -> None:
        self.transport.reply(identity, m.encode(self.answer(msg)))

    def _on_resources(self, msg: m.Resources, identity: bytes, peer_id: str | None,
                      address: None, now: float) -> None:
        self.transport.reply(identity, m.encode(self.change_resources(msg, now)))

    def status(self) -> dict:
        d, pool, transport, me = self.dispatcher, self.slots.pool, self.transport, self.members.me
        rest = self.faces.get("rest")
        return {
            "id": me.id,
            "name": self.config.name,
            "address": transport.address,
            "pid": os.getpid(),
            "protocol": m.PROTOCOL,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "cpus": {"total": d.cpus, "free": d.free, "speed": d.speed},
            "memory": self.config.memory,
            "labels": list(self.config.labels),
            "queued": d.queued,
            "running": d.running,
            "done": d.counters["done"],
            "failed": d.counters["failed"],
            "forwarded": d.counters["forwarded"],
            "delegates_to": ("any peer" if d.neighbours is None
                             else f"{len(d.neighbours)} tree neighbour(s)"),
            "ledger": {k: d.counters[k] for k in ("reassigned", "redirected", "cancelled",
                                                   "handed_back", "joined", "lease_questions",
                                                   "lease_lost", "client_gone")},
            "stealing": {k: d.counters[k] for k in ("reclaims_sent", "reclaim_asked",
                                                     "reclaim_got", "reclaim_given")},
            "peers_alive": len(self.members.alive()),
            "dropped": dict(self.dropped, sends=transport.dropped_sends,
                            duplicate_results=d.counters["duplicate_results"]),
            "objects": dict(self.objects.core.status(), worker_hits=pool.worker_hits),
            "errors": dict(self.faults.counts),  # faults caught by where (mesh.agent.faults)
            "worker_crashes": pool.crashes,
            "workers": len(pool.workers),
            "worker_pool": {  # (mesh.agent.pool) the cap on workers, stand-ins included
                "cap": pool.cap, "peak": pool.peak, "waiting": len(pool.held),
                "over_cap": pool.over_cap, "spawn_failures": pool.spawn_failures},
            "pipeline": {  # calls waiting at busy workers (mesh.agent.pool)
                "depth": d.depth, "waiting": pool.waiting,
                "run_time_ms": None if pool.run_time is None else round(pool.run_time * 1e3, 3),
                "behind": d.counters["behind"], "unstarted": d.counters["unstarted"],
                "withdrawals": pool.withdrawals},
            "bytes": {"in": self.input.bytes_in, "out": transport.bytes_out},
            "batches": {"in": self.input.batches_in, "frames_in": self.input.batched_in,
                        "out": transport.batches_out, "frames_out": transport.batched_out},
            "membership": dict(self.members.counters, local_health=self.members.health.score,
                               incarnation=me.incarnation),
            "secure": self.config.key is not None,
            "key": None if self.config.key is None else self.config.key.fingerprint(),
            "local_socket": transport.local_path,
            "local": None if transport.local is None else {
                "connections": len(transport.local.conns),
                "accepted": transport.local.accepted,
                "strangers": transport.local.strangers,
                "failed_accepts": transport.local.starved},
            "rest": None if rest is None else rest.status(),
            "auth": {"rejected": transport.auth_rejected,
                     "handshake_failures": transport.handshake_failures},
            "leaving": self.leaving(),
        }

    def change_resources(self, req: m.Resources, now: float) -> m.Answer:
        """COMPSs add/reduce/lost resources, from a client or REST."""
        def fail(text: str) -> m.Answer:
            return m.Answer(req.qid, "resources", None, text)

        if req.action in ("add", "reduce") and req.labels and not req.peer:  # (with or without cpus)
            labels = list(self.config.labels)
            for label in req.labels:
                if req.action == "add" and label not in labels:
                    labels.append(label)
                elif req.action == "reduce" and label in labels:
                    labels.remove(label)
            if len(labels) > m.MAX_LIST:
                return fail(f"at most {m.MAX_LIST} labels")
            if not req.cpus:
                self._set_labels(labels, now)
                return m.Answer(req.qid, "resources", self.status())
        else:
            labels = None
        if req.action in ("add", "reduce") and req.cpus:
            if req.cpus < 0 or req.cpus > 1024:
                return fail("cpus must be between 1 and 1024")
            cpus = self.dispatcher.cpus + (req.cpus if req.action == "add" else -req.cpus)
            if cpus < 0:
                return fail(f"cannot reduce by {req.cpus}: the agent has {self.dispatcher.cpus} slot(s)")
            if self.leaving():
                return fail("the agent is leaving")
            self.config.cpus = cpus
            self.slots.resize(cpus)
            self.members.set_cpus(cpus)
            self.tree.set_score(float(cpus))
            log.info("resources: %s %d slot(s), now %d", req.action, req.cpus, cpus)
            self.dispatcher.speed = slot_speed(cpus, self.cpu_quota)
            if labels is not None:
                self._set_labels(labels, now)
            self.actions.do(self.dispatcher.set_cpus(cpus), now)
        elif req.action == "add" and req.peer:
            host, sep, port = req.peer.rpartition(":")
            if not sep or not host or not port.isdigit():
                return fail(f"expected HOST:PORT, got {req.peer!r}")
            log.info("resources: linking %s as a neighbour", req.peer)
            self.actions.do(self.members.add_seed(req.peer, now), now)
        elif req.action == "lost" and req.peer:
            member = self.members.find(req.peer)
            if member is None:
                return fail(f"no member named {req.peer!r}")
            log.info("resources: %s declared lost by an operator", member.info.name)
            self.actions.do(self.members.declare_lost(member.info.id, now), now)
        else:
            return fail("expected add/reduce with cpus, add with a peer HOST:PORT, or lost with a member")
        return m.Answer(req.qid, "resources", self.status())

    def _set_labels(self, labels: list[str], now: float) -> None:
        """This agent's capabilities change (COMPSs addResources' OS and architecture):
        placement here at once, the peers with the next load news."""
        self.config.labels = labels
        self.dispatcher.labels = frozenset(labels)
        log.info("resources: labels now %s", ", ".join(labels) or "none")
        self.actions.do(self.dispatcher.set_cpus(self.dispatcher.cpus), now)  # (calls that now fit)

    def answer(self, q: m.Query) -> m.Answer:
        if q.what == "ping":  # a client's heartbeat (mesh.client.heartbeat): any answer will do
            return m.Answer(q.qid, q.what, None)
        if q.what == "status":
            return m.Answer(q.qid, q.what, self.status())
        if q.what == "peers":
            return m.Answer(q.qid, q.what, self.members.views())
        if q.what == "progress":  # of a task graph run by a call here (mesh run)
            return m.Answer(q.qid, q.what, self.slots.pool.progress.get(q.arg))
        if q.what == "tree-node":  # this agent's place in the tree (mesh tree gathers them)
            return m.Answer(q.qid, q.what, dict(self.tree.view(), name=self.config.name))
        return m.Answer(q.qid, q.what, None, f"unknown query {q.what!r} (status, peers, progress, tree-node)")
