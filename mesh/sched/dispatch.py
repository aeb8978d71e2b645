"""Dispatcher: where each call runs, and where its result goes (the call ledger).

Theory of operation
-------------------
A pure state machine per agent; the agent feeds it events and carries out the
returned actions (``RunLocal``, ``Forward``, ``Deliver``, ``SendTo``, ``KillLocal``).

Every call the agent accepts (from a client, or delegated by a peer) becomes a
``Pending`` entry until its result has been delivered. An entry is in exactly one
place: ``local`` (running in a worker slot), ``backlog`` (waiting), or a peer's node
id (delegated to it), and has one or more *requesters*: the client or peer
connections that asked for it (a call re-placed by its origin may reach an agent
that still holds it from an earlier path: the new requester joins the entry, unless
the call came back through the very peer we gave it to, i.e. its ``visited`` names our
holder: joining would close a loop of holders each waiting for the next, so the
sender gets a ``Handback`` and places its copy elsewhere).

Placement, constraints and work stealing: ``mesh.sched.placement`` (a mixin of
``Dispatcher``).

The ledger: each hop keeps its own entry, so a delegation chain origin -> B -> C is
known piecewise (origin: "at B"; B: "at C, for origin"). Failures are handled by
the hop that sees them, from membership's verdicts: ``mesh.sched.peer_failures`` (a
mixin of ``Dispatcher``). Leaving (``drain``): queued calls go to peers, or back to
who sent them.

Exactly once: the first result for a pending entry is delivered to its requesters
and the entry removed; a result may come from any member (the far end of a chain
answering the origin directly). A later result for the same call (a lost peer that
was only slow, a frozen one that woke) finds no entry and is dropped and counted.
Whoever else still holds the call is told to stop (``Cancel``).

Bounds: nothing is kept about a call once it has ended here: ``pending`` holds at most
``max_pending`` entries (more are refused, ``Overloaded``), and the ``backlog`` holds their
ids, plus ids of calls that ended while they waited (skipped when reached; when they
outnumber the pending calls, the backlog is compacted). What is kept about a peer goes
when it is lost, or forgotten by membership (``mesh.sched.peer_failures``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mesh.sched.actions import Action, Deliver, Forward, KillLocal, RunLocal, SendTo
from mesh.sched.peer_failures import PeerFailures
from mesh.sched.placement import Placement
from mesh.sched.records import PeerSlots, Pending, Requester
from mesh.wire.messages import Call, Cancel, Handback, Result, evolve


@dataclass
class Dispatcher(PeerFailures, Placement):
    """Placement, result routing and the call ledger of one agent. See the module
    docstring."""

    name: str
    cpus: int
    node_id: str = ""
    max_hops: int = 4
    max_attempts: int = 5
    max_pending: int = 100_000
    prefetch: int = 0  # calls a busy peer may queue from us, per slot of its (0: none)
    speed: float = 1.0  # our own effective cores per slot (mesh.agent.cpuquota)
    memory: int = 0  # bytes we offer to tasks (0: not said) (task constraints)
    labels: frozenset = frozenset()  # our capabilities (task constraints)
    unfit_grace: float = 30.0  # s a call that no known agent can run waits for one to join
    steal: bool | None = None  # Reclaim when idle (None: when prefetch > 0, as agents run)
    neighbours: frozenset | None = None  # tree neighbours to delegate to (None: any peer)
    pending: dict[str, Pending] = field(default_factory=dict)
    peers: dict[str, PeerSlots] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)  # members declared dead or left
    suspected: set[str] = field(default_factory=set)  # members suspected since their last report
    orphans: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # origin -> (call, requester)
    max_orphans: int = 100_000
    backlog: deque[str] = field(default_factory=deque)
    delegated: dict[str, dict[str, None]] = field(default_factory=dict)  # peer -> call ids, oldest first
    queues: dict[str, None] = field(default_factory=dict)  # peers that reported a queue
    running: int = 0  # slots taken by calls here (a call waiting at a worker takes one)
    depth: int = 1  # calls a slot may hold: one running, the rest waiting at its worker
    draining: bool = False
    counters: dict[str, int] = field(
        default_factory=lambda: {
            "accepted": 0,
            "done": 0,
            "failed": 0,
            "forwarded": 0,
            "duplicate_results": 0,
            "joined": 0,
            "lent": 0,
            "reclaimed": 0,
            "rejected": 0,
            "reassigned": 0,
            "redirected": 0,
            "cancelled": 0,
            "handed_back": 0,
            "resent": 0,
            "reclaims_sent": 0,  # Reclaim messages (work stealing)
            "reclaim_asked": 0,  # calls asked back from a peer
            "reclaim_got": 0,  # calls a peer gave back unstarted
            "reclaim_given": 0,  # calls given back to a peer that asked
            "behind": 0,  # calls given to a busy worker to wait there (depth > 1)
            "unstarted": 0,  # calls a worker gave back without starting them
        }
    )

    # ------------------------------------------------------------------ events

    def submit(self, call: Call, reply_to: bytes, from_peer: str | None = None,
               now: float = 0.0) -> list[Action]:
        """A call arrived from a client (``from_peer`` None) or a peer (``now``: only
        for calls with constraints no known agent meets, see ``expire_unfit``)."""
        requester = Requester(reply_to, from_peer)
        entry = self.pending.get(call.call_id)
        if entry is not None:  # asked again: by a new path, or a retransmission
            # (an origin we were answering directly now asks over its own connection)
            entry.requesters = [r for r in entry.requesters if not (r.direct and r.peer == from_peer)]
            if all(r.identity != reply_to or r.direct for r in entry.requesters):
                if from_peer is not None and entry.where in call.visited:
                    # it came back through the peer we gave it to (paths joined after
                    # re-placements): joining would make a loop that waits on itself
                    self.counters["handed_back"] += 1
                    return [SendTo(from_peer, Handback(call.call_id, "a delegation loop"))]
                entry.requesters.append(requester)
                self.counters["joined"] += 1
            return []
        if len(self.pending) >= self.max_pending:
            self.counters["rejected"] += 1
            return [Deliver(reply_to, self._failure(call, "Overloaded", "too many pending calls"))]
        if self.draining and from_peer is None:
            self.counters["rejected"] += 1
            return [Deliver(reply_to, self._failure(call, "AgentLeaving", "agent is leaving"))]
        self.counters["accepted"] += 1
        if from_peer is None and not call.origin and self.node_id:
            call = evolve(call, origin=self.node_id)
        elif len(call.visited) > call.hops:  # each hop adds one to both: a peer's bad count
            call = evolve(call, hops=len(call.visited))  # (``visited`` stays a short list)
        entry = Pending(call, [requester], "backlog", since=now)
        if from_peer is not None:
            entry.tried.add(from_peer)
        self.pending[call.call_id] = entry
        if len(self.backlog) > 2 * len(self.pending) + 64:  # mostly ids of calls that ended
            self._compact_backlog()
        if self.backlog:  # first come, first placed
            self.backlog.append(call.call_id)
            if self._stuck():
                return []  # (the head was tried at the last change; nothing changed)
            return self._retry_backlog()
        return self._place_or_queue(entry)

    def _compact_backlog(self) -> None:
        """Drop from the backlog the ids of calls no longer waiting here (they ended, or
        were placed elsewhere, while they waited: ``_stop`` leaves them to be skipped),
        each waiting call once, in order."""
        seen: set[str] = set()
        kept: deque[str] = deque()
        for call_id in self.backlog:
            entry = self.pending.get(call_id)
            if entry is not None and entry.where == "backlog" and call_id not in seen:
                seen.add(call_id)
                kept.append(call_id)
        self.backlog = kept

    def _stuck(self) -> bool:
        """No call waiting here can be placed now: no slot is free, no worker takes one
        more to wait behind its call, and there is no peer to give one to (a lone agent
        with a backlog: the common case of a burst)."""
        return self.free <= 0 and not self.peers and self.running >= self.cpus * self.depth

    def unstarted(self, call_ids: list[str]) -> list[Action]:
        """Calls given to a worker came back unstarted: they waited there behind a call
        that turned out long or that blocked on other tasks, or their worker died before
        reaching them. They go back to the head of the backlog, in their order, and are
        placed again."""
        back = []
        for call_id in call_ids:
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "local" or entry.lent:
                continue
            self.running = max(self.running - entry.slots, 0)
            entry.where = "backlog"
            back.append(call_id)
        if not back:
            return []
        self.backlog.extendleft(reversed(back))
        self.counters["unstarted"] += len(back)
        return self._retry_backlog()

    def local_done(self, result: Result) -> list[Action]:
        """A worker slot finished a call (successfully or not) and is free again."""
        entry = self.pending.get(result.call_id)
        if entry is None or not entry.lent:  # a lent call already gave its slot back
            self.running = max(self.running - (entry.slots if entry is not None else 1), 0)
        acts = self._finish(result, holder="local")
        return acts + self._retry_backlog()

    def remote_result(self, result: Result, peer_id: str) -> list[Action]:
        """A member sent the result of a call: the peer we delegated it to, or the far
        end of a chain whose middle was lost (answering us, the origin, directly).
        A result carries its sender's load: fresh news that it can take more."""
        acts = self._finish(result, holder=peer_id)
        peer = self.peers.get(peer_id)
        if peer is not None and result.free >= 0:
            peer.free, peer.queued, peer.sent = result.free, result.queued, 0
            if peer.queued > 0:
                self.queues[peer_id] = None
            acts += self._retry_backlog()
        return acts

    def peer_load(self, peer_id: str, name: str, cpus: int, free: int, rtt: float | None,
                  queued: int = 0, speed: float = 1.0, memory: int = 0,
                  labels=()) -> list[Action]:
        """A heartbeat from a live peer told us its capacity (and what it offers)."""
        self.peers[peer_id] = PeerSlots(name, cpus, free, rtt if rtt is not None else 1.0,
                                        queued=queued, speed=min(max(speed, 0.01), 1.0),
                                        told=self.free,  # (the heartbeats carry both loads)
                                        memory=memory, labels=frozenset(labels))
        if queued > 0:
            self.queues[peer_id] = None
        self.lost.discard(peer_id)
        acts: list[Action] = []
        if peer_id in self.suspected:
            # it answers again: what we sent it while it was out of reach may have been
            # lost with the link (or its results were); send it again. It ignores a copy
            # of a call it still holds for us; one it finished already runs again.
            self.suspected.discard(peer_id)
            for entry in self.pending.values():
                if entry.where == peer_id:
                    acts.append(Forward(peer_id, self._outgoing(entry)))
                    self.counters["resent"] += 1
        return acts + self._retry_backlog()

    def cancel(self, call_id: str, identity: bytes) -> list[Action]:
        """The requester on ``identity`` no longer wants the call (a client whose task
        timed out, or the agent that delegated it to us)."""
        entry = self.pending.get(call_id)
        if entry is None:
            return []
        entry.requesters = [r for r in entry.requesters if r.identity != identity or r.direct]
        if entry.requesters:
            return []
        return self._cancel(entry, "cancelled by its requester") + self._retry_backlog()

    def handed_back(self, call_id: str, peer_id: str) -> list[Action]:
        """The peer holding a call gives it back unfinished: place it again."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != peer_id:
            return []
        if entry.asked == peer_id:  # we asked for it (Reclaim): not a lost holder, no attempt
            self.counters["reclaim_got"] += 1
            peer = self.peers.get(peer_id)
            if peer is not None:  # it waits there no more
                if peer.sent > 0:
                    peer.sent -= 1
                else:
                    peer.queued = max(peer.queued - 1, 0)
            self._undelegate(entry)
            entry.tried.add(peer_id)
            entry.where = "backlog"
            acts = self._place(entry)
            if entry.where == "backlog" and call_id in self.pending:
                self.backlog.appendleft(call_id)  # accepted before anything waiting here
            return acts
        return self._replace(entry, peer_id)

    def reclaim(self, call_ids: list[str], peer_id: str, free: int = -1, queued: int = 0) -> list[Action]:
        """A peer with free slots and nothing waiting (``Reclaim``) tells us its load and
        asks for calls it delegated to us: those still waiting here go back to it
        (``Handback``; it places them again); started ones run on and their results go
        back as usual, so whichever way a Reclaim crosses a start or a result, each call
        runs here or there, once. Then its free slots may take our backlog."""
        acts: list[Action] = []
        for call_id in call_ids:
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "backlog":
                continue  # finished, running here, or passed on: nothing to give back
            theirs = [r for r in entry.requesters if r.peer == peer_id and not r.direct]
            if not theirs:
                continue
            entry.requesters = [r for r in entry.requesters if r not in theirs]
            acts.append(SendTo(peer_id, Handback(call_id, "reclaimed before it started")))
            self.counters["reclaim_given"] += 1
            self.counters["handed_back"] += 1
            if not entry.requesters:  # (else it stays for its other requesters)
                del self.pending[call_id]
                try:
                    self.backlog.remove(call_id)  # (rare: keeps ``queued`` exact)
                except ValueError:
                    pass
        peer = self.peers.get(peer_id)
        if peer is not None and free >= 0:  # what it gets back takes its slots first
            peer.free, peer.queued, peer.sent = free, queued, len(acts)
            if queued > 0:
                self.queues[peer_id] = None
        return acts + self._retry_backlog()

    def lend(self, call_id: str, lent: bool) -> list[Action]:
        """A local call blocks waiting for other tasks (``lent``): its slot is free
        meanwhile, so the tasks it waits for can run here (no deadlock on recursive
        graphs); or it resumes and takes a slot again (possibly over ``cpus`` for a
        while: the call was already running)."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != "local" or entry.lent == lent:
            return []
        entry.lent = lent
        self.running += -entry.slots if lent else entry.slots
        self.counters["lent" if lent else "reclaimed"] += 1
        return self._retry_backlog() if lent else []

    def abandon(self, error_type: str, text: str) -> list[Action]:
        """The agent is going away: calls held for peers go back to them, calls of our
        own clients fail."""
        acts: list[Action] = []
        for entry in list(self.pending.values()):
            if entry.peers_asking():
                acts += self._give_back(entry, text)
            if entry.call.call_id in self.pending:
                acts += self._fail(entry, error_type, text)
        self.backlog.clear()
        return acts

    def set_cpus(self, cpus: int) -> list[Action]:
        self.cpus = max(cpus, 0)
        return self._retry_backlog()

    def drain(self) -> list[Action]:
        """Leaving: accept no new client calls, run nothing new here, hand the backlog
        to peers, or back to the peers that sent it. Calls already running finish."""
        self.draining = True
        self.cpus = 0
        acts = self._retry_backlog()
        for call_id in list(self.backlog):
            entry = self.pending.get(call_id)
            if entry is not None and entry.where == "backlog" and entry.peers_asking():
                acts += self._give_back(entry, "the agent is leaving")
        return acts

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

    def _run_local(self, entry: Pending, behind: bool = False) -> list[Action]:
        entry.where = "local"
        self.running += entry.slots
        self.counters["behind"] += behind
        return [RunLocal(entry.call, behind)]

    def _forward(self, entry: Pending, peer_id: str) -> list[Action]:
        entry.where = peer_id
        self.peers[peer_id].sent += 1
        self.delegated.setdefault(peer_id, {})[entry.call.call_id] = None
        self.counters["forwarded"] += 1
        return [Forward(peer_id, self._outgoing(entry))]

    def _outgoing(self, entry: Pending) -> Call:
        call = entry.call
        visited = call.visited + [self.node_id] if self.node_id else call.visited
        return evolve(call, hops=call.hops + 1, visited=visited, attempt=entry.attempts)

    def _retry_backlog(self) -> list[Action]:
        acts: list[Action] = []
        kept: list[str] = []
        waiting_here = 0
        for _ in range(len(self.backlog)):
            if self._stuck():
                break  # the rest waits (in order) for a slot or a peer
            call_id = self.backlog.popleft()
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "backlog":
                continue
            acts += self._place(entry, ahead=waiting_here)
            if entry.where == "backlog" and call_id in self.pending:  # (not failed by _place)
                if entry.call.needs is not None and not self._fits_here(entry.call):
                    kept.append(call_id)  # waits for an agent that can run it; not a queue head
                    continue
                if entry.call.inputs and self._inputs_here(entry.call):
                    kept.append(call_id)  # waits for our slot by choice (its data is here)
                    waiting_here += 1
                    continue
                # nothing can take it now; the rest wait for the next slot or report (FIFO)
                self.backlog.appendleft(call_id)
                break
        if kept:
            self.backlog.extendleft(reversed(kept))
        return acts + self._steal()

    def _place_or_queue(self, entry: Pending) -> list[Action]:
        acts = self._place(entry)
        if entry.where == "backlog" and entry.call.call_id in self.pending:
            self.backlog.append(entry.call.call_id)
        return acts

    def _undelegate(self, entry: Pending) -> None:
        calls = self.delegated.get(entry.where)
        if calls is not None:
            calls.pop(entry.call.call_id, None)
            if not calls:
                del self.delegated[entry.where]

    def _finish(self, result: Result, holder: str) -> list[Action]:
        entry = self.pending.pop(result.call_id, None)
        if entry is None:
            self.counters["duplicate_results"] += 1
            return []
        self.counters["done" if result.ok else "failed"] += 1
        self._undelegate(entry)
        acts = self._deliver(entry, result)
        if entry.where != holder:  # someone else still has it: stop them
            acts += self._stop(entry, "its result arrived from elsewhere")
            if entry.where == "local":
                acts += self._retry_backlog()
        return acts

    def _deliver(self, entry: Pending, result: Result) -> list[Action]:
        """To each requester; a result going to a peer carries our load (free slots and
        backlog as of now), so the peer can send the next call at once."""
        to_peer = None
        acts: list[Action] = []
        for r in entry.requesters:
            if r.peer is None:
                acts.append(Deliver(r.identity, result))
                continue
            if to_peer is None:
                to_peer = evolve(result, free=self.free, queued=self.queued)
            peer = self.peers.get(r.peer)
            if peer is not None:
                peer.told = self.free
            acts.append(SendTo(r.peer, to_peer) if r.direct else Deliver(r.identity, to_peer))
        return acts

    def _stop(self, entry: Pending, reason: str) -> list[Action]:
        """Undo the entry's placement (the entry is already out of ``pending``)."""
        if entry.where == "local":
            if not entry.lent:
                self.running = max(self.running - entry.slots, 0)
            return [KillLocal(entry.call.call_id)]  # (the caller retries the backlog)
        if entry.where != "backlog" and entry.where not in self.lost:
            self._undelegate(entry)
            return [SendTo(entry.where, Cancel(entry.call.call_id, reason))]
        return []  # backlog: its id is skipped when the backlog reaches it

    def _cancel(self, entry: Pending, reason: str) -> list[Action]:
        self.pending.pop(entry.call.call_id, None)
        self.counters["cancelled"] += 1
        return self._stop(entry, reason)

    def _give_back(self, entry: Pending, reason: str) -> list[Action]:
        """Return the call to the peers that asked for it; our clients' requests stay."""
        acts = [SendTo(r.peer, Handback(entry.call.call_id, reason))
                for r in entry.requesters if r.peer is not None and not r.direct]
        self.counters["handed_back"] += len(acts)
        entry.requesters = [r for r in entry.requesters if r.peer is None]
        if not entry.requesters:
            self.pending.pop(entry.call.call_id, None)
            acts += self._stop(entry, reason)
        return acts

    def _fail(self, entry: Pending, error_type: str, text: str) -> list[Action]:
        self.pending.pop(entry.call.call_id, None)
        self.counters["failed"] += 1
        return self._deliver(entry, self._failure(entry.call, error_type, text))

    def _failure(self, call: Call, error_type: str, text: str) -> Result:
        return Result(call.call_id, False, b"", self.name, error_type, text, "")
