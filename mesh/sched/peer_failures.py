"""Peer failures: what the call ledger does with membership's verdicts about peers.

A mixin of ``mesh.sched.dispatch.Dispatcher`` (pure, like the rest of it: the state
it reads and changes is the dispatcher's; ``_cancel``, ``_give_back`` and ``_fail`` are
the ledger's).

Theory of operation
-------------------
Each hop keeps its own ledger entry (``mesh.sched.dispatch``), so failures are handled
by the hop that sees them, from membership's verdicts:

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
  reports again (then ``peer_load`` sends it again what we had sent it); its calls
  stay with it until it is declared dead;
* a peer we cancelled calls for, as a lost origin, is alive after all (``peer_alive``):
  those calls (``orphans``, bounded) are handed back to the peers that sent them,
  those not lost;
* membership forgot a dead or left member (``peer_forgotten``, ``forget_after`` after
  its death): it cannot come back under that id, so what we kept about it goes;
* the transport could not send a delegated call (``forward_failed``): it is placed
  elsewhere, without counting an attempt.

What is kept per peer, and until when: ``peers`` (its load) while it reports, dropped
when it is suspected or lost; ``suspected`` from its suspicion until it reports again
or is lost; ``lost`` from its loss until it is alive again or forgotten; ``orphans``
(calls cancelled for it as a lost origin) until it is alive again or forgotten, at most
``max_orphans`` in all; ``delegated`` (calls we gave it) until they end or it is lost;
``queues`` while it reports a queue, dropped when it is suspected or lost. So every
table keyed by node id holds live members, or members membership still remembers.
"""

from __future__ import annotations

from mesh.sched.actions import Action, SendTo
from mesh.sched.records import PeerSlots, Pending, Requester
from mesh.wire.messages import Cancel, Handback


class PeerFailures:
    """Mixin of ``Dispatcher``: its answers to membership's verdicts about peers, and
    the re-placement of a call whose holder lost it (``_replace``, also the ledger's
    answer to a ``Handback``).

    It uses the state below and the ledger's ``_cancel``, ``_give_back``, ``_fail``,
    ``_undelegate``, ``_place_or_queue`` and ``_retry_backlog``."""

    node_id: str
    max_attempts: int
    pending: dict[str, Pending]
    peers: dict[str, PeerSlots]
    lost: set[str]
    suspected: set[str]
    queues: dict[str, None]
    orphans: dict[str, list[tuple[str, str]]]
    max_orphans: int
    delegated: dict[str, dict[str, None]]
    counters: dict[str, int]

    def peer_suspect(self, peer_id: str) -> list[Action]:
        """A peer stopped answering for a while: send it nothing new until it reports
        again (its calls stay with it until it is declared dead)."""
        self.peers.pop(peer_id, None)
        self.queues.pop(peer_id, None)
        self.suspected.add(peer_id)
        return []

    def peer_forgotten(self, peer_id: str) -> list[Action]:
        """Membership forgot a dead or left member: it will not come back under this
        id (a node that returns after that is new to everyone), so nothing of it is kept."""
        self.lost.discard(peer_id)
        self.suspected.discard(peer_id)
        self.orphans.pop(peer_id, None)
        return []

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
        self.queues.pop(peer_id, None)
        self.suspected.discard(peer_id)  # (what it held is placed again below, not resent)
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
        held for them but had not started here.

        What we believe of each peer is stale (we may wake just before a partition heals:
        what we send a peer across it now is lost, and it will not be suspected
        afterwards). So each peer is suspected until it reports again: nothing new goes
        to it meanwhile, and what we sent it since is sent again then (``peer_load``)."""
        for peer_id in list(self.peers):
            self.peers.pop(peer_id)
            self.suspected.add(peer_id)
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

    def forward_failed(self, call_id: str, peer_id: str) -> list[Action]:
        """The transport could not send a delegated call: place it elsewhere."""
        entry = self.pending.get(call_id)
        if entry is None or entry.where != peer_id:
            return []
        self._undelegate(entry)
        entry.tried.add(peer_id)
        entry.where = "backlog"
        return self._place_or_queue(entry)

    # ------------------------------------------------------------------ internals

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

    def _orphan(self, entry: Pending) -> None:
        """Remember a call cancelled for its lost origin, in case the origin comes back
        (bounded: beyond ``max_orphans`` records in all, the oldest are forgotten, oldest
        origin first). The total is counted here, never kept: a count kept beside the
        table drifted when records left it elsewhere (``peer_alive``), until every new
        record was forgotten at once and its Handback never sent."""
        new = [(entry.call.call_id, r.peer) for r in entry.requesters if r.peer is not None]
        if not entry.call.origin or not new:
            return
        self.orphans.setdefault(entry.call.origin, []).extend(new)
        excess = sum(map(len, self.orphans.values())) - self.max_orphans
        while excess > 0:
            oldest = next(iter(self.orphans))
            records = self.orphans[oldest]
            drop = min(excess, len(records))
            del records[:drop]
            excess -= drop
            if not records:
                del self.orphans[oldest]
