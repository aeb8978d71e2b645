"""What an agent sends: the cores' actions that put frames on the wire, and what becomes of
the frames that could not go.

``Outbox`` carries out ``Send``, ``Reply``, ``Connect`` and ``Disconnect`` (membership),
``Forward``, ``Deliver`` and ``SendTo`` (the dispatcher) and ``SendAdvert`` (the tree),
through the transport, which sends what a turn of the loop has for each destination at
its end (``flush``). A frame for a member that could not go is not simply lost: a call we
delegated is placed again (``forward_failed``), and a result or a lease answer (``Held``)
for a member whose connection to our ROUTER is gone goes over our own connection to it
(``SendTo``); the rest is counted by the transport (what a lease covers is found lost by
the next lease question: ``mesh.sched.leases``). Outcomes of calls submitted over REST are
kept in the call book (``mesh.agent.callbook``) instead of being sent.
"""

from __future__ import annotations

import time
from collections import Counter

from mesh.agent.actions import Actions
from mesh.agent.callbook import CallBook
from mesh.agent.transport import Transport
from mesh.discovery import membership as mb
from mesh.sched import dispatch as dp
from mesh.tree import SendAdvert
from mesh.wire import messages as m


class Outbox:
    def __init__(self, node_id: str, transport: Transport, members: mb.Membership,
                 dispatcher: dp.Dispatcher, book: CallBook, actions: Actions,
                 dropped: Counter) -> None:
        self.node_id = node_id
        self.transport = transport
        self.members = members
        self.dispatcher = dispatcher
        self.book = book  # calls submitted over REST: their outcomes stay here
        self.actions = actions
        self.dropped = dropped  # the agent's drop reasons (this part counts "unsent")
        actions.handle(mb.Send, self._send_act)
        actions.handle(mb.Reply, self._reply_act)
        actions.handle(mb.Connect, self._connect)
        actions.handle(mb.Disconnect, self._disconnect)
        actions.handle(dp.Forward, self._forward)
        actions.handle(dp.Deliver, self._deliver)
        actions.handle(dp.SendTo, self._send_to)
        actions.handle(SendAdvert, self._send_advert)

    # ------------------------------------------------------------------ actions

    def _send_act(self, act: mb.Send, now: float) -> None:
        self.transport.send(act.address, m.encode(act.message))

    def _reply_act(self, act: mb.Reply, now: float) -> None:
        self.transport.reply(act.identity, m.encode(act.message))

    def _connect(self, act: mb.Connect, now: float) -> None:
        self.transport.connect(act.address)

    def _disconnect(self, act: mb.Disconnect, now: float) -> None:
        self.transport.disconnect(act.address)

    def _forward(self, act: dp.Forward, now: float) -> None:
        member = self.members.members.get(act.peer_id)
        sent = member is not None and member.conn is not None and self.transport.send(
            member.conn, m.encode(act.call))
        if not sent:
            self.actions.do(self.dispatcher.forward_failed(act.call.call_id, act.peer_id), now)

    def _deliver(self, act: dp.Deliver, now: float) -> None:
        if CallBook.owns(act.identity):
            self.book.finish(act.identity, act.result, now)
            return
        # (a member whose connection to our ROUTER is gone gets it over our connection
        # to it: flush)
        self.transport.reply(act.identity, m.encode(act.result))

    def _send_to(self, act: dp.SendTo, now: float) -> None:
        member = self.members.members.get(act.peer_id)
        if member is None or member.conn is None or not self.transport.send(
                member.conn, m.encode(act.message)):
            self.dropped["unsent"] += 1

    def _send_advert(self, act: SendAdvert, now: float) -> None:
        member = self.members.members.get(act.peer)
        if member is not None and member.conn is not None:
            self.transport.send(member.conn, m.encode(m.TreeAdvert(self.node_id, act.advert)))

    def flush(self) -> None:
        """Send what waits for clients and members. Frames for members that could not
        go (no connection yet, or a full queue): calls we delegate are placed again
        (``forward_failed``), our results and lease answers for a member whose connection
        to our ROUTER is gone go over our own connection to it (``SendTo``); the transport
        counted them."""
        unsent = self.transport.flush()
        if not unsent:
            return
        now = time.monotonic()
        members, do = self.members, self.actions.do
        for dest, frame in unsent:
            if isinstance(dest, bytes):  # (our ROUTER could not route it: the member's id)
                peer_id, member = dest.hex(), members.members.get(dest.hex())
            else:
                member = members.member_at(dest)
                peer_id = None if member is None else member.info.id
            msg = m.decode(frame)  # (our own frame)
            for one in (m.unbatch(msg)[0] if type(msg) is m.Batch else (msg,)):
                if isinstance(dest, str) and isinstance(one, m.Call) and peer_id is not None:
                    do(self.dispatcher.forward_failed(one.call_id, peer_id), now)
                elif isinstance(dest, bytes) and isinstance(one, (m.Result, m.Held)) \
                        and member is not None:
                    do([dp.SendTo(peer_id, one)], now)
                # (the rest, e.g. a probe before the connection is up, is lost: the
                # transport counted it in dropped_sends)
