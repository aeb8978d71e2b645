"""What an agent tells clients, and what operators may change at run time.

A mixin of ``Agent``: answers to ``Query`` (status, peers, tree-node, metrics) and
``Resources`` (COMPSs add/reduce/lost), run in the agent's loop like everything else.
"""

from __future__ import annotations

import logging
import os
import time

from mesh.agent.cpuquota import slot_speed
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")


class AgentQueries:
    def status(self) -> dict:
        d = self.dispatcher
        return {
            "id": self.node_id,
            "name": self.config.name,
            "address": self.address,
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
            "dropped": dict(self.dropped, sends=self.transport.dropped_sends,
                            duplicate_results=d.counters["duplicate_results"]),
            "objects": dict(self.objects.status(), worker_hits=self.pool.worker_hits),
            "worker_crashes": self.pool.crashes,
            "workers": len(self.pool.workers),
            "pipeline": {  # calls waiting at busy workers (mesh.agent.pool)
                "depth": d.depth, "waiting": self.pool.waiting,
                "run_time_ms": None if self.pool.run_time is None else round(self.pool.run_time * 1e3, 3),
                "behind": d.counters["behind"], "unstarted": d.counters["unstarted"],
                "withdrawals": self.pool.withdrawals},
            "bytes": {"in": self.bytes_in, "out": self.transport.bytes_out},
            "batches": {"in": self.batches_in, "frames_in": self.batched_in,
                        "out": self.transport.batches_out,
                        "frames_out": self.transport.batched_out},
            "membership": dict(self.members.counters, local_health=self.members.health.score,
                               incarnation=self.members.me.incarnation),
            "secure": self.config.key is not None,
            "key": None if self.config.key is None else self.config.key.fingerprint(),
            "local_socket": self.transport.local_path,
            "local": None if self.transport.local is None else {
                "connections": len(self.transport.local.conns),
                "accepted": self.transport.local.accepted,
                "strangers": self.transport.local.strangers,
                "failed_accepts": self.transport.local.starved},
            "rest": None if self.rest is None else self.rest.status(),
            "auth": {"rejected": self.transport.auth_rejected,
                     "handshake_failures": self.transport.handshake_failures},
            "leaving": self.leaving_since is not None,
        }

    def change_resources(self, req: m.Resources, now: float) -> m.Answer:
        """COMPSs add/reduce/lost resources, from a client or REST."""
        def fail(text: str) -> m.Answer:
            return m.Answer(req.qid, "resources", None, text)

        if req.action in ("add", "reduce") and req.cpus:
            if req.cpus < 0 or req.cpus > 1024:
                return fail("cpus must be between 1 and 1024")
            cpus = self.dispatcher.cpus + (req.cpus if req.action == "add" else -req.cpus)
            if cpus < 0:
                return fail(f"cannot reduce by {req.cpus}: the agent has {self.dispatcher.cpus} slot(s)")
            if self.leaving_since is not None:
                return fail("the agent is leaving")
            self.config.cpus = cpus
            self.pool.resize(cpus)
            self._sync_worker_fds()
            self.members.set_cpus(cpus)
            self.tree.set_score(float(cpus))
            log.info("resources: %s %d slot(s), now %d", req.action, req.cpus, cpus)
            self.dispatcher.speed = slot_speed(cpus, self.cpu_quota)
            self._do(self.dispatcher.set_cpus(cpus), now)
        elif req.action == "add" and req.peer:
            host, sep, port = req.peer.rpartition(":")
            if not sep or not host or not port.isdigit():
                return fail(f"expected HOST:PORT, got {req.peer!r}")
            log.info("resources: linking %s as a neighbour", req.peer)
            self._do(self.members.add_seed(req.peer, now), now)
        elif req.action == "lost" and req.peer:
            member = self.members.find(req.peer)
            if member is None:
                return fail(f"no member named {req.peer!r}")
            log.info("resources: %s declared lost by an operator", member.info.name)
            self._do(self.members.declare_lost(member.info.id, now), now)
        else:
            return fail("expected add/reduce with cpus, add with a peer HOST:PORT, or lost with a member")
        return m.Answer(req.qid, "resources", self.status())

    def _answer(self, q: m.Query) -> m.Answer:
        if q.what == "ping":  # a client's heartbeat (mesh.client.heartbeat): any answer will do
            return m.Answer(q.qid, q.what, None)
        if q.what == "status":
            return m.Answer(q.qid, q.what, self.status())
        if q.what == "peers":
            return m.Answer(q.qid, q.what, self.members.views())
        if q.what == "progress":  # of a task graph run by a call here (mesh run)
            return m.Answer(q.qid, q.what, self.pool.progress.get(q.arg))
        if q.what == "metrics":
            from mesh.faces.metrics import render

            return m.Answer(q.qid, q.what, render(self.status(), self.members.views()))
        if q.what == "tree-node":  # this agent's place in the tree (mesh tree gathers them)
            return m.Answer(q.qid, q.what, dict(self.tree.record(self.config.name),
                                                address=self.address, view=self.tree.view()))
        return m.Answer(q.qid, q.what, None, f"unknown query {q.what!r} (status, peers, tree-node, metrics)")
