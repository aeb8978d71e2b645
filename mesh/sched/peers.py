"""What one agent's dispatcher believes of its peers, and the one filter of peers a call
may go to.

Theory of operation
-------------------
``Peers`` is a part of ``mesh.sched.dispatch.Dispatcher`` (pure: no socket, no clock). It
is told what membership and the traffic say about each peer, and keeps:

* ``slots``: each peer's capacity as it last reported it (``PeerSlots``: slots, free
  ones, queue, speed, what it offers to tasks), plus what we sent it since; from its
  heartbeat (``report``) until it is suspected or lost. Results and Reclaims carry
  fresher news of its load (``news``). Only a peer in ``slots`` is reachable: one that
  reported since it was last suspected or lost;
* ``suspected``: from its suspicion (``suspect``; or all of them, ``suspect_all``, when
  we learn that we were declared dead ourselves) until it reports again or is lost;
* ``lost``: from its loss (``lose``) until it is alive again (``alive``) or forgotten;
* ``queues``: peers that reported a queue, for work stealing's news, while they do;
* ``orphans``: calls cancelled because their origin (the peer) was lost, with the peer
  that had sent each to us, handed back if the origin turns out alive; at most
  ``max_orphans`` in all (``orphan``);
* ``neighbours``: our tree neighbours, set by the agent in a big mesh (None: any peer).

Every table keyed by node id holds live members, or members membership still
remembers: what is kept of a peer goes when membership forgets it (``forget``).

``candidates`` is the one filter of peers a call may be delegated to, its criteria
named: each caller (placement's steps, ``mesh.sched.placement``) says what it wants.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.sched.records import PeerSlots, Pending, count
from mesh.wire.messages import Needs


class Peers:
    """See the module docstring."""

    def __init__(self, neighbours: frozenset | None = None, max_orphans: int = 100_000) -> None:
        self.slots: dict[str, PeerSlots] = {}
        self.suspected: set[str] = set()
        self.lost: set[str] = set()
        self.queues: dict[str, None] = {}  # peers that reported a queue
        self.neighbours = neighbours  # tree neighbours to delegate to (None: any peer)
        self.orphans: dict[str, list[tuple[str, str]]] = {}  # origin -> (call, requester)
        self.max_orphans = max_orphans

    # ------------------------------------------------------------------ what we learn

    def report(self, peer_id: str, slots: PeerSlots) -> bool:
        """A heartbeat from a live peer: its capacity. True when it was suspected (it
        answers again)."""
        self.slots[peer_id] = slots
        if slots.queued > 0:
            self.queues[peer_id] = None
        self.lost.discard(peer_id)
        if peer_id in self.suspected:
            self.suspected.discard(peer_id)
            return True
        return False

    def news(self, peer_id: str, free: int, queued: int, sent: int = 0) -> bool:
        """Fresher load news than its last heartbeat (a Result or a Reclaim it sent):
        ``free`` slots and ``queued`` calls, ``sent``: what we send it back at once.
        False if it is not reachable."""
        p = self.slots.get(peer_id)
        if p is None:
            return False
        p.free, p.queued, p.sent = count(free), count(queued), sent
        if queued > 0:
            self.queues[peer_id] = None
        return True

    def suspect(self, peer_id: str) -> None:
        self.slots.pop(peer_id, None)
        self.queues.pop(peer_id, None)
        self.suspected.add(peer_id)

    def suspect_all(self) -> None:
        """What we believe of each peer is stale (we were declared dead): each is
        suspected until it reports again."""
        for peer_id in list(self.slots):
            self.suspect(peer_id)

    def lose(self, peer_id: str) -> None:
        self.slots.pop(peer_id, None)
        self.queues.pop(peer_id, None)
        self.suspected.discard(peer_id)
        self.lost.add(peer_id)

    def alive(self, peer_id: str) -> list[tuple[str, str]]:
        """Membership says the peer is alive (again): the calls we cancelled taking it
        for a dead origin, each with the peer that sent it to us (those not lost)."""
        self.lost.discard(peer_id)
        return [(call_id, requester) for call_id, requester in self.orphans.pop(peer_id, ())
                if requester not in self.lost]

    def forget(self, peer_id: str) -> None:
        """Membership forgot a dead or left member: it will not come back under this id."""
        self.lost.discard(peer_id)
        self.suspected.discard(peer_id)
        self.orphans.pop(peer_id, None)

    def orphan(self, origin: str, records: list[tuple[str, str]]) -> None:
        """Remember calls cancelled for their lost ``origin`` (call id, the peer that sent
        it), in case the origin comes back (bounded: beyond ``max_orphans`` records in
        all, the oldest are forgotten, oldest origin first). The total is counted here,
        never kept: a count kept beside the table drifted when records left it elsewhere
        (``alive``), until every new record was forgotten at once and its Handback never
        sent."""
        self.orphans.setdefault(origin, []).extend(records)
        excess = sum(map(len, self.orphans.values())) - self.max_orphans
        while excess > 0:
            oldest = next(iter(self.orphans))
            kept = self.orphans[oldest]
            drop = min(excess, len(kept))
            del kept[:drop]
            excess -= drop
            if not kept:
                del self.orphans[oldest]

    # ------------------------------------------------------------------ what we read

    def any_fits(self, needs: Needs | None) -> bool:
        """Some reachable peer can run a call that ``needs`` this."""
        return any(p.fits(needs) for p in self.slots.values())

    def with_queue(self, besides: Iterable[str] = ()) -> list[tuple[str, PeerSlots]]:
        """The reachable peers that reported a queue (but those ``besides``), in the order
        they did; those that reported none since, or are gone, are forgotten here."""
        out = []
        for peer_id in list(self.queues):
            if peer_id in besides:
                continue
            p = self.slots.get(peer_id)
            if p is None or p.queued <= 0:
                del self.queues[peer_id]
            else:
                out.append((peer_id, p))
        return out

    def candidates(self, entry: Pending, *, among: Iterable[str] | None = None,
                   along_tree: bool = False, untried: bool = False, unavoided: bool = False,
                   free: bool = False, room: int | None = None) -> list[tuple[str, PeerSlots]]:
        """The peers ``entry``'s call may be delegated to, in the order we learnt of them.
        Always: reachable, with slots, meeting the call's constraints (``Call.needs``),
        neither on its path (``Call.visited``: it never goes back) nor asking for it.
        And, as the caller asks:

        * ``among``: only these peers;
        * ``along_tree``: only our tree neighbours, when we have them (``neighbours``) and
          one of them could take it (reachable, with slots, not on its path, not tried);
          else every peer. A call with constraints looks at every peer (the device it
          needs may be anywhere);
        * ``untried``: none that held it before (``Pending.tried``);
        * ``unavoided``: none it names to avoid (``Call.avoid``: an attempt failed there);
        * ``free``: one with a free slot for it (its report, minus what we sent since);
        * ``room``: one with room in the queue it keeps for us (fewer than ``room`` calls
          per slot waiting there); with ``free`` too, either will do."""
        call = entry.call
        slots = self.slots
        if among is not None:
            view: Iterable[tuple[str, PeerSlots]] = [
                (pid, p) for pid in among if (p := slots.get(pid)) is not None]
        elif along_tree and self.neighbours is not None and call.needs is None:
            view = self._tree_view(entry) or slots.items()
        else:
            view = slots.items()
        visited, needs, need = call.visited, call.needs, entry.slots
        asking = [r.peer for r in entry.requesters if r.peer is not None]
        tried = entry.tried if untried else ()
        avoid = call.avoid if unavoided else ()
        capacity = free or room is not None
        out = []
        for peer_id, p in view:
            if (p.cpus <= 0 or peer_id in visited or peer_id in asking or peer_id in tried
                    or p.name in avoid or (needs is not None and not p.fits(needs))):
                continue
            if capacity and not ((free and p.free - p.sent >= need)
                                 or (room is not None and p.waiting < room * p.cpus)):
                continue
            out.append((peer_id, p))
        return out

    def _tree_view(self, entry: Pending) -> list[tuple[str, PeerSlots]]:
        """Our neighbours that could take the call (see ``candidates``)."""
        slots, visited, tried = self.slots, entry.call.visited, entry.tried
        return [(pid, p) for pid in self.neighbours if (p := slots.get(pid)) is not None
                and p.cpus > 0 and pid not in visited and pid not in tried]
