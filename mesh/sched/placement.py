"""Where each call runs: placement, task constraints and work stealing.

A mixin of ``mesh.sched.dispatch.Dispatcher`` (pure, like the rest of it: the state it
reads and changes is the dispatcher's; ``_run_local``, ``_forward`` and ``_fail`` are
the ledger's).

Placement (``_place``):
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

from typing import TYPE_CHECKING

from mesh.sched.actions import Action, SendTo
from mesh.wire.messages import Call, Reclaim

if TYPE_CHECKING:
    from mesh.sched.dispatch import Pending


class Placement:
    def _place(self, entry: Pending, ahead: int | None = None) -> list[Action]:
        """Place ``entry`` (see the module docstring). ``ahead``: how many calls wait
        for our slots before it (default: our whole backlog, as for a new call)."""
        call = entry.call
        avoid_here = bool(call.avoid) and self.name in call.avoid  # an attempt failed here
        fits_here = call.needs is None or self._fits_here(call)
        slots = entry.slots
        if call.inputs and call.hops < self.max_hops:  # where its data is, if it can start there
            holder = self._data_holder(entry)
            if holder is not None:
                return self._forward(entry, holder)
        if self.free >= slots and fits_here and not avoid_here:
            return self._run_local(entry)
        if ahead is None:
            ahead = len(self.backlog)
        if (call.inputs and fits_here and not avoid_here and self._inputs_here(call)
                and ahead < max(self.prefetch, 1) * self.cpus):
            entry.where = "backlog"  # its data is here and a slot frees soon: wait for it
            return []
        if call.hops < self.max_hops:
            peer = self._pick_peer(entry, need_free=True)
            if peer is None and (self.cpus == 0 or avoid_here or not fits_here):
                # (a call that cannot run here queues where it can, as on an agent without slots)
                peer = self._pick_peer(entry, need_free=False)
            elif peer is None:
                if self._can_wait_at_worker(entry):
                    return self._run_local(entry, behind=True)
                peer = self._pick_queue(entry)
            if peer is not None:
                return self._forward(entry, peer)
        if self.free >= slots and fits_here:  # failed here before, but nobody else can take it
            return self._run_local(entry)
        if self._can_wait_at_worker(entry):
            return self._run_local(entry, behind=True)
        if self.cpus == 0 and call.hops >= self.max_hops:
            return self._fail(entry, "NoCapacity", f"no agent with a free slot within {self.max_hops} hops")
        if not fits_here and call.hops >= self.max_hops:
            return self._fail(entry, "NoSuitableAgent", f"no agent within {self.max_hops} hops "
                                                        f"offers {_describe(call.needs)}")
        entry.where = "backlog"
        return []

    def _can_wait_at_worker(self, entry: Pending) -> bool:
        """No slot is free here nor at any peer: the call may wait at one of our busy
        workers, behind its call (``depth`` calls per slot; the agent sets ``depth``
        above 1 only while the calls it runs are short, so the wait is short too, and
        takes such calls back when one turns out long). A worker then starts its next
        call without waiting for the agent, and the agent hands calls over and takes
        results back in bulk. Only for calls that need one slot, have no constraints,
        no inputs held somewhere and no failed attempt here."""
        call = entry.call
        return (self.depth > 1 and self.running < self.cpus * self.depth and entry.slots == 1
                and call.needs is None and not call.inputs and self.name not in call.avoid)

    def _inputs_here(self, call: Call) -> bool:
        """We hold at least half of the call's input bytes."""
        return _major_holder(call) == self.node_id

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
        """The peer holding at least half of the call's input bytes (``Call.inputs``:
        task outputs kept where they were made, ``mesh.sched.objects``) if it can start the
        call now (a free slot, or room in the queue it keeps for us): running there
        moves no data. Else None (also when we hold them: ``_place`` goes on with us)."""
        node = _major_holder(entry.call)
        if node is None or node == self.node_id:
            return None
        needs = entry.call.needs
        p = self.peers.get(node)
        if (p is None or p.cpus <= 0 or node in self.suspected or node in self.lost
                or node in entry.call.visited or node in entry.peers_asking()
                or node in entry.tried or p.name in entry.call.avoid
                or (needs is not None and not _fits(needs, p.cpus, p.memory, p.labels))):
            return None
        if p.est_free >= entry.slots or p.queued + max(-p.est_free, 0) < self.prefetch * p.cpus:
            return node
        return None

    def _local_end(self) -> float:
        """When a call queued here now would finish, in task times of a full-speed slot
        (every slot busy: it waits for the backlog and for a running call)."""
        return ((len(self.backlog) + 1) / max(self.cpus, 1) + 1) / self.speed

    def _peer_view(self, entry: Pending):
        """The peers a call may be delegated to: our tree neighbours when we have them
        (a big mesh: ``neighbours``, set by the agent from the latency tree) and one of
        them could take it (reachable, with slots, not on its path already), else every
        peer we know. A call with constraints looks at every peer (the device it needs
        may be anywhere)."""
        hood = self.neighbours
        if hood is None or entry.call.needs is not None:
            return self.peers.items()
        peers, visited = self.peers, entry.call.visited
        view = [(pid, p) for pid in hood if (p := peers.get(pid)) is not None and p.cpus > 0
                and pid not in self.lost and pid not in self.suspected and pid not in visited
                and pid not in entry.tried]
        return view if view else peers.items()

    def _pick_peer(self, entry: Pending, need_free: bool) -> str | None:
        """A peer with a free slot (``need_free``) where the call finishes before it
        would here (a slow slot, e.g. a CPU-capped device, only takes work when our
        queue is long enough); or, for an agent that cannot run it, the least loaded."""
        best, best_key = None, None
        asking = entry.peers_asking()
        needs, slots = entry.call.needs, entry.slots
        can_here = self.cpus > 0 and (needs is None or self._fits_here(entry.call))
        here = self._local_end() if can_here and self.name not in entry.call.avoid else None
        for peer_id, p in self._peer_view(entry):
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
        for peer_id, p in self._peer_view(entry):
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
                elif (self.name not in entry.call.avoid and entry.slots <= free
                      and self._fits_here(entry.call) and not self._inputs_at(entry.call, peer_id)):
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


def _major_holder(call: Call) -> str | None:
    """The agent holding at least half of a call's input bytes, if one does."""
    best = max(call.inputs, key=lambda h: h.nbytes)
    if best.nbytes <= 0 or 2 * best.nbytes < sum(h.nbytes for h in call.inputs):
        return None
    return best.node


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
