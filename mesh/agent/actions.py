"""How an agent carries out what its cores decide: the output side of the I/O shell.

A mixin of ``Agent``: ``_do`` runs each action the cores return (``Membership``,
``Dispatcher``, ``LatencyTree``) by the ``_act_*`` method for its type, in the table
``_handlers`` that ``_actions_setup`` builds; sends and replies go through the emulated
per-peer delays when those are on (``mesh.agent.delay``). It uses the Agent's ``config``,
``node_id``, ``members``, ``dispatcher``, ``tree``, ``pool``, ``book``, ``transport``,
``delays``, ``delay_line`` and ``dropped``, and its ``_unstarted``, ``_sync_worker_fds``
and ``_objects_peer_lost``.
"""

from __future__ import annotations

import logging

from mesh.agent.callbook import CallBook
from mesh.discovery import membership as mb
from mesh.sched import dispatch as dp
from mesh.tree import ParentChanged, Probe, RootChanged, SendAdvert
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")


class AgentActions:
    def _actions_setup(self) -> None:
        """Build ``_handlers``, the table ``_do`` reads (called by ``Agent.__init__``)."""
        self._handlers: dict[type, object] = {  # action type -> its method (see _do)
            mb.Send: self._act_send, mb.Reply: self._act_reply, mb.Connect: self._act_connect,
            mb.Disconnect: self._act_disconnect, mb.MemberChanged: self._member_changed,
            mb.DeclaredDead: self._act_declared_dead, mb.Forgotten: self._act_forgotten,
            dp.RunLocal: self._act_run_local,
            dp.Forward: self._act_forward, dp.Deliver: self._act_deliver,
            dp.SendTo: self._act_send_to, dp.KillLocal: self._act_kill_local,
            SendAdvert: self._act_send_advert, Probe: self._act_probe,
            ParentChanged: self._act_parent_changed, RootChanged: self._act_root_changed,
        }

    def _do(self, actions: list, now: float) -> None:
        """Carry out the actions of the cores (this is the whole of the shell's job): each
        by the ``_act_*`` method for its type (``_handlers``)."""
        handlers = self._handlers
        for act in actions:
            handler = handlers.get(type(act))
            if handler is None:
                handler = self._handler_of(act)
            handler(act, now)

    def _handler_of(self, act):
        """The handler of an action whose exact type is not in the table (a subclass)."""
        for kind, handler in self._handlers.items():
            if isinstance(act, kind):
                return handler
        raise TypeError(f"unknown action {act!r}")

    def _act_send(self, act: mb.Send, now: float) -> None:
        self._send(act.address, m.encode(act.message), now)

    def _act_reply(self, act: mb.Reply, now: float) -> None:
        self._reply(act.identity, m.encode(act.message), now)

    def _act_connect(self, act: mb.Connect, now: float) -> None:
        self.transport.connect(act.address)

    def _act_disconnect(self, act: mb.Disconnect, now: float) -> None:
        self.transport.disconnect(act.address)

    def _act_declared_dead(self, act: mb.DeclaredDead, now: float) -> None:
        acts = self.dispatcher.declared_dead()
        log.warning("we were declared dead (incarnation %d) and refuted: %d call action(s) "
                    "to re-place or hand back", act.incarnation, len(acts))
        self._do(acts, now)

    def _act_forgotten(self, act: mb.Forgotten, now: float) -> None:
        self._do(self.dispatcher.peer_forgotten(act.node_id), now)

    def _act_run_local(self, act: dp.RunLocal, now: float) -> None:
        failed = self.pool.run(act.call, act.behind, now)
        self._sync_worker_fds()
        if failed is not None:
            self._do(self.dispatcher.local_done(failed), now)
        if self.pool.unstarted:
            self._unstarted(now)

    def _act_forward(self, act: dp.Forward, now: float) -> None:
        member = self.members.members.get(act.peer_id)
        sent = member is not None and member.conn is not None and self._send(
            member.conn, m.encode(act.call), now)
        if not sent:
            self._do(self.dispatcher.forward_failed(act.call.call_id, act.peer_id), now)

    def _act_deliver(self, act: dp.Deliver, now: float) -> None:
        if CallBook.owns(act.identity):
            self.book.finish(act.identity, act.result, now)
            return
        # (a member whose connection to our ROUTER is gone gets it over our connection
        # to it: Agent._flush)
        self._reply(act.identity, m.encode(act.result), now)

    def _act_send_to(self, act: dp.SendTo, now: float) -> None:
        member = self.members.members.get(act.peer_id)
        if member is None or member.conn is None or not self._send(
                member.conn, m.encode(act.message), now):
            self.dropped["unsent"] = self.dropped.get("unsent", 0) + 1

    def _act_kill_local(self, act: dp.KillLocal, now: float) -> None:
        how = self.pool.cancel(act.call_id)
        if how == "stopped":
            log.info("stopped the worker running %s: nobody wants its result", act.call_id)
        self._sync_worker_fds()
        if self.pool.unstarted:  # the calls that waited behind it
            self._unstarted(now)

    def _act_send_advert(self, act: SendAdvert, now: float) -> None:
        member = self.members.members.get(act.peer)
        if member is not None and member.conn is not None:
            self._send(member.conn, m.encode(m.TreeAdvert(self.node_id, act.advert)), now)

    def _act_probe(self, act: Probe, now: float) -> None:
        self.members.probe_soon(act.peer)

    def _act_parent_changed(self, act: ParentChanged, now: float) -> None:
        log.info("tree: parent %s -> %s (%s)", self._name_of(act.old), self._name_of(act.new),
                 act.reason)

    def _act_root_changed(self, act: RootChanged, now: float) -> None:
        log.info("tree: root %s -> %s (term %d)", self._name_of(act.old), self._name_of(act.new),
                 act.term)

    def _send(self, address: str, frame: bytes, now: float) -> bool:
        if self.delays:
            member = self.members.member_at(address)
            lag = self.delays.get(member.info.name, 0.0) if member is not None else 0.0
            if lag:
                self.delay_line.push(now + lag, ("send", address, frame))
                return True
        return self.transport.send(address, frame)

    def _reply(self, identity: bytes, frame: bytes, now: float) -> bool:
        if self.delays:
            member = self.members.members.get(identity.hex()) if len(identity) == 16 else None
            lag = self.delays.get(member.info.name, 0.0) if member is not None else 0.0
            if lag:
                self.delay_line.push(now + lag, ("reply", identity, frame))
                return True
        return self.transport.reply(identity, frame)

    def _flush_delayed(self, now: float) -> None:
        for kind, target, frame in self.delay_line.due(now):
            if kind == "send":
                self.transport.send(target, frame)
            else:
                self.transport.reply(target, frame)

    def _name_of(self, node_id: str | None) -> str:
        if node_id is None:
            return "none"
        if node_id == self.node_id:
            return f"{self.config.name} (self)"
        member = self.members.members.get(node_id)
        return member.info.name if member is not None else node_id[:8]

    def _member_changed(self, act: mb.MemberChanged, now: float) -> None:
        member = self.members.members.get(act.node_id)
        if act.new == "alive":
            self._do(self.dispatcher.peer_alive(act.node_id), now)
            self._do(self.tree.offer(act.node_id, member.rtt if member else None, now), now)
        elif act.new in ("dead", "left"):
            self._do(self.tree.lost(act.node_id, now), now)
        if act.old == "new":
            log.info("peer %s (%s) joined", act.name, act.node_id[:8])
        else:
            log.info("peer %s (%s): %s -> %s (incarnation %d)", act.name, act.node_id[:8], act.old,
                     act.new, act.incarnation)
        if act.new == "suspect":
            self._do(self.dispatcher.peer_suspect(act.node_id), now)
        elif act.new in ("dead", "left"):
            self._objects_peer_lost(act.node_id, act.name, now)
            c = self.dispatcher.counters
            before = c["reassigned"], c["redirected"], c["cancelled"]
            acts = self.dispatcher.peer_lost(act.node_id)
            moved, redirected, cancelled = (c["reassigned"] - before[0], c["redirected"] - before[1],
                                            c["cancelled"] - before[2])
            if moved or redirected or cancelled:
                where = ", ".join(sorted(self._describe(a) for a in acts)) or "none"
                log.info("peer %s lost: re-placed %d call(s), %d answered to their origin directly, "
                         "%d cancelled; actions: %s", act.name, moved, redirected, cancelled, where)
            self._do(acts, now)

    def _describe(self, act) -> str:
        if isinstance(act, dp.Forward):
            return f"to {self._name_of(act.peer_id)}"
        if isinstance(act, dp.RunLocal):
            return "here"
        if isinstance(act, dp.SendTo):
            return f"{type(act.message).__name__.lower()} {self._name_of(act.peer_id)}"
        if isinstance(act, dp.KillLocal):
            return "stopped here"
        return "failed"
