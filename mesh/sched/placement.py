"""Where each call runs: placement, task constraints and work stealing, as a policy.

``Placement`` is a part of ``mesh.sched.dispatch.Dispatcher`` (pure, like the rest of it).
It reads two views, given in its constructor: our own slots (``LocalSlots``) and what we
believe of our peers (``mesh.sched.peers.Peers``); it changes neither (but for forgetting
peers whose queue is gone) and no call: it returns decisions (``place``: a ``Decision``;
``steal``: whom to ask for what), which the ledger carries out.

Placement (``place``):
  0. a call whose big inputs are held at agents (``Call.inputs``: task outputs kept
     where they were made, ``mesh.sched.objects``) goes to the agent holding at least half
     of their bytes if that agent can start it now (a free slot, or room in the queue
     it keeps for us): running there moves no data (Ray's locality-aware leasing). The
     holder itself, when busy, keeps such a call if no more than ``prefetch`` calls per
     slot wait before it (a slot frees within about one task time, sooner than a
     transfer of the data); a holder with a longer queue is not waited for: the call
     goes on and its reader fetches the bytes;
  1. a free local slot: run here;
  2. else a live peer believed to have a free slot (its last heartbeat's ``free``
     minus what we sent it since) where the call would finish sooner than here
     (earliest finish, ``finish_time``: a slot's *speed* is its effective cores, so a
     device capped at a quarter of a core gets work only while our queue is long),
     fastest and most free first, then the lowest round trip: delegate, unless the call
     already made ``max_hops`` hops;
  3. else wait in the local backlog if this agent has slots;
  4. an agent without slots delegates to the least loaded live peer with slots.
Constraints (``Call.needs``, from ``@constraint``): a call runs only on an agent with
at least ``cpus`` slots (it takes that many while it runs), offering at least
``memory`` bytes and every label; every step above considers only such agents, and
a call that cannot run here queues at the least loaded peer that fits (as on an agent
without slots). One that no known agent fits waits in our backlog without holding up
the calls behind it, and fails with ``NoSuitableAgent`` after ``unfit_grace`` seconds
if still no agent that fits is known (``Dispatcher.expire_unfit``).
In a big mesh (the agent sets ``neighbours`` beyond ``TREE_DELEGATION_MIN`` members)
steps 2 to 4 look only at our neighbours in the latency tree (parent and children):
each placement costs O(neighbours), not O(mesh), and work spreads hop by hop along
low-latency links (a neighbour with no free slot passes the call on to its own
neighbours, within ``max_hops``), as COMPSs agents delegate to the agents they know.
Locality (step 0) and constraints look at every peer; when no neighbour is reachable
(the tree is re-forming after a loss) every peer is a candidate again.
A call that names agents to avoid (a RETRY after it failed there) goes to another
agent when one can take it, and runs on an avoided one only when none can.
A call is never sent back to an agent that delegated it (``Call.visited``), so it
cannot loop; a peer that already held it and was lost is chosen again only by an
agent without slots of its own, when no other will do. Which peers each step looks at
is said once, by the criteria it gives ``Peers.candidates``. The backlog is retried
whenever a slot frees or a peer reports free slots (spill-over).

Work stealing (``steal``, after every backlog retry): placement pushes, so without
help the end of a bag of tasks waits for calls queued (``prefetch``) at a slow peer
while faster agents sit idle, and an idle agent waits for its next heartbeat to be
given work. So an agent with a free slot and an empty backlog sends a ``Reclaim`` to:

* a peer holding calls we delegated, when that peer reported a queue (its last
  ``queued``, plus what we sent since beyond its free slots) and a call waiting there
  would end later than here: there at best first in its queue, ``finish_time(0)``
  there; here ``1/speed`` on our free slot (the placement rule run backwards: a call
  queued at a slow peer while our queue was long comes back once we are idle).
  It lists the newest of our calls there (a holder runs its backlog in order, so those
  start last; no more than it has waiting), slowest peer first, one per free slot
  (calls asked and not back yet count), each call asked once per holder
  (``Pending.asked``), and only calls this agent can run now: none whose constraints
  it does not meet (``Call.needs``: slots, memory, labels; it would only forward the
  call again), none needing more slots than it has free, none that failed here
  (``Call.avoid``), none whose inputs that peer holds (``Call.inputs``);
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
"""

from __future__ import annotations

from typing import NamedTuple

from mesh.sched.peers import Peers
from mesh.sched.records import LocalSlots, Pending
from mesh.wire.messages import Call

RUN = "run"  # in a free slot of ours
BEHIND = "behind"  # at a busy worker of ours, behind its call (``LocalSlots.depth`` > 1)
DELEGATE = "delegate"  # to ``Decision.peer``
WAIT = "wait"  # in our backlog
FAIL = "fail"  # nobody can run it: ``Decision.error_type``, ``Decision.text``


class Decision(NamedTuple):
    """Where ``Placement.place`` puts a call: ``kind`` is one of ``RUN``, ``BEHIND``,
    ``DELEGATE``, ``WAIT`` and ``FAIL``."""

    kind: str
    peer: str = ""
    error_type: str = ""
    text: str = ""


RUN_HERE, RUN_BEHIND, WAIT_HERE = Decision(RUN), Decision(BEHIND), Decision(WAIT)


def finish_time(waiting: int, cpus: int, speed: float) -> float:
    """When a call queued now at an agent whose ``cpus`` slots are all busy, behind
    ``waiting`` other calls, would end, in task times of a full-speed slot: it waits for
    its turn (a slot frees about every ``1/cpus`` task time) and then runs (one task
    time), each at ``speed`` (effective cores per slot)."""
    return ((waiting + 1) / max(cpus, 1) + 1) / speed


class Placement:
    """Where each call should run (see the module docstring): reads our slots
    (``local``) and our peers (``peers``), decides."""

    def __init__(self, local: LocalSlots, peers: Peers, *, max_hops: int = 4,
                 prefetch: int = 0, steal: bool | None = None) -> None:
        self.local = local
        self.peers = peers
        self.max_hops = max_hops
        self.prefetch = prefetch  # calls a busy peer may queue from us, per slot of its
        self.stealing = steal  # Reclaim when idle (None: when ``prefetch`` > 0)

    @property
    def steals(self) -> bool:
        """Work stealing is on: as told, else with ``prefetch``."""
        return self.prefetch > 0 if self.stealing is None else self.stealing

    def place(self, entry: Pending, ahead: int, waiting: int) -> Decision:
        """Where ``entry`` goes now (see the module docstring). ``ahead``: how many calls
        wait for our slots before it; ``waiting``: how many wait in our backlog."""
        call, local = entry.call, self.local
        avoid_here = bool(call.avoid) and local.name in call.avoid  # an attempt failed here
        fits_here = call.needs is None or local.fits(call.needs)
        slots = entry.slots
        if call.inputs and call.hops < self.max_hops:  # where its data is, if it can start there
            holder = self._data_holder(entry)
            if holder is not None:
                return Decision(DELEGATE, holder)
        if local.free >= slots and fits_here and not avoid_here:
            return RUN_HERE
        if (call.inputs and fits_here and not avoid_here and self.inputs_here(call)
                and ahead < max(self.prefetch, 1) * local.cpus):
            return WAIT_HERE  # its data is here and a slot frees soon: wait for it
        if call.hops < self.max_hops:
            peer = self._pick_peer(entry, waiting, need_free=True)
            if peer is None and (local.cpus == 0 or avoid_here or not fits_here):
                # (a call that cannot run here queues where it can, as on an agent without slots)
                peer = self._pick_peer(entry, waiting, need_free=False)
            elif peer is None:
                if self.can_wait_at_worker(entry):
                    return RUN_BEHIND
                peer = self._pick_queue(entry, waiting)
            if peer is not None:
                return Decision(DELEGATE, peer)
        if local.free >= slots and fits_here:  # failed here before, but nobody else can take it
            return RUN_HERE
        if self.can_wait_at_worker(entry):
            return RUN_BEHIND
        if local.cpus == 0 and call.hops >= self.max_hops:
            return Decision(FAIL, error_type="NoCapacity",
                            text=f"no agent with a free slot within {self.max_hops} hops")
        if not fits_here and call.hops >= self.max_hops:
            return Decision(FAIL, error_type="NoSuitableAgent",
                            text=f"no agent within {self.max_hops} hops offers {describe(call.needs)}")
        return WAIT_HERE

    def can_wait_at_worker(self, entry: Pending) -> bool:
        """No slot is free here nor at any peer: the call may wait at one of our busy
        workers, behind its call (``depth`` calls per slot; the agent sets ``depth``
        above 1 only while the calls it runs are short, so the wait is short too, and
        takes such calls back when one turns out long). A worker then starts its next
        call without waiting for the agent, and the agent hands calls over and takes
        results back in bulk. Only for calls that need one slot, have no constraints,
        no inputs held somewhere and no failed attempt here."""
        call, local = entry.call, self.local
        return (local.depth > 1 and local.running < local.cpus * local.depth and entry.slots == 1
                and call.needs is None and not call.inputs and local.name not in call.avoid)

    def inputs_here(self, call: Call) -> bool:
        """We hold at least half of the call's input bytes."""
        return major_holder(call) == self.local.node_id

    def _data_holder(self, entry: Pending) -> str | None:
        """The peer holding at least half of the call's input bytes (``Call.inputs``:
        task outputs kept where they were made, ``mesh.sched.objects``) if it can start the
        call now (a free slot, or room in the queue it keeps for us): running there
        moves no data. Else None (also when we hold them: ``place`` goes on with us)."""
        node = major_holder(entry.call)
        if node is None or node == self.local.node_id:
            return None
        for peer_id, _ in self.peers.candidates(entry, among=(node,), untried=True, unavoided=True,
                                                free=True, room=self.prefetch):
            return peer_id
        return None

    def _local_end(self, waiting: int) -> float:
        """When a call queued here now would finish (every slot busy: it waits for the
        ``waiting`` calls of the backlog and for a running call)."""
        return finish_time(waiting, self.local.cpus, self.local.speed)

    def _pick_peer(self, entry: Pending, waiting: int, need_free: bool) -> str | None:
        """A peer with a free slot (``need_free``) where the call finishes before it
        would here (a slow slot, e.g. a CPU-capped device, only takes work when our
        queue is long enough); or, for an agent that cannot run it, the least loaded."""
        best, best_key = None, None
        local, call = self.local, entry.call
        can_here = local.cpus > 0 and (call.needs is None or local.fits(call.needs))
        avoided_here = local.name in call.avoid
        here = self._local_end(waiting) if can_here and not avoided_here else None
        tried = entry.tried
        # (we look elsewhere only for agents not yet tried, when it failed here)
        for peer_id, p in self.peers.candidates(entry, along_tree=True, untried=can_here,
                                                unavoided=avoided_here, free=need_free):
            avoided = p.name in call.avoid
            if need_free:
                if here is not None and 1 / p.speed > here:
                    continue
                key = (avoided, peer_id in tried, 1 / p.speed, -p.est_free, p.rtt)
            else:
                key = (avoided, peer_id in tried, (p.cpus - p.est_free) / p.cpus, p.rtt)
            if best_key is None or key < best_key:
                best, best_key = peer_id, key
        return best

    def _pick_queue(self, entry: Pending, waiting: int) -> str | None:
        """Every slot is busy, here and (as far as we know) at every peer: queue the call
        where it will start soonest. Our wait is our backlog per slot; a peer's is the
        calls queued there per slot (what it reported, plus what we sent since), and a
        peer queues at most ``prefetch`` calls per slot from us. Results carry their
        sender's load, so this is self-clocked: each result frees room for the next."""
        ours = self._local_end(waiting)
        best, best_key = None, None
        for peer_id, p in self.peers.candidates(entry, along_tree=True, untried=True,
                                                unavoided=True, room=self.prefetch):
            theirs = finish_time(p.waiting, p.cpus, p.speed)
            key = (theirs, p.rtt)
            if theirs < ours and (best_key is None or key < best_key):
                best, best_key = peer_id, key
        return best

    def steal(self, free: int, delegated: dict[str, dict[str, None]],
              pending: dict[str, Pending]) -> tuple[list[tuple[str, list[str], int]], int]:
        """A slot is free and nothing waits here: whom to ask for work (module docstring,
        "Work stealing"). ``delegated``: our calls at each peer, oldest first. Calls we
        delegated that probably wait at a peer (its newest, as many as it has waiting)
        are asked back, slowest peer first, one per free slot (counting those asked
        already and not back yet), each once per holder. Peers that reported a queue get
        our load news when we have more free slots than they heard of. Returns one
        ``(peer, call ids to ask back, our free slots it hears)`` per Reclaim to send, and
        how many calls they ask back."""
        local = self.local
        wanted: list[tuple[float, str, list[str]]] = []
        coming = 0  # asked back already, not here yet (or started there after all)
        soonest = 1 / local.speed  # the soonest a call could end here
        slots = self.peers.slots
        for peer_id, calls in delegated.items():
            p = slots.get(peer_id)
            if p is None:
                continue
            waiting = p.waiting
            theirs = finish_time(0, p.cpus, p.speed)  # first in its queue, at best
            if waiting <= 0 or theirs <= soonest:
                continue
            ids: list[str] = []
            seen = 0
            for call_id in reversed(calls):  # newest first: the last to start there
                entry = pending.get(call_id)
                if entry is None or entry.where != peer_id:
                    continue
                seen += 1
                if entry.asked == peer_id:
                    coming += 1
                elif (local.name not in entry.call.avoid and entry.slots <= free
                      and local.fits(entry.call.needs) and not _inputs_at(entry.call, peer_id, local.node_id)):
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
        total = k - coming
        out = [(peer_id, ids, max(free - total + len(ids), 0))  # (what it gives back takes
               for peer_id, ids in asked.items()]  # our slots first)
        for peer_id, p in self.peers.with_queue(besides=asked):  # news only: to a peer with a
            if free - total > max(p.told, 0):  # queue that does not know (heartbeats carry our load)
                out.append((peer_id, [], max(free - total, 0)))
        return out, total

    def _end_here(self, k: int, free: int) -> float:
        """When the ``k``-th call taken back (from 0) would end here, nothing else waiting:
        on a free slot at once, else behind those before it beyond our free slots."""
        if k < free:
            return 1 / self.local.speed
        return finish_time(k - free, self.local.cpus, self.local.speed)


def _inputs_at(call: Call, peer_id: str, node_id: str) -> bool:
    """More of the call's inputs are held by that peer than here (``node_id``): leave it there."""
    inputs = call.inputs
    if not inputs:
        return False
    there = sum(h.nbytes for h in inputs if h.node == peer_id)
    return there > sum(h.nbytes for h in inputs if h.node == node_id)


def major_holder(call: Call) -> str | None:
    """The agent holding at least half of a call's input bytes, if one does."""
    best = max(call.inputs, key=lambda h: h.nbytes)
    if best.nbytes <= 0 or 2 * best.nbytes < sum(h.nbytes for h in call.inputs):
        return None
    return best.node


def describe(needs) -> str:
    parts = [f"{needs.cpus} slot(s)"]
    if needs.memory:
        parts.append(f"{needs.memory / (1 << 30):.2f} GiB of memory")
    if needs.labels:
        parts.append("labels " + ", ".join(needs.labels))
    return ", ".join(parts)
