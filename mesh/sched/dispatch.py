"""Dispatcher: where each call runs, and where its result goes.

Theory of operation
-------------------
A pure state machine per agent; the agent feeds it events and carries out the
returned actions (``RunLocal``, ``Forward``, ``Deliver``).

Every call the agent accepts (from a client, or delegated by a peer) becomes a
``Pending`` entry until its result has been delivered back on the path it came
from. An entry is in exactly one place: ``local`` (running in a worker slot),
``backlog`` (waiting), or a peer's node id (delegated to it).

Placement, the walking skeleton's simple rule (``place``):
  1. a free local slot: run here;
  2. else a live peer believed to have a free slot (its last heartbeat's ``free``
     minus what we sent it since), most free first, then the lowest round trip:
     delegate, unless the call already made ``max_hops`` hops;
  3. else wait in the local backlog if this agent has slots;
  4. an agent without slots delegates to the least loaded live peer with slots.
A call is never sent back to the peer it came from, nor to a peer that already
held it and was lost, so it cannot ping-pong. The backlog is retried whenever a
slot frees or a peer reports free slots (spill-over).

Exactly once: the first result for a pending call is delivered and the entry
removed; any later result for it (a lost peer that was only slow) is dropped and
counted, and so is a result from a peer that never held the call. When a peer
holding calls is lost, those calls are placed again (bounded by ``max_attempts``).
A call records the agents that delegated it (``Call.visited``) and never goes back
to one of them, so it cannot loop (A -> B -> C -> A) even on stale load news.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from mesh.messages import Call, Result


@dataclass(frozen=True)
class RunLocal:
    call: Call


@dataclass(frozen=True)
class Forward:
    peer_id: str
    call: Call


@dataclass(frozen=True)
class Deliver:
    """Send ``result`` back over the ROUTER to the connection ``identity``."""

    identity: bytes
    result: Result


Action = RunLocal | Forward | Deliver


@dataclass
class PeerSlots:
    """What we believe of a peer's capacity."""

    name: str
    cpus: int
    free: int
    rtt: float
    sent: int = 0  # calls we delegated to it since its last report

    @property
    def est_free(self) -> int:
        return self.free - self.sent


@dataclass
class Pending:
    call: Call
    reply_to: bytes
    from_peer: str | None
    where: str  # "local", "backlog" or a peer id
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    lent: bool = False  # running here, blocked on other tasks, its slot lent


@dataclass
class Dispatcher:
    """Placement and result routing of one agent. See the module docstring."""

    name: str
    cpus: int
    node_id: str = ""
    max_hops: int = 4
    max_attempts: int = 3
    max_pending: int = 100_000
    pending: dict[str, Pending] = field(default_factory=dict)
    peers: dict[str, PeerSlots] = field(default_factory=dict)
    backlog: deque[str] = field(default_factory=deque)
    running: int = 0
    draining: bool = False
    counters: dict[str, int] = field(
        default_factory=lambda: {
            "accepted": 0,
            "done": 0,
            "failed": 0,
            "forwarded": 0,
            "duplicate_results": 0,
            "unexpected_results": 0,
            "lent": 0,
            "reclaimed": 0,
            "rejected": 0,
        }
    )

    # ------------------------------------------------------------------ events

    def submit(self, call: Call, reply_to: bytes, from_peer: str | None = None) -> list[Action]:
        """A call arrived from a client (``from_peer`` None) or a peer."""
        if call.call_id in self.pending:
            self.counters["rejected"] += 1
            return [Deliver(reply_to, self._failure(call, "DuplicateCall", "call id already in use"))]
        if len(self.pending) >= self.max_pending:
            self.counters["rejected"] += 1
            return [Deliver(reply_to, self._failure(call, "Overloaded", "too many pending calls"))]
        if self.draining and from_peer is None:
            self.counters["rejected"] += 1
            return [Deliver(reply_to, self._failure(call, "AgentLeaving", "agent is leaving"))]
        self.counters["accepted"] += 1
        entry = Pending(call, reply_to, from_peer, "backlog")
        if from_peer is not None:
            entry.tried.add(from_peer)
        self.pending[call.call_id] = entry
        return self._place_or_queue(entry)

    def local_done(self, result: Result) -> list[Action]:
        """A worker slot finished a call (successfully or not) and is free again."""
        entry = self.pending.get(result.call_id)
        if entry is None or not entry.lent:  # a lent call already gave its slot back
            self.running = max(self.running - 1, 0)
        acts = self._finish(result, holder="local")
        return acts + self._retry_backlog()

    def remote_result(self, result: Result, peer_id: str) -> list[Action]:
        """A peer sent the result of a call we delegated."""
        return self._finish(result, holder=peer_id)

    def peer_load(self, peer_id: str, name: str, cpus: int, free: int, rtt: float | None) -> list[Action]:
        """A heartbeat from a live peer told us its capacity."""
        self.peers[peer_id] = PeerSlots(name, cpus, free, rtt if rtt is not None else 1.0)
        return self._retry_backlog()

    def peer_lost(self, peer_id: str) -> list[Action]:
        """A peer died or left: calls it held are placed again."""
        self.peers.pop(peer_id, None)
        acts: list[Action] = []
        for entry in [e for e in self.pending.values() if e.where == peer_id]:
            entry.tried.add(peer_id)
            entry.attempts += 1
            if entry.attempts > self.max_attempts:
                acts += self._fail(entry, "PeerLost", f"lost {entry.attempts} holders of this call")
            else:
                entry.where = "backlog"
                acts += self._place_or_queue(entry)
        return acts

    def lend(self, call_id: str, lent: bool) -> list[Action]:
        """A local call blocks waiting for other tasks (``lent``): its slot is free
        meanwhile, so the tasks it waits for can run here (no deadlock on recursive
        graphs); or it resumes and takes a slot again (possibly over ``cpus`` for a
        while: the call was already running)."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != "local" or entry.lent == lent:
            return []
        entry.lent = lent
        self.running += -1 if lent else 1
        self.counters["lent" if lent else "reclaimed"] += 1
        return self._retry_backlog() if lent else []

    def peer_suspect(self, peer_id: str) -> list[Action]:
        """A peer stopped answering for a while: send it nothing new until it reports
        again (its calls stay with it until it is declared dead)."""
        self.peers.pop(peer_id, None)
        return []

    def forward_failed(self, call_id: str, peer_id: str) -> list[Action]:
        """The transport could not send a delegated call: place it elsewhere."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != peer_id:
            return []
        entry.tried.add(peer_id)
        entry.where = "backlog"
        return self._place_or_queue(entry)

    def abandon(self, error_type: str, text: str) -> list[Action]:
        """Fail every pending call (the agent is going away)."""
        acts: list[Action] = []
        for entry in list(self.pending.values()):
            acts += self._fail(entry, error_type, text)
        self.backlog.clear()
        return acts

    def set_cpus(self, cpus: int) -> list[Action]:
        self.cpus = max(cpus, 0)
        return self._retry_backlog()

    def drain(self) -> list[Action]:
        """Leaving: accept no new client calls, run nothing new here, hand the backlog
        to peers. Calls already running finish."""
        self.draining = True
        self.cpus = 0
        return self._retry_backlog()

    # ------------------------------------------------------------------ queries

    @property
    def free(self) -> int:
        return max(self.cpus - self.running, 0)

    @property
    def queued(self) -> int:
        return len(self.backlog)

    def idle(self) -> bool:
        return not self.pending

    # ------------------------------------------------------------------ internals

    def _place(self, entry: Pending) -> list[Action]:
        call = entry.call
        if self.free > 0:
            return self._run_local(entry)
        if call.hops < self.max_hops:
            peer = self._pick_peer(entry, need_free=True)
            if peer is None and self.cpus == 0:
                peer = self._pick_peer(entry, need_free=False)
            if peer is not None:
                return self._forward(entry, peer)
        if self.cpus == 0 and call.hops >= self.max_hops:
            return self._fail(entry, "NoCapacity", f"no agent with a free slot within {self.max_hops} hops")
        entry.where = "backlog"
        return []

    def _pick_peer(self, entry: Pending, need_free: bool) -> str | None:
        best, best_key = None, None
        for peer_id, p in self.peers.items():
            if peer_id in entry.tried or peer_id in entry.call.visited or p.cpus <= 0:
                continue
            if need_free:
                if p.est_free <= 0:
                    continue
                key = (-p.est_free, p.rtt)
            else:
                key = ((p.cpus - p.est_free) / p.cpus, p.rtt)
            if best_key is None or key < best_key:
                best, best_key = peer_id, key
        return best

    def _run_local(self, entry: Pending) -> list[Action]:
        entry.where = "local"
        self.running += 1
        return [RunLocal(entry.call)]

    def _forward(self, entry: Pending, peer_id: str) -> list[Action]:
        entry.where = peer_id
        self.peers[peer_id].sent += 1
        self.counters["forwarded"] += 1
        call = entry.call
        visited = call.visited + [self.node_id] if self.node_id else call.visited
        return [Forward(peer_id, replace(call, hops=call.hops + 1, visited=visited))]

    def _retry_backlog(self) -> list[Action]:
        acts: list[Action] = []
        for _ in range(len(self.backlog)):
            call_id = self.backlog.popleft()
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "backlog":
                continue
            acts += self._place(entry)
            if entry.where == "backlog" and call_id in self.pending:  # (not failed by _place)
                # nothing can take it now; the rest wait for the next slot or report (FIFO)
                self.backlog.appendleft(call_id)
                break
        return acts

    def _place_or_queue(self, entry: Pending) -> list[Action]:
        acts = self._place(entry)
        if entry.where == "backlog" and entry.call.call_id in self.pending:
            self.backlog.append(entry.call.call_id)
        return acts

    def _finish(self, result: Result, holder: str) -> list[Action]:
        entry = self.pending.get(result.call_id)
        if entry is None:
            self.counters["duplicate_results"] += 1
            return []
        if holder != "local" and holder != entry.where and holder not in entry.tried:
            self.counters["unexpected_results"] += 1  # from a peer that never held it
            return []
        del self.pending[result.call_id]
        self.counters["done" if result.ok else "failed"] += 1
        return [Deliver(entry.reply_to, result)]

    def _fail(self, entry: Pending, error_type: str, text: str) -> list[Action]:
        self.pending.pop(entry.call.call_id, None)
        self.counters["failed"] += 1
        return [Deliver(entry.reply_to, self._failure(entry.call, error_type, text))]

    def _failure(self, call: Call, error_type: str, text: str) -> Result:
        return Result(call.call_id, False, b"", self.name, error_type, text, "")
