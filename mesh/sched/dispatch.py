"""Dispatcher: where each call runs, and where its result goes (the call ledger).

Theory of operation
-------------------
A pure state machine per agent; the agent feeds it events and carries out the
returned actions (``RunLocal``, ``Forward``, ``Deliver``, ``SendTo``, ``KillLocal``).

The guarantee: every call the agent accepts ends, for its caller, in exactly one
outcome (its value, or an error saying why), within a bound that depends only on the
call's own time to run (waiting for a slot, and running) and on the failure-detection
bound, whatever frames are lost, refused or reordered on connections that stay up:
each frame of the call lost on the way costs at most two lease periods (``Leases``:
1.2 s with the default profile), each lease question or answer lost one more, each
holder lost the detection bound (then the call runs again elsewhere); the losses it
can suffer are bounded (``max_attempts``, ``LOSSES_PER_ATTEMPT``), after which it fails
with ``PeerLost``. At worst a call runs more than once; its outcome is never lost nor
doubled. The ledger below, membership's verdicts and the leases make it so.

Every call the agent accepts (from a client, or delegated by a peer) becomes a
``Pending`` entry until its result has been delivered. An entry is in exactly one
place: ``local`` (running in a worker slot), ``backlog`` (waiting), or a peer's node
id (delegated to it), and has one or more *requesters*: the client or peer
connections that asked for it (a call re-placed by its origin may reach an agent
that still holds it from an earlier path: the new requester joins the entry, unless
the call came back through the very peer we gave it to, i.e. its ``visited`` names our
holder: joining would close a loop of holders each waiting for the next, so the
sender gets a ``Handback`` and places its copy elsewhere).

Its parts, each owning its state: ``local`` (``LocalSlots``: our slots, how many are
taken), ``peers`` (``mesh.sched.peers.Peers``: what we believe of each peer, and the one
filter of peers a call may go to), ``placement`` (``mesh.sched.placement.Placement``:
the policy that reads both and decides where a call goes, and what to steal back) and
``leases`` (``mesh.sched.leases.Leases``: our calls at each peer, oldest first, and when
each was last confirmed). The ledger itself owns ``pending`` (the entries), ``backlog``
(ids of waiting calls, in order) and ``clients`` (when each client connection was last
heard from), and carries out what placement decides.

The ledger: each hop keeps its own entry, so a delegation chain origin -> B -> C is
known piecewise (origin: "at B"; B: "at C, for origin"). Failures are handled by the
hop that sees them, from membership's verdicts:

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
* a peer is only suspected (``peer_suspect``): nothing new goes to it until it
  reports again; its calls stay with it until it is declared dead. When it reports
  again (``peer_load``), what we sent it while it was out of reach, or its results, may
  have been lost with the link: it is asked at once which of our calls it holds (a
  lease question, below), and only those it does not hold are placed again. (It was
  sent all of them again, and ran again those it had finished when its heartbeat
  overtook its result: the heartbeat and the result travel different connections.);
* a peer we cancelled calls for, as a lost origin, is alive after all (``peer_alive``):
  those calls (``Peers.orphans``, bounded) are handed back to the peers that sent
  them, those not lost;
* membership forgot a dead or left member (``peer_forgotten``, ``forget_after`` after
  its death): it cannot come back under that id, so what we kept about it goes.
Leaving (``drain``): queued calls go to peers, or back to who sent them.

Order: the backlog is first come, first placed, here and at peers. One exception: while
a call running here is blocked on nested calls (it lent its slot: ``lend``), the room
here goes to the newest calls waiting (``_retry_backlog``: depth first, so a recursive
graph keeps few calls blocked, each of which holds a worker process). A call the agent
could not start yet for want of a worker process keeps its slot (``mesh.agent.pool``):
the backlog is not handed to the pool, it stays here, for peers and for stealing.

Leases (``mesh.sched.leases``): membership sees a peer die, not a frame lost on a
connection that stays up (a send refused at the high-water mark, what sits in a ZeroMQ
pipe when its TCP connection resets, a reply our ROUTER cannot route); a call or a
result lost that way was waited for for ever. So the hop that handed a call on keeps a
lease on it: at each lease round (``tick``, every ``Leases.period``), each peer is asked
about our calls it has held for a whole period without news (``Holds``, in the batch
that carries that turn's probes to it); it answers from its ledger (``holding``: held,
an entry with our connection among its requesters; else unknown). What it holds is
confirmed (``held``); what it does not hold was lost on the way there, or its result on
the way back: it is placed again at once (``_lost_on_the_way``), without counting an
attempt, but every ``LOSSES_PER_ATTEMPT``-th loss of one call counts as one, so a link
that loses everything cannot keep a call going for ever. A send the transport refused
(``forward_failed``) is such a loss too. An unknown is believed only for a call we
asked about: one handed to the peer again since is on its way behind the answer.
Order: questions and answers travel our DEALER to the peer's ROUTER and back, the
connection our calls to it and its results to us take: FIFO, so a result the peer sent
before it answered "unknown" is ahead of the answer, and we have it (the answer then
finds no entry). Three paths break that order, each at worst into a second execution,
never a lost or doubled outcome, since the first result wins and the other copy is
cancelled: a connection that reset (a call sent before it may be read after a question
sent after it: the peer says unknown, we place it again, and it runs the late copy
too); a result the peer's ROUTER could not route, which goes over its own DEALER to our
ROUTER (another connection: it may come after the unknown); and a Handback, which
takes that path too (the unknown places the call first, the Handback then finds it
elsewhere and is dropped).
Our own clients are the same, the other way round: a client keeps a lease on each
call it sent us (``mesh.client``: ``Leases``' client side) and asks with the same
``Holds``, answered by ``holding`` for its connection; it sends again, with the same call
id, what we do not hold (we run it anew). A client with calls in flight asks at least
every two of its periods, so one not heard from (``heard``) for ``client_silence`` is
gone (its program died, or its connection did): its calls are cancelled, as they are
at once when its local connection ends (``client_gone``). A client's ``Cancel`` names its
session (``owner``), so it also stops the calls it made over an earlier connection.
Why not as Ray or Dask do: Ray's owner of a task (the worker that submitted it) is the
one that resubmits it, as here the hop that handed a call on is the only one that
places it again; but its calls are gRPC requests that fail loudly when their channel
does, so a lost message is an error, not a silence. Dask's scheduler keeps, per worker,
what it processes and who has what, and reconciles them when a worker's comm closes,
by removing the worker and rescheduling. ZeroMQ hides both (a pipe reset is silent, a
refused send a counter), and removing a live member for a lost frame would turn every
drop into a membership fault. So here reconciliation is per call, between the two hops
that share it, in the spirit of Dask's who_has (the delegator asks what its holder
has), with Ray's rule of who re-places, and the peer stays a member.

Exactly once: the first result for a pending entry is delivered to its requesters
and the entry removed; a result may come from any member (the far end of a chain
answering the origin directly). A later result for the same call (a lost peer that
was only slow, a frozen one that woke, a copy placed again after a lease loss) finds
no entry and is dropped and counted. Whoever else still holds the call is told to stop
(``Cancel``).

Bounds: nothing is kept about a call once it has ended here: ``pending`` holds at most
``max_pending`` entries (more are refused, ``Overloaded``), and the ``backlog`` holds their
ids, plus ids of calls that ended while they waited (skipped when reached; when they
outnumber the pending calls, the backlog is compacted); ``leases`` holds calls of
``pending``, by the peer holding them; ``clients`` the clients heard from within
``client_silence`` (and a round). What is kept about a peer goes when it is lost, or
forgotten by membership (``mesh.sched.peers``).
"""

from __future__ import annotations

from collections import deque
from math import ceil

from mesh.sched.actions import Action, Deliver, Forward, KillLocal, RunLocal, SendTo
from mesh.sched.leases import CLIENT_SILENCE, LOSSES_PER_ATTEMPT, Leases
from mesh.sched.peers import Peers
from mesh.sched.placement import BEHIND, DELEGATE, RUN, WAIT, Placement, describe
from mesh.sched.records import (
    MAX_COUNT,
    MAX_MEMORY,
    LocalSlots,
    PeerSlots,
    Pending,
    Requester,
    count,
)
from mesh.wire.messages import Call, Cancel, Handback, Held, Holds, Reclaim, Result, evolve

COUNTERS = (
    "accepted", "done", "failed", "forwarded", "duplicate_results", "joined", "lent",
    "reclaimed", "rejected", "reassigned", "redirected", "cancelled", "handed_back",
    "lease_questions",  # Holds sent (leases: which of our calls do you still hold?)
    "lease_lost",  # calls a holder did not hold (lost on the way, or their result was)
    "client_gone",  # calls cancelled because their client left or went silent
    "reclaims_sent",  # Reclaim messages (work stealing)
    "reclaim_asked",  # calls asked back from a peer
    "reclaim_got",  # calls a peer gave back unstarted
    "reclaim_given",  # calls given back to a peer that asked
    "behind",  # calls given to a busy worker to wait there (depth > 1)
    "unstarted",  # calls a worker gave back without starting them
)


class Dispatcher:
    """Placement, result routing and the call ledger of one agent. See the module
    docstring."""

    def __init__(self, name: str, cpus: int, node_id: str = "", *, max_hops: int = 4,
                 max_attempts: int = 5, max_pending: int = 100_000, prefetch: int = 0,
                 speed: float = 1.0, memory: int = 0, labels: frozenset = frozenset(),
                 unfit_grace: float = 30.0, steal: bool | None = None,
                 neighbours: frozenset | None = None, max_orphans: int = 100_000,
                 depth: int = 1, lease: float = 1.2, client_silence: float = CLIENT_SILENCE) -> None:
        """``prefetch``: calls a busy peer may queue from us, per slot of its (0: none);
        ``speed``: our own effective cores per slot (``mesh.agent.cpuquota``); ``memory``,
        ``labels``: what we offer to tasks (task constraints; memory 0: not said);
        ``unfit_grace``: seconds a call that no known agent can run waits for one to
        join; ``steal``: Reclaim when idle (None: when ``prefetch`` > 0, as agents run);
        ``neighbours``: tree neighbours to delegate to (None: any peer); ``depth``: calls
        a slot may hold (one running, the rest waiting at its worker); ``lease``: the lease
        period, s (``mesh.sched.leases``: the agent gives ``PERIODS`` membership periods);
        ``client_silence``: s after which the calls of a client not heard from are
        cancelled."""
        self.name = name
        self.node_id = node_id
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.unfit_grace = unfit_grace
        self.local = LocalSlots(name, node_id, cpus, speed, memory, labels, depth)
        self.peers = Peers(neighbours, max_orphans)
        self.placement = Placement(self.local, self.peers, max_hops=max_hops, prefetch=prefetch,
                                   steal=steal)
        self.pending: dict[str, Pending] = {}
        self.backlog: deque[str] = deque()
        self.leases = Leases(lease)  # our calls at each peer, oldest first (and their news)
        self.clients: dict[bytes, int] = {}  # client connection -> lease round it was last heard in
        self.client_rounds = ceil(client_silence / lease) + 1  # (rounds of silence: at least that long)
        self.draining = False
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    # ------------------------------------------------------------------ what the agent reads and sets

    @property
    def cpus(self) -> int:
        return self.local.cpus

    @property
    def running(self) -> int:
        return self.local.running

    @property
    def free(self) -> int:
        return self.local.free

    @property
    def queued(self) -> int:
        return len(self.backlog)

    @property
    def speed(self) -> float:
        return self.local.speed

    @speed.setter
    def speed(self, speed: float) -> None:
        self.local.speed = speed

    @property
    def depth(self) -> int:
        return self.local.depth

    @depth.setter
    def depth(self, depth: int) -> None:
        self.local.depth = depth

    @property
    def neighbours(self) -> frozenset | None:
        return self.peers.neighbours

    @neighbours.setter
    def neighbours(self, neighbours: frozenset | None) -> None:
        self.peers.neighbours = neighbours

    def idle(self) -> bool:
        return not self.pending

    # ------------------------------------------------------------------ events: calls

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

    def unstarted(self, call_ids: list[str]) -> list[Action]:
        """Calls given to a worker came back unstarted: they waited there behind a call
        that turned out long or that blocked on other tasks, or their worker died before
        reaching them. They go back to the head of the backlog, in their order, and are
        placed again."""
        back = []
        local = self.local
        for call_id in call_ids:
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "local" or entry.lent:
                continue
            local.running = max(local.running - entry.slots, 0)
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
        local = self.local
        if entry is None or not entry.lent:  # a lent call already gave its slot back
            local.running = max(local.running - (entry.slots if entry is not None else 1), 0)
        else:
            local.blocked.discard(result.call_id)
        acts = self._finish(result, holder="local")
        return acts + self._retry_backlog()

    def remote_result(self, result: Result, peer_id: str) -> list[Action]:
        """A member sent the result of a call: the peer we delegated it to, or the far
        end of a chain whose middle was lost (answering us, the origin, directly).
        A result carries its sender's load: fresh news that it can take more."""
        acts = self._finish(result, holder=peer_id)
        if result.free >= 0 and self.peers.news(peer_id, result.free, result.queued):
            acts += self._retry_backlog()
        return acts

    def cancel(self, call_id: str, identity: bytes, owner: str = "") -> list[Action]:
        """The requester on ``identity`` no longer wants the call (a client whose task
        timed out, or the agent that delegated it to us). A client names its session
        (``owner``): then it also stops the call it asked for over an earlier connection
        of its (it reconnected, and its calls of then failed on its side)."""
        entry = self.pending.get(call_id)
        if entry is None:
            return []
        mine = owner and owner == entry.call.owner
        entry.requesters = [r for r in entry.requesters if r.direct or (
            r.identity != identity and not (mine and r.peer is None))]
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
            peer = self.peers.slots.get(peer_id)
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
        if free >= 0:  # what it gets back takes its slots first
            self.peers.news(peer_id, free, queued, sent=len(acts))
        return acts + self._retry_backlog()

    def lend(self, call_id: str, lent: bool) -> list[Action]:
        """A local call blocks waiting for other tasks (``lent``): its slot is free
        meanwhile, so the tasks it waits for can run here (no deadlock on recursive
        graphs); or it resumes and takes a slot again (possibly over ``cpus`` for a
        while: the call was already running). While a call here is blocked, the room
        here goes to the newest calls waiting (``_retry_backlog``)."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != "local" or entry.lent == lent:
            return []
        entry.lent = lent
        local = self.local
        local.running += -entry.slots if lent else entry.slots
        self.counters["lent" if lent else "reclaimed"] += 1
        if not lent:
            local.blocked.discard(call_id)
            return []
        local.blocked.add(call_id)
        return self._retry_backlog()

    def expire_unfit(self, now: float) -> list[Action]:
        """Fail the calls waiting here for ``unfit_grace`` seconds that no known agent
        (this one, or a live peer) can run: their constraints ask for labels, memory or
        slots nobody offers (a typo, or a device that never came)."""
        acts: list[Action] = []
        for call_id in list(self.backlog):
            entry = self.pending.get(call_id)
            if (entry is None or entry.where != "backlog" or entry.call.needs is None
                    or now - entry.since < self.unfit_grace or self.local.fits(entry.call.needs)):
                continue
            needs = entry.call.needs
            if self.peers.any_fits(needs):
                continue
            self.backlog.remove(call_id)
            acts += self._fail(entry, "NoSuitableAgent", f"no agent in the mesh offers "
                                                         f"{describe(needs)} (waited {self.unfit_grace:.0f} s)")
        return acts

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
        self.local.cpus = max(cpus, 0)
        return self._retry_backlog()

    def drain(self) -> list[Action]:
        """Leaving: accept no new client calls, run nothing new here, hand the backlog
        to peers, or back to the peers that sent it. Calls already running finish."""
        self.draining = True
        self.local.cpus = 0
        acts = self._retry_backlog()
        for call_id in list(self.backlog):
            entry = self.pending.get(call_id)
            if entry is not None and entry.where == "backlog" and entry.peers_asking():
                acts += self._give_back(entry, "the agent is leaving")
        return acts

    # ------------------------------------------------------------------ events: peers (membership)

    def peer_load(self, peer_id: str, name: str, cpus: int, free: int, rtt: float | None,
                  queued: int = 0, speed: float = 1.0, memory: int = 0,
                  labels=()) -> list[Action]:
        """A heartbeat from a live peer told us its capacity (and what it offers)."""
        if not (0 <= cpus <= MAX_COUNT and 0 <= free <= MAX_COUNT and 0 <= queued <= MAX_COUNT
                and 0 <= memory <= MAX_MEMORY):  # (a peer's word, within bounds: ``count``)
            cpus, free, queued, memory = count(cpus), count(free), count(queued), count(memory, MAX_MEMORY)
        was_suspected = self.peers.report(peer_id, PeerSlots(
            name, cpus, free, rtt if rtt is not None else 1.0, queued=queued,
            speed=min(max(speed, 0.01), 1.0), told=self.local.free,  # (the heartbeats carry both loads)
            memory=memory, labels=frozenset(labels)))
        acts: list[Action] = []
        if was_suspected:
            # it answers again: what we sent it while it was out of reach may have been
            # lost with the link, or its results were. Ask it which it still holds (now,
            # not at the next round): ``held`` places again only what it does not, so a
            # call whose result it sent and we got does not run again
            acts = [SendTo(peer_id, Holds(ids)) for ids in self.leases.everything(peer_id)]
            self.counters["lease_questions"] += len(acts)
        return acts + self._retry_backlog()

    def peer_suspect(self, peer_id: str) -> list[Action]:
        """A peer stopped answering for a while: send it nothing new until it reports
        again (its calls stay with it until it is declared dead)."""
        self.peers.suspect(peer_id)
        return []

    def peer_forgotten(self, peer_id: str) -> list[Action]:
        """Membership forgot a dead or left member: it will not come back under this
        id (a node that returns after that is new to everyone), so nothing of it is kept."""
        self.peers.forget(peer_id)
        return []

    def peer_alive(self, peer_id: str) -> list[Action]:
        """Membership says the peer is alive (again). If we had cancelled calls because
        we took it for a dead origin, it was not: it may never have learnt that we
        declared it dead (its refutation of a suspicion can overtake our verdict), so
        it still waits for them. Hand them back to whoever sent them to us."""
        acts: list[Action] = [SendTo(requester, Handback(call_id, "cancelled while its origin seemed dead"))
                              for call_id, requester in self.peers.alive(peer_id)]
        self.counters["handed_back"] += len(acts)
        return acts

    def peer_lost(self, peer_id: str) -> list[Action]:
        """A peer died or left: calls it held are placed again; calls it asked for
        are answered to their origin directly, or cancelled if it was the origin."""
        self.peers.lose(peer_id)  # (what it held is placed again below, not resent)
        self.leases.drop(peer_id)
        lost = self.peers.lost
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
                    if origin and origin != self.node_id and origin not in lost:
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
        held for them but had not started here.

        What we believe of each peer is stale (we may wake just before a partition heals:
        what we send a peer across it now is lost, and it will not be suspected
        afterwards). So each peer is suspected until it reports again: nothing new goes
        to it meanwhile, and what we sent it since is sent again then (``peer_load``)."""
        self.peers.suspect_all()
        lost = self.peers.lost
        acts: list[Action] = []
        for entry in list(self.pending.values()):
            if entry.where == "local":
                continue  # its result still goes up; duplicates are dropped there
            asking = entry.peers_asking()
            if not asking or any(r.direct for r in entry.requesters):
                if entry.where not in ("local", "backlog"):
                    holder = entry.where  # it may still hold it, for a chain that lost it
                    if holder not in lost:
                        acts.append(SendTo(holder, Cancel(entry.call.call_id, "re-placed: we were "
                                                          "declared dead")))
                    acts += self._replace(entry, holder)
                continue
            acts += self._give_back(entry, "declared dead while holding it")
        return acts + self._retry_backlog()

    def forward_failed(self, call_id: str, peer_id: str) -> list[Action]:
        """The transport could not send a delegated call (no connection, or a full
        queue): place it elsewhere (a loss on the way: ``_lost_on_the_way``)."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != peer_id:
            return []
        return self._lost_on_the_way(entry, peer_id)

    # ------------------------------------------------------------------ events: leases

    def tick(self, now: float) -> list[Action]:
        """The agent's timer (``now``: monotonic seconds; at least once a lease period,
        ``Leases.period``). At each new round: ask each peer about our calls it has held
        for a whole period without news (``Holds``), and cancel the calls of clients not
        heard from for ``client_silence``."""
        if not self.leases.tick(now):
            return []
        acts: list[Action] = [SendTo(peer_id, Holds(ids)) for peer_id, ids in self.leases.due()]
        self.counters["lease_questions"] += len(acts)
        return acts + self._expire_clients()

    def holding(self, call_ids: list[str], identity: bytes) -> Held:
        """A lease question (``Holds``) from the connection ``identity`` (a member's DEALER,
        or a client's): which of ``call_ids`` we hold for it. Held: an entry with that
        connection among its requesters (its outcome will go there); the rest unknown."""
        held, unknown = [], []
        pending = self.pending
        for call_id in call_ids:
            entry = pending.get(call_id)
            if entry is not None and any(r.identity == identity and not r.direct
                                         for r in entry.requesters):
                held.append(call_id)
            else:
                unknown.append(call_id)
        return Held(held, unknown)

    def held(self, held: list[str], unknown: list[str], peer_id: str) -> list[Action]:
        """A peer answered our lease question (``Held``): what it holds is confirmed; what
        it does not hold, among calls we asked it about (without news for a whole
        period: a call handed to it again since, or confirmed by a later answer, is not
        taken for lost on an older answer), was lost on the way, or its result was:
        placed again at once."""
        leases = self.leases
        leases.confirm(peer_id, held)
        acts: list[Action] = []
        for call_id in unknown:
            entry = self.pending.get(call_id)
            if entry is not None and entry.where == peer_id and leases.asked(peer_id, call_id):
                acts += self._lost_on_the_way(entry, peer_id)
        return acts

    def heard(self, identity: bytes) -> None:
        """A frame came from the connection ``identity`` (a client's; or a member's, which
        the agent may not know yet: its calls are then a client's): its calls stay."""
        self.clients[identity] = self.leases.round

    def client_gone(self, identity: bytes) -> list[Action]:
        """The client's connection ended (a local connection closed): nobody will read
        its results, so its calls stop (those other requesters still want stay)."""
        self.clients.pop(identity, None)
        return self._drop_clients({identity}, "its client left")


    # ------------------------------------------------------------------ internals: placing

    def _nested_here(self) -> bool:
        """Whether a call running here is blocked on other tasks (its slot lent); ids of
        calls that ended another way (the agent failed them as it left) go on the way."""
        blocked, pending = self.local.blocked, self.pending
        for call_id in list(blocked):
            entry = pending.get(call_id)
            if entry is None or not entry.lent or entry.where != "local":
                blocked.discard(call_id)
        return bool(blocked)

    def _newest_first(self, n: int) -> None:
        """Move the ``n`` newest calls waiting in the backlog to its head, newest first
        (depth first: see ``_retry_backlog``); ids of calls that ended while they waited
        are dropped on the way."""
        backlog, pending = self.backlog, self.pending
        newest: list[str] = []
        while backlog and len(newest) < n:
            call_id = backlog.pop()
            entry = pending.get(call_id)
            if entry is not None and entry.where == "backlog":
                newest.append(call_id)
        backlog.extendleft(reversed(newest))

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
        local = self.local
        return local.free <= 0 and not self.peers.slots and local.running >= local.cpus * local.depth

    def _place(self, entry: Pending, ahead: int | None = None) -> list[Action]:
        """Carry out what placement decides for ``entry`` (``ahead``: how many calls wait
        for our slots before it; default: our whole backlog, as for a new call)."""
        waiting = len(self.backlog)
        decision = self.placement.place(entry, waiting if ahead is None else ahead, waiting)
        kind = decision.kind
        if kind is RUN:
            return self._run_local(entry)
        if kind is DELEGATE:
            return self._forward(entry, decision.peer)
        if kind is WAIT:
            entry.where = "backlog"
            return []
        if kind is BEHIND:
            return self._run_local(entry, behind=True)
        return self._fail(entry, decision.error_type, decision.text)

    def _place_or_queue(self, entry: Pending) -> list[Action]:
        acts = self._place(entry)
        if entry.where == "backlog" and entry.call.call_id in self.pending:
            self.backlog.append(entry.call.call_id)
        return acts

    def _retry_backlog(self) -> list[Action]:
        """Place what waits, first come first placed, as far as slots here and at peers
        allow. But while a call here is blocked on other tasks, the room here (free slots,
        and places behind busy workers: ``depth``) goes to the newest calls waiting: as a
        rule what the blocked calls wait for (a task submits its nested calls just before
        it blocks), so a nested graph runs depth first and few of its calls are blocked at
        once (each holds a worker process; in arrival order, fib(10) on one slot had ~70
        blocked at once). The rest keep their order."""
        if not self.backlog:  # (the usual case of a heartbeat's news)
            return self._steal()
        acts: list[Action] = []
        kept: list[str] = []
        waiting_here = 0
        local, placement = self.local, self.placement
        room = local.cpus * local.depth - local.running  # (calls here may run, or wait behind)
        if local.blocked and room > 0 and self._nested_here():
            self._newest_first(room)
        for _ in range(len(self.backlog)):
            if self._stuck():
                break  # the rest waits (in order) for a slot or a peer
            call_id = self.backlog.popleft()
            entry = self.pending.get(call_id)
            if entry is None or entry.where != "backlog":
                continue
            acts += self._place(entry, ahead=waiting_here)
            if entry.where == "backlog" and call_id in self.pending:  # (not failed by _place)
                if entry.call.needs is not None and not local.fits(entry.call.needs):
                    kept.append(call_id)  # waits for an agent that can run it; not a queue head
                    continue
                if entry.call.inputs and placement.inputs_here(entry.call):
                    kept.append(call_id)  # waits for our slot by choice (its data is here)
                    waiting_here += 1
                    continue
                # nothing can take it now; the rest wait for the next slot or report (FIFO)
                self.backlog.appendleft(call_id)
                break
        if kept:
            self.backlog.extendleft(reversed(kept))
        return acts + self._steal()

    def _steal(self) -> list[Action]:
        """A slot is free and nothing waits here: ask for work (``Placement.steal``) and
        carry it out: one ``Reclaim`` per peer, each call asked marked (once per holder)."""
        if self.backlog or not (self.leases.calls or self.peers.queues) or self.draining \
                or not self.placement.steals:
            return []
        free = self.local.free
        if free <= 0:
            return []
        reclaims, total = self.placement.steal(free, self.leases.calls, self.pending)
        if not reclaims:
            return []
        acts: list[Action] = []
        for peer_id, ids, left in reclaims:
            for call_id in ids:
                self.pending[call_id].asked = peer_id
            self.peers.slots[peer_id].told = left
            acts.append(SendTo(peer_id, Reclaim(ids, left, self.queued)))
        self.counters["reclaims_sent"] += len(acts)
        self.counters["reclaim_asked"] += total
        return acts

    def _run_local(self, entry: Pending, behind: bool = False) -> list[Action]:
        entry.where = "local"
        self.local.running += entry.slots
        self.counters["behind"] += behind
        return [RunLocal(entry.call, behind)]

    def _forward(self, entry: Pending, peer_id: str) -> list[Action]:
        entry.where = peer_id
        self.peers.slots[peer_id].sent += 1
        self.leases.add(peer_id, entry.call.call_id)
        self.counters["forwarded"] += 1
        return [Forward(peer_id, self._outgoing(entry))]

    def _outgoing(self, entry: Pending) -> Call:
        call = entry.call
        visited = call.visited + [self.node_id] if self.node_id else call.visited
        return evolve(call, hops=call.hops + 1, visited=visited, attempt=entry.attempts)

    def _undelegate(self, entry: Pending) -> None:
        self.leases.remove(entry.where, entry.call.call_id)

    def _lost_on_the_way(self, entry: Pending, holder: str) -> list[Action]:
        """The call did not reach ``holder``, or its result did not reach us, on a live
        link (a Held saying unknown; a send the transport refused): place it again at
        once, elsewhere if we can, without counting an attempt against it; but every
        ``LOSSES_PER_ATTEMPT``-th loss of the same call counts as one, so a link that
        loses everything cannot keep a call going for ever (``max_attempts``)."""
        entry.losses += 1
        self.counters["lease_lost"] += 1
        if entry.losses % LOSSES_PER_ATTEMPT == 0:
            return self._replace(entry, holder)
        self._undelegate(entry)
        entry.tried.add(holder)
        entry.where = "backlog"
        return self._place_or_queue(entry)

    def _expire_clients(self) -> list[Action]:
        """Clients not heard from for ``client_rounds`` rounds: their calls stop."""
        last = self.leases.round - self.client_rounds
        silent = {identity for identity, heard in self.clients.items() if heard <= last}
        if not silent:
            return []
        for identity in silent:
            del self.clients[identity]
        return self._drop_clients(silent, "its client went silent")

    def _drop_clients(self, identities: set[bytes], reason: str) -> list[Action]:
        """Those clients want nothing any more: each call only they asked for is cancelled."""
        acts: list[Action] = []
        for entry in list(self.pending.values()):
            if not any(r.identity in identities and r.peer is None for r in entry.requesters):
                continue
            entry.requesters = [r for r in entry.requesters
                                if not (r.identity in identities and r.peer is None)]
            if not entry.requesters:
                self.counters["client_gone"] += 1
                acts += self._cancel(entry, reason)
        return (acts + self._retry_backlog()) if acts else acts

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

    # ------------------------------------------------------------------ internals: ending

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
                to_peer = evolve(result, free=self.local.free, queued=self.queued)
            peer = self.peers.slots.get(r.peer)
            if peer is not None:
                peer.told = self.local.free
            acts.append(SendTo(r.peer, to_peer) if r.direct else Deliver(r.identity, to_peer))
        return acts

    def _stop(self, entry: Pending, reason: str) -> list[Action]:
        """Undo the entry's placement (the entry is already out of ``pending``)."""
        if entry.where == "local":
            local = self.local
            if not entry.lent:
                local.running = max(local.running - entry.slots, 0)
            else:
                local.blocked.discard(entry.call.call_id)
            return [KillLocal(entry.call.call_id)]  # (the caller retries the backlog)
        if entry.where != "backlog" and entry.where not in self.peers.lost:
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

    def _orphan(self, entry: Pending) -> None:
        """Remember a call cancelled for its lost origin, in case the origin comes back
        (``Peers.orphan``)."""
        records = [(entry.call.call_id, r.peer) for r in entry.requesters if r.peer is not None]
        if entry.call.origin and records:
            self.peers.orphan(entry.call.origin, records)

    def _fail(self, entry: Pending, error_type: str, text: str) -> list[Action]:
        self.pending.pop(entry.call.call_id, None)
        self.counters["failed"] += 1
        return self._deliver(entry, self._failure(entry.call, error_type, text))

    def _failure(self, call: Call, error_type: str, text: str) -> Result:
        return Result(call.call_id, False, b"", self.name, error_type, text, "")

