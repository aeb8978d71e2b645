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

Placement (``_place``):
  0. a call whose big inputs are held at agents (``Call.inputs``: task outputs kept
     where they were made, ``mesh.objects``) goes to the agent holding at least half
     of their bytes if that agent can start it now (a free slot, or room in the queue
     it keeps for us): running there moves no data (Ray's locality-aware leasing; a
     busy holder is not waited for: the reader fetches the bytes instead);
  1. a free local slot: run here;
  2. else a live peer believed to have a free slot (its last heartbeat's ``free``
     minus what we sent it since) where the call would finish sooner than here
     (earliest finish: a slot's *speed* is its effective cores, so a device capped at
     a quarter of a core gets work only while our queue is long), fastest and most
     free first, then the lowest round trip: delegate, unless the call already made
     ``max_hops`` hops;
  3. else wait in the local backlog if this agent has slots;
  4. an agent without slots delegates to the least loaded live peer with slots.
Constraints (``Call.needs``, from ``@constraint``): a call runs only on an agent with
at least ``cpus`` slots (it takes that many while it runs), offering at least
``memory`` bytes and every label; every step above considers only such agents, and
a call that cannot run here queues at the least loaded peer that fits (as on an agent
without slots). One that no known agent fits waits in our backlog without holding up
the calls behind it, and fails with ``NoSuitableAgent`` after ``unfit_grace`` seconds
if still no agent that fits is known (``expire_unfit``).
A call that names agents to avoid (a RETRY after it failed there) goes to another
agent when one can take it, and runs on an avoided one only when none can.
A call is never sent back to an agent that delegated it (``Call.visited``), so it
cannot loop; a peer that already held it and was lost is chosen again only by an
agent without slots of its own, when no other will do. The backlog is retried whenever a slot frees or a peer reports free
slots (spill-over).

Work stealing (``_steal``, after every backlog retry): placement pushes, so without
help the end of a bag of tasks waits for calls queued (``prefetch``) at a slow peer
while faster agents sit idle, and an idle agent waits for its next heartbeat to be
given work. So an agent with a free slot and an empty backlog sends a ``Reclaim`` to:

* a peer holding calls we delegated, when that peer reported a queue (its last
  ``queued``, plus what we sent since beyond its free slots) and a call waiting there
  would end later than here: there at best first in its queue, ``(1/cpus + 1)/speed``
  task times; here ``1/speed`` on our free slot (the placement rule run backwards: a
  call queued at a slow peer while our queue was long comes back once we are idle).
  It lists the newest of our calls there (a holder runs its backlog in order, so those
  start last; no more than it has waiting), slowest peer first, one per free slot
  (calls asked and not back yet count), each call asked once per holder
  (``Pending.asked``), and none whose inputs that peer holds (``Call.inputs``);
* a peer that reported a queue, to give it our load news at once (``free`` minus what
  we ask back elsewhere), so it can pass us queued calls now rather than at the next
  heartbeat; only when we have more free slots than it last heard of
  (``PeerSlots.told``: heartbeats carry both ends' loads, a Result we send carries
  ours), i.e. when a slot of ours frees up. An idle agent stays quiet, and an agent
  kept busy by a peer's calls sends no Reclaim at all: its results are the news.

Who knows whether a call started is the holder, so the holder decides: a call still in
its backlog and asked by that peer loses that requester and goes back with the
existing ``Handback`` (the delegator places it again, without counting an attempt and
not on that holder: usually on its own free slot); anything else (running, finished,
passed on, unknown) is ignored and its result comes as usual. So a Reclaim crossing a
start, or crossing the result, changes nothing; a Handback crossing a result, or a
re-placement after a loss, finds the entry gone or held elsewhere and is dropped; a
call given back while another requester still wants it at the holder may run twice,
and the first result wins as everywhere else. Messages stay cheap: none while our
backlog is non-empty, at most one per peer with a queue when a slot of ours frees,
plus one per call asked back.
Stealing is on with ``prefetch`` (as agents run; ``steal`` overrides): an agent that
lets peers queue its calls also takes them back. Any agent answers a Reclaim.

The ledger: each hop keeps its own entry, so a delegation chain origin -> B -> C is
known piecewise (origin: "at B"; B: "at C, for origin"). Failures are handled by
the hop that sees them, from membership's verdicts:

* a holder is lost (``peer_lost``): its calls are placed again, with
  ``attempt + 1``, never on that peer (bounded by ``max_attempts``), and it is sent a
  ``Cancel`` for each, which a frozen holder reads when it wakes;
* a requester is lost: if the call's origin is alive the holder answers the origin
  directly (``SendTo``), so the far result of a chain whose middle agent died still
  arrives; if the origin itself is lost the call is cancelled everywhere down its
  path (``KillLocal``, ``Cancel``) so it stops using the mesh;
* we learn that we were declared dead (``declared_dead``, a frozen agent waking):
  everyone else re-placed what we held for them or cancelled what we asked of them,
  so calls of our own clients held by peers are placed again, and calls we held for
  peers but had delegated or not started are handed back (``Handback``);
* leaving (``drain``): queued calls go to peers, or back to who sent them.

Exactly once: the first result for a pending entry is delivered to its requesters
and the entry removed; a result may come from any member (the far end of a chain
answering the origin directly). A later result for the same call (a lost peer that
was only slow, a frozen one that woke) finds no entry and is dropped and counted.
Whoever else still holds the call is told to stop (``Cancel``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mesh.messages import Call, Cancel, Handback, Message, Reclaim, Result, evolve


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


@dataclass(frozen=True)
class SendTo:
    """Send ``message`` to the member ``peer_id`` over our own connection to it."""

    peer_id: str
    message: Message


@dataclass(frozen=True)
class KillLocal:
    """Stop the worker running ``call_id`` (nobody wants its result any more)."""

    call_id: str


Action = RunLocal | Forward | Deliver | SendTo | KillLocal


@dataclass
class PeerSlots:
    """What we believe of a peer's capacity."""

    name: str
    cpus: int
    free: int
    rtt: float
    sent: int = 0  # calls we delegated to it since its last report
    queued: int = 0
    speed: float = 1.0  # effective cores per slot (a CPU-capped device: < 1)
    told: int = 0  # our free slots as it last heard them (heartbeats, a Result, a Reclaim)
    memory: int = 0  # bytes it offers to tasks (0: not said)
    labels: frozenset = frozenset()  # its capabilities (task constraints)

    @property
    def est_free(self) -> int:
        return self.free - self.sent


@dataclass(frozen=True)
class Requester:
    """Who wants a call's result: a connection on our ROUTER (``identity``; ``peer`` is
    its node id when it is a member, None for a client), or, with ``direct``, the
    call's origin answered over our own connection to it."""

    identity: bytes
    peer: str | None
    direct: bool = False


@dataclass
class Pending:
    call: Call
    requesters: list[Requester]
    where: str  # "local", "backlog" or a peer id
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    lent: bool = False  # running here, blocked on other tasks, its slot lent
    asked: str | None = None  # the holder we asked to give it back (Reclaim), once per holder
    since: float = 0.0  # when it arrived (for calls no known agent can run)

    @property
    def slots(self) -> int:
        """Worker slots it takes while it runs (``@constraint(cpus=...)``)."""
        needs = self.call.needs
        return needs.cpus if needs is not None else 1

    @property
    def reply_to(self) -> bytes:
        return self.requesters[0].identity

    @property
    def from_peer(self) -> str | None:
        return self.requesters[0].peer

    def peers_asking(self) -> list[str]:
        return [r.peer for r in self.requesters if r.peer is not None]


@dataclass
class Dispatcher:
    """Placement, result routing and the call ledger of one agent. See the module
    docstring."""

    name: str
    cpus: int
    node_id: str = ""
    max_hops: int = 4
    max_attempts: int = 5
    max_pending: int = 100_000
    prefetch: int = 0  # calls a busy peer may queue from us, per slot of its (0: none)
    speed: float = 1.0  # our own effective cores per slot (mesh.cpuquota)
    memory: int = 0  # bytes we offer to tasks (0: not said) (task constraints)
    labels: frozenset = frozenset()  # our capabilities (task constraints)
    unfit_grace: float = 30.0  # s a call that no known agent can run waits for one to join
    steal: bool | None = None  # Reclaim when idle (None: when prefetch > 0, as agents run)
    pending: dict[str, Pending] = field(default_factory=dict)
    peers: dict[str, PeerSlots] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)  # members declared dead or left
    suspected: set[str] = field(default_factory=set)  # members suspected since their last report
    orphans: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # origin -> (call, requester)
    max_orphans: int = 100_000
    _orphaned: int = 0
    backlog: deque[str] = field(default_factory=deque)
    delegated: dict[str, dict[str, None]] = field(default_factory=dict)  # peer -> call ids, oldest first
    queues: dict[str, None] = field(default_factory=dict)  # peers that reported a queue (lazily pruned)
    running: int = 0
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
        entry = Pending(call, [requester], "backlog", since=now)
        if from_peer is not None:
            entry.tried.add(from_peer)
        self.pending[call.call_id] = entry
        if self.backlog:  # first come, first placed
            self.backlog.append(call.call_id)
            return self._retry_backlog()
        return self._place_or_queue(entry)

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

    def peer_alive(self, peer_id: str) -> list[Action]:
        """Membership says the peer is alive (again). If we had cancelled calls because
        we took it for a dead origin, it was not: it may never have learnt that we
        declared it dead (its refutation of a suspicion can overtake our verdict), so
        it still waits for them. Hand them back to whoever sent them to us."""
        self.lost.discard(peer_id)
        acts: list[Action] = []
        for call_id, requester in self.orphans.pop(peer_id, ()):
            if requester not in self.lost:
                acts.append(SendTo(requester, Handback(call_id, "cancelled while its origin seemed dead")))
                self.counters["handed_back"] += 1
        return acts

    def peer_lost(self, peer_id: str) -> list[Action]:
        """A peer died or left: calls it held are placed again; calls it asked for
        are answered to their origin directly, or cancelled if it was the origin."""
        self.peers.pop(peer_id, None)
        self.lost.add(peer_id)
        self.delegated.pop(peer_id, None)
        acts: list[Action] = []
        for entry in list(self.pending.values()):
            if entry.call.call_id not in self.pending:
                continue
            if entry.call.origin == peer_id:
                self._orphan(entry)
                acts += self._cancel(entry, "its origin was lost")
                continue
            if any(r.peer == peer_id for r in entry.requesters):
                entry.requesters = [r for r in entry.requesters if r.peer != peer_id]
                if not entry.requesters:
                    origin = entry.call.origin
                    if origin and origin != self.node_id and origin not in self.lost:
                        entry.requesters.append(Requester(b"", origin, direct=True))
                        self.counters["redirected"] += 1
                    else:
                        entry.requesters = [Requester(peer_id.encode(), peer_id)]
                        self._orphan(entry)
                        acts += self._cancel(entry, "nobody is left to want it")
                        continue
            if entry.where == peer_id:
                # if it was only frozen, it finds this when it wakes and stops its copy
                acts.append(SendTo(peer_id, Cancel(entry.call.call_id, "re-placed: you were lost")))
                acts += self._replace(entry, peer_id)
        return acts + self._retry_backlog()

    def declared_dead(self) -> list[Action]:
        """Membership tells us that others declared us dead (we were frozen, or cut
        off): they re-placed what we held for them and cancelled what we asked of them.
        Place our own clients' calls held by peers again; hand back to peers what we
        held for them but had not started here."""
        acts: list[Action] = []
        for entry in list(self.pending.values()):
            if entry.where == "local":
                continue  # its result still goes up; duplicates are dropped there
            asking = entry.peers_asking()
            if not asking or any(r.direct for r in entry.requesters):
                if entry.where not in ("local", "backlog"):
                    holder = entry.where  # it may still hold it, for a chain that lost it
                    if holder not in self.lost:
                        acts.append(SendTo(holder, Cancel(entry.call.call_id, "re-placed: we were "
                                                          "declared dead")))
                    acts += self._replace(entry, holder)
                continue
            acts += self._give_back(entry, "declared dead while holding it")
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

    def peer_suspect(self, peer_id: str) -> list[Action]:
        """A peer stopped answering for a while: send it nothing new until it reports
        again (its calls stay with it until it is declared dead)."""
        self.peers.pop(peer_id, None)
        self.suspected.add(peer_id)
        return []

    def forward_failed(self, call_id: str, peer_id: str) -> list[Action]:
        """The transport could not send a delegated call: place it elsewhere."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != peer_id:
            return []
        self._undelegate(entry)
        entry.tried.add(peer_id)
        entry.where = "backlog"
        return self._place_or_queue(entry)

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

    def _place(self, entry: Pending) -> list[Action]:
        call = entry.call
        avoid_here = bool(call.avoid) and self.name in call.avoid  # an attempt failed here
        fits_here = call.needs is None or self._fits_here(call)
        slots = entry.slots
        if call.inputs and call.hops < self.max_hops:  # where its data is, if it can start there
            holder = self._data_holder(entry)
            if holder is not None and holder != self.node_id:
                return self._forward(entry, holder)
        if self.free >= slots and fits_here and not avoid_here:
            return self._run_local(entry)
        if call.hops < self.max_hops:
            peer = self._pick_peer(entry, need_free=True)
            if peer is None and (self.cpus == 0 or avoid_here or not fits_here):
                # (a call that cannot run here queues where it can, as on an agent without slots)
                peer = self._pick_peer(entry, need_free=False)
            elif peer is None:
                peer = self._pick_queue(entry)
            if peer is not None:
                return self._forward(entry, peer)
        if self.free >= slots and fits_here:  # failed here before, but nobody else can take it
            return self._run_local(entry)
        if self.cpus == 0 and call.hops >= self.max_hops:
            return self._fail(entry, "NoCapacity", f"no agent with a free slot within {self.max_hops} hops")
        if not fits_here and call.hops >= self.max_hops:
            return self._fail(entry, "NoSuitableAgent", f"no agent within {self.max_hops} hops "
                                                        f"offers {_describe(call.needs)}")
        entry.where = "backlog"
        return []

    def _fits_here(self, call: Call) -> bool:
        return _fits(call.needs, self.cpus, self.memory, self.labels)

    def expire_unfit(self, now: float) -> list[Action]:
        """Fail the calls waiting here for ``unfit_grace`` seconds that no known agent
        (this one, or a live peer) can run: their constraints ask for labels, memory or
        slots nobody offers (a typo, or a device that never came)."""
        acts: list[Action] = []
        for call_id in list(self.backlog):
            entry = self.pending.get(call_id)
            if (entry is None or entry.where != "backlog" or entry.call.needs is None
                    or now - entry.since < self.unfit_grace or self._fits_here(entry.call)):
                continue
            needs = entry.call.needs
            if any(_fits(needs, p.cpus, p.memory, p.labels) for pid, p in self.peers.items()
                   if pid not in self.lost):
                continue
            self.backlog.remove(call_id)
            acts += self._fail(entry, "NoSuitableAgent", f"no agent in the mesh offers "
                                                         f"{_describe(needs)} (waited {self.unfit_grace:.0f} s)")
        return acts

    def _data_holder(self, entry: Pending) -> str | None:
        """The agent holding most of the call's input bytes (``Call.inputs``: task
        outputs kept where they were made, ``mesh.objects``), if it holds at least half
        of them and can start the call now (a free slot, or room in the queue it keeps
        for us): running there moves no data. Else None: placed as any call, and the
        inputs are fetched from their holders (Ray's locality-aware leasing; a holder
        that is busy is not waited for, as the transfer is cheaper than a queue)."""
        inputs = entry.call.inputs
        best = max(inputs, key=lambda h: h.nbytes)
        if 2 * best.nbytes < sum(h.nbytes for h in inputs):
            return None
        needs = entry.call.needs
        if best.node == self.node_id:
            fits = needs is None or self._fits_here(entry.call)
            return best.node if (self.free >= entry.slots and fits
                                 and self.name not in entry.call.avoid) else None
        p = self.peers.get(best.node)
        if (p is None or p.cpus <= 0 or best.node in self.suspected or best.node in self.lost
                or best.node in entry.call.visited or best.node in entry.peers_asking()
                or best.node in entry.tried or p.name in entry.call.avoid
                or (needs is not None and not _fits(needs, p.cpus, p.memory, p.labels))):
            return None
        if p.est_free >= entry.slots or p.queued + max(-p.est_free, 0) < self.prefetch * p.cpus:
            return best.node
        return None

    def _local_end(self) -> float:
        """When a call queued here now would finish, in task times of a full-speed slot
        (every slot busy: it waits for the backlog and for a running call)."""
        return ((len(self.backlog) + 1) / max(self.cpus, 1) + 1) / self.speed

    def _pick_peer(self, entry: Pending, need_free: bool) -> str | None:
        """A peer with a free slot (``need_free``) where the call finishes before it
        would here (a slow slot, e.g. a CPU-capped device, only takes work when our
        queue is long enough); or, for an agent that cannot run it, the least loaded."""
        best, best_key = None, None
        asking = entry.peers_asking()
        needs, slots = entry.call.needs, entry.slots
        can_here = self.cpus > 0 and (needs is None or self._fits_here(entry.call))
        here = self._local_end() if can_here and self.name not in entry.call.avoid else None
        for peer_id, p in self.peers.items():
            if (peer_id in entry.call.visited or peer_id in asking or p.cpus <= 0
                    or (peer_id in entry.tried and can_here)):
                continue
            if needs is not None and not _fits(needs, p.cpus, p.memory, p.labels):
                continue
            avoided = p.name in entry.call.avoid
            if avoided and self.name in entry.call.avoid:
                continue  # we look elsewhere only for agents not yet tried
            if need_free:
                if p.est_free < slots or (here is not None and 1 / p.speed > here):
                    continue
                key = (avoided, peer_id in entry.tried, 1 / p.speed, -p.est_free, p.rtt)
            else:
                key = (avoided, peer_id in entry.tried, (p.cpus - p.est_free) / p.cpus, p.rtt)
            if best_key is None or key < best_key:
                best, best_key = peer_id, key
        return best

    def _pick_queue(self, entry: Pending) -> str | None:
        """Every slot is busy, here and (as far as we know) at every peer: queue the call
        where it will start soonest. Our wait is our backlog per slot; a peer's is the
        calls queued there per slot (what it reported, plus what we sent since), and a
        peer queues at most ``prefetch`` calls per slot from us. Results carry their
        sender's load, so this is self-clocked: each result frees room for the next."""
        ours = self._local_end()
        best, best_key = None, None
        asking = entry.peers_asking()
        needs = entry.call.needs
        for peer_id, p in self.peers.items():
            if (peer_id in entry.call.visited or peer_id in asking or p.cpus <= 0
                    or peer_id in entry.tried or p.name in entry.call.avoid):
                continue
            if needs is not None and not _fits(needs, p.cpus, p.memory, p.labels):
                continue
            waiting = p.queued + max(-p.est_free, 0)
            if waiting >= self.prefetch * p.cpus:
                continue
            theirs = ((waiting + 1) / p.cpus + 1) / p.speed
            key = (peer_id in entry.tried, theirs, p.rtt)
            if theirs < ours and (best_key is None or key < best_key):
                best, best_key = peer_id, key
        return best

    def _run_local(self, entry: Pending) -> list[Action]:
        entry.where = "local"
        self.running += entry.slots
        return [RunLocal(entry.call)]

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

    def _replace(self, entry: Pending, holder: str) -> list[Action]:
        """The holder lost the call: place it again (attempt + 1), not on that holder."""
        self._undelegate(entry)
        entry.tried.add(holder)
        entry.attempts += 1
        if entry.attempts > self.max_attempts:
            return self._fail(entry, "PeerLost", f"lost {entry.attempts} holders of this call")
        self.counters["reassigned"] += 1
        entry.where = "backlog"
        return self._place_or_queue(entry)

    def _retry_backlog(self) -> list[Action]:
        acts: list[Action] = []
        kept: list[str] = []
        for _ in range(len(self.backlog)):
            call_id = self.backlog.popleft()
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "backlog":
                continue
            acts += self._place(entry)
            if entry.where == "backlog" and call_id in self.pending:  # (not failed by _place)
                if entry.call.needs is not None and not self._fits_here(entry.call):
                    kept.append(call_id)  # waits for an agent that can run it; not a queue head
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

    def _steal(self) -> list[Action]:
        """A slot is free and nothing waits here: ask for work (module docstring, "Work
        stealing"). Calls we delegated that probably wait at a peer (its newest, as many
        as it has waiting) are asked back, slowest peer first, one per free slot (counting
        those asked already and not back yet), each once per holder. Peers that reported
        a queue get our load news when we have more free slots than they heard of. One
        ``Reclaim`` per peer."""
        if self.backlog or not (self.delegated or self.queues) or self.draining or not (
                self.prefetch > 0 if self.steal is None else self.steal):
            return []
        free = self.free
        if free <= 0:
            return []
        wanted: list[tuple[float, str, list[str]]] = []
        coming = 0  # asked back already, not here yet (or started there after all)
        soonest = 1 / self.speed  # the soonest a call could end here
        for peer_id, calls in self.delegated.items():
            p = self.peers.get(peer_id)
            if p is None:
                continue
            waiting = p.queued + max(-p.est_free, 0)
            theirs = (1 / max(p.cpus, 1) + 1) / p.speed  # first in its queue, at best
            if waiting <= 0 or theirs <= soonest:
                continue
            ids: list[str] = []
            seen = 0
            for call_id in reversed(calls):  # newest first: the last to start there
                entry = self.pending.get(call_id)
                if entry is None or entry.where != peer_id:
                    continue
                seen += 1
                if entry.asked == peer_id:
                    coming += 1
                elif self.name not in entry.call.avoid and not self._inputs_at(entry.call, peer_id):
                    ids.append(call_id)
                if seen >= waiting:
                    break  # older ones run there already
            if ids:
                wanted.append((theirs, peer_id, ids))
        asked: dict[str, list[str]] = {}
        k = coming
        if len(wanted) > 1:
            wanted.sort(key=lambda w: -w[0])  # slowest first
        for theirs, peer_id, ids in wanted:
            take = []
            for call_id in ids:
                if k >= free or self._end_here(k, free) >= theirs:
                    break
                take.append(call_id)
                k += 1
            if take:
                asked[peer_id] = take
        budget = free - (k - coming)
        acts: list[Action] = []
        total = free - budget
        for peer_id in [*asked, *(q for q in self.queues if q not in asked)]:
            p = self.peers.get(peer_id)
            ids = asked.get(peer_id)
            if ids is None:  # news only: to a peer with a queue that does not know
                if p is None or p.queued <= 0:
                    del self.queues[peer_id]
                    continue
                if free - total <= max(p.told, 0):  # it knows: heartbeats carry our load
                    continue
                ids = []
            left = max(free - total + len(ids), 0)  # what it gives back takes our slots first
            for call_id in ids:
                self.pending[call_id].asked = peer_id
            p.told = left
            acts.append(SendTo(peer_id, Reclaim(ids, left, self.queued)))
        if acts:
            self.counters["reclaims_sent"] += len(acts)
            self.counters["reclaim_asked"] += total
        return acts

    def _end_here(self, k: int, free: int) -> float:
        """When the ``k``-th call taken back (from 0) would end here, nothing else waiting
        (``_local_end`` for a backlog of those before it beyond our free slots)."""
        if k < free:
            return 1 / self.speed
        return ((k - free + 1) / max(self.cpus, 1) + 1) / self.speed

    def _inputs_at(self, call: Call, peer_id: str) -> bool:
        """More of the call's inputs are held by that peer than here: leave it there."""
        inputs = getattr(call, "inputs", ())
        if not inputs:
            return False
        there = sum(h.nbytes for h in inputs if h.node == peer_id)
        return there > sum(h.nbytes for h in inputs if h.node == self.node_id)

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
                self.running = max(self.running - 1, 0)
            return [KillLocal(entry.call.call_id)]  # (the caller retries the backlog)
        if entry.where != "backlog" and entry.where not in self.lost:
            self._undelegate(entry)
            return [SendTo(entry.where, Cancel(entry.call.call_id, reason))]
        return []  # backlog: its id is skipped when the backlog reaches it

    def _orphan(self, entry: Pending) -> None:
        """Remember a call cancelled for its lost origin, in case the origin comes back
        (bounded: the oldest are forgotten)."""
        if not entry.call.origin:
            return
        asked = self.orphans.setdefault(entry.call.origin, [])
        new = [(entry.call.call_id, r.peer) for r in entry.requesters if r.peer is not None]
        asked += new
        self._orphaned += len(new)
        while self._orphaned > self.max_orphans and self.orphans:
            oldest = next(iter(self.orphans))
            self._orphaned -= len(self.orphans.pop(oldest))

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


def _fits(needs, cpus: int, memory: int, labels) -> bool:
    """Whether an agent with ``cpus`` slots, ``memory`` bytes offered (0: not said) and
    ``labels`` can run a call that ``needs`` (``messages.Needs``; None: anything can)."""
    if needs is None:
        return True
    if cpus < needs.cpus or (needs.memory and memory and memory < needs.memory):
        return False
    return all(label in labels for label in needs.labels)


def _describe(needs) -> str:
    parts = [f"{needs.cpus} slot(s)"]
    if needs.memory:
        parts.append(f"{needs.memory / (1 << 30):.2f} GiB of memory")
    if needs.labels:
        parts.append("labels " + ", ".join(needs.labels))
    return ", ".join(parts)
