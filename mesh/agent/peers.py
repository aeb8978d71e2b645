"""What a change among an agent's peers means for its other cores.

Membership decides who is alive, suspect, dead or gone; the tree who is parent and root.
``Peers`` carries their actions that concern the rest of the agent: a member that comes
alive is offered to the dispatcher and the tree; a suspect one makes the dispatcher wary;
a dead or departed one is lost to the tree, to the object store (fetches of its objects
fail, objects its programs owned go) and to the dispatcher (its calls are placed again);
being declared dead ourselves (and refuting it) makes the dispatcher re-place or hand
back what was delegated to us. It also hands the dispatcher each peer's load from its
pings and pongs, and chooses whom calls are delegated to (any peer in a small mesh, tree
neighbours only in a big one). It handles the membership and tree messages that
reach the agent. Logs name peers by their names (``name_of``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from mesh.agent.actions import Actions
from mesh.agent.input import Input
from mesh.agent.objects import ObjectService
from mesh.discovery import membership as mb
from mesh.sched import dispatch as dp
from mesh.tree import LatencyTree, ParentChanged, Probe, RootChanged
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")

# beyond this many live members, calls are delegated to tree neighbours only (placement)
TREE_DELEGATION_MIN = int(os.environ.get("MESH_TREE_DELEGATION_MIN", 16))


class Peers:
    def __init__(self, members: mb.Membership, dispatcher: dp.Dispatcher, tree: LatencyTree,
                 objects: ObjectService, input: Input, actions: Actions, dropped: Counter) -> None:
        self.members = members
        self.dispatcher = dispatcher
        self.tree = tree
        self.objects = objects
        self.actions = actions
        self.dropped = dropped  # the agent's drop reasons (this part counts "tree_advert")
        for kind in mb.ROUTER_MESSAGES:  # requests, on our ROUTER
            input.handle(kind, self._on_request)
        for kind in mb.DEALER_MESSAGES:  # answers, over our own connections
            input.handle(kind, self._on_answer, router=False, dealer=True)
        input.handle(m.TreeAdvert, self._on_advert)
        actions.handle(mb.MemberChanged, self._member_changed)
        actions.handle(mb.DeclaredDead, self._declared_dead)
        actions.handle(mb.Forgotten, self._forgotten)
        actions.handle(Probe, self._probe)
        actions.handle(ParentChanged, self._parent_changed)
        actions.handle(RootChanged, self._root_changed)

    def name_of(self, node_id: str | None) -> str:
        """A node's name for logs and documents: ours, a member's, or its id's start."""
        if node_id is None:
            return "none"
        me = self.members.me
        if node_id == me.id:
            return f"{me.name} (self)"
        member = self.members.members.get(node_id)
        return member.info.name if member is not None else node_id[:8]

    def _peer_load(self, sender: m.NodeInfo, load: m.Load, now: float) -> None:
        """A live member's load, from its ``Ping`` or ``Pong``: for placement."""
        member = self.members.members.get(sender.id)
        if member is None or member.state != "alive":
            return
        acts = self.dispatcher.peer_load(sender.id, sender.name, load.cpus, load.free, member.rtt,
                                         load.queued, load.speed, load.memory, load.labels)
        self.actions.do(acts, now)

    def choose_delegates(self) -> None:
        """A big mesh delegates along the tree (to its neighbours), a small one to any peer."""
        if len(self.members.alive()) >= TREE_DELEGATION_MIN:
            parent = self.tree.parent
            self.dispatcher.neighbours = frozenset(
                [*self.tree.children, parent] if parent is not None else self.tree.children)
        else:
            self.dispatcher.neighbours = None

    # ------------------------------------------------------------------ messages

    def _on_request(self, msg: m.Message, identity: bytes, peer_id: str | None, address: None,
                    now: float) -> None:
        self.actions.do(self.members.receive(msg, now, identity=identity), now)
        if isinstance(msg, m.Ping):
            self._peer_load(msg.sender, msg.load, now)

    def _on_answer(self, msg: m.Message, identity: None, peer_id: str | None, address: str,
                   now: float) -> None:
        self.actions.do(self.members.receive(msg, now, via=address), now)
        if isinstance(msg, m.Pong):
            self._peer_load(msg.sender, msg.load, now)

    def _on_advert(self, msg: m.TreeAdvert, identity: bytes, peer_id: str | None, address: None,
                   now: float) -> None:
        member = self.members.members.get(msg.sender)
        if peer_id != msg.sender or member is None or member.state not in ("alive", "suspect"):
            self.dropped["tree_advert"] += 1
        else:
            self.actions.do(self.tree.heard(peer_id, msg.advert, member.rtt, now), now)

    # ------------------------------------------------------------------ actions

    def _member_changed(self, act: mb.MemberChanged, now: float) -> None:
        do = self.actions.do
        member = self.members.members.get(act.node_id)
        if act.new == "alive":
            do(self.dispatcher.peer_alive(act.node_id), now)
            do(self.tree.offer(act.node_id, member.rtt if member else None, now), now)
        elif act.new in ("dead", "left"):
            do(self.tree.lost(act.node_id, now), now)
        if act.old == "new":
            log.info("peer %s (%s) joined", act.name, act.node_id[:8])
        else:
            log.info("peer %s (%s): %s -> %s (incarnation %d)", act.name, act.node_id[:8], act.old,
                     act.new, act.incarnation)
        if act.new == "suspect":
            do(self.dispatcher.peer_suspect(act.node_id), now)
        elif act.new in ("dead", "left"):
            self.objects.peer_lost(act.node_id, act.name, now)
            c = self.dispatcher.counters
            before = c["reassigned"], c["redirected"], c["cancelled"]
            acts = self.dispatcher.peer_lost(act.node_id)
            moved, redirected, cancelled = (c["reassigned"] - before[0], c["redirected"] - before[1],
                                            c["cancelled"] - before[2])
            if moved or redirected or cancelled:
                where = ", ".join(sorted(self._describe(a) for a in acts)) or "none"
                log.info("peer %s lost: re-placed %d call(s), %d answered to their origin directly, "
                         "%d cancelled; actions: %s", act.name, moved, redirected, cancelled, where)
            do(acts, now)

    def _declared_dead(self, act: mb.DeclaredDead, now: float) -> None:
        acts = self.dispatcher.declared_dead()
        log.warning("we were declared dead (incarnation %d) and refuted: %d call action(s) "
                    "to re-place or hand back", act.incarnation, len(acts))
        self.actions.do(acts, now)

    def _forgotten(self, act: mb.Forgotten, now: float) -> None:
        """Membership forgot a dead or left member: what the ledger kept about it goes."""
        self.actions.do(self.dispatcher.peer_forgotten(act.node_id), now)

    def _probe(self, act: Probe, now: float) -> None:
        self.members.probe_soon(act.peer)

    def _parent_changed(self, act: ParentChanged, now: float) -> None:
        log.info("tree: parent %s -> %s (%s)", self.name_of(act.old), self.name_of(act.new),
                 act.reason)

    def _root_changed(self, act: RootChanged, now: float) -> None:
        log.info("tree: root %s -> %s (term %d)", self.name_of(act.old), self.name_of(act.new),
                 act.term)

    def _describe(self, act) -> str:
        if isinstance(act, dp.Forward):
            return f"to {self.name_of(act.peer_id)}"
        if isinstance(act, dp.RunLocal):
            return "here"
        if isinstance(act, dp.SendTo):
            return f"{type(act.message).__name__.lower()} {self.name_of(act.peer_id)}"
        if isinstance(act, dp.KillLocal):
            return "stopped here"
        return "failed"
