"""What reaches an agent from the network and from programs on its device: frames from its
ROUTER (clients over TCP, members), from its local socket's connections
(``mesh.agent.localserver``) and from its DEALERs to members, decoded (``Batch``es opened)
and handed, message by message, to the handler registered for the message's type.

``Input`` owns that table: one handler per message type, whatever socket the message
came on. Each part registers the messages it handles in its own constructor (the peers:
membership and tree messages; the object service: ``Fetch``, ``Free``, ``Object``; the
queries: ``Query``, ``Resources``), saying where they may come from: on our ROUTER
(requests from clients and members, answered by the connection's identity) and/or over
our own connections to members (answers to what we sent). What comes from elsewhere, or
is of no registered type, is dropped and counted as "unexpected". Input itself hands
calls to the dispatcher (``Call``, ``Cancel``, ``Reclaim``; ``Result`` and ``Handback``
from a member, on either socket) and the ledger's leases: a ``Holds`` question (from a
member or a client) is answered at once on its connection, a member's ``Held`` answer to
ours is taken on either socket, every frame on our ROUTER or local socket tells the
dispatcher its client is still there (``heard``), and a local connection that closed
stops its calls (``client_gone``). A handler is called as ``handler(msg, identity,
peer_id, address, now)``: ``identity`` is the ROUTER connection (None over our own
connections), ``peer_id`` the member that sent it if known, ``address`` our connection's
(None on the ROUTER). The agent's loop calls ``read_router``, ``read_local`` and
``read_dealer`` when the poll says so.

A handler that raises costs that message only (``mesh.agent.faults``): the exception is
counted and logged with the message's type and sender, and the next message is read. A
``Call`` whose handling failed before the dispatcher took it fails for its caller at
once (``AgentFault``), so that nobody waits for it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import zmq

from mesh.agent.actions import Actions
from mesh.agent.faults import Faults
from mesh.agent.transport import Transport
from mesh.discovery import membership as mb
from mesh.errors import DecodeError
from mesh.sched import dispatch as dp
from mesh.wire import messages as m
from mesh.wire.framing import FrameStream, StreamClosed
from mesh.wire.localsock import LOCAL_TAG

log = logging.getLogger("mesh.agent")
MAX_BATCH = 256  # frames read from one socket before looking at the others
_EVENTS, _POLLIN = zmq.EVENTS, int(zmq.POLLIN)


class Input:
    def __init__(self, max_frame: int, members: mb.Membership, dispatcher: dp.Dispatcher,
                 transport: Transport, actions: Actions, dropped: Counter, faults: Faults) -> None:
        self.max_frame = max_frame
        self.members = members
        self.dispatcher = dispatcher
        self.transport = transport
        self.actions = actions
        self.dropped = dropped  # the agent's drop reasons (this part counts most of them)
        self.faults = faults
        self._router: dict[type, Callable] = {}  # message type -> handler, on our ROUTER
        self._dealer: dict[type, Callable] = {}  # ... over our own connections
        self.bytes_in = 0
        self.batches_in = 0  # Batch frames received (from clients), and the frames in them
        self.batched_in = 0
        self.handle(m.Call, self._call)
        self.handle(m.Cancel, self._cancel)
        self.handle(m.Reclaim, self._reclaim)
        self.handle(m.Result, self._result, dealer=True)  # (a delegate's, or a far holder's)
        self.handle(m.Handback, self._handback, dealer=True)
        self.handle(m.Holds, self._holds)  # a lease question, from a member or a client
        self.handle(m.Held, self._held, dealer=True)  # the answer to ours (on our ROUTER
        # when the member's could not route it)

    def handle(self, kind: type, handler: Callable, router: bool = True,
               dealer: bool = False) -> None:
        """Hand messages of type ``kind`` to ``handler``, when they come on our ROUTER
        (``router``) and/or over our own connections (``dealer``). One handler per type."""
        if kind in self._router or kind in self._dealer:
            raise ValueError(f"{kind.__name__} already has a handler")
        if router:
            self._router[kind] = handler
        if dealer:
            self._dealer[kind] = handler

    # ------------------------------------------------------------------ reading

    def _unbatch(self, batch: m.Batch) -> list[m.Message]:
        msgs, errors = m.unbatch(batch, self.max_frame)
        self.batches_in += 1
        self.batched_in += len(batch.frames)
        for exc in errors:
            self.dropped[exc.reason] += 1
            log.debug("dropped a frame in a batch: %s", exc)
        return msgs

    def _decode(self, frame: bytes) -> m.Message | None:
        try:
            return m.decode(frame, self.max_frame)
        except DecodeError as exc:
            self.dropped[exc.reason] += 1
            log.debug("dropped a frame: %s", exc)
            return None

    def read_router(self, router: zmq.Socket, now: float) -> None:
        """Read what the poll said is waiting, up to MAX_BATCH messages. Whether one more
        is there is asked of the socket (EVENTS) after each: cheaper than the exception
        (zmq.Again) that reading an empty socket raises. A client's identity may not
        start with ``LOCAL_TAG`` (the local socket's connections' do)."""
        for _ in range(MAX_BATCH):
            try:
                parts = router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(parts) == 2:
                identity, frame = parts
                if identity[:1] == LOCAL_TAG and len(identity) != 16:
                    self.dropped["identity"] += 1
                    continue
                self._on_frame(identity, frame, now)
            else:
                self.dropped["frames"] += 1
            if not router.get(_EVENTS) & _POLLIN:
                return

    def read_local(self, stream: FrameStream, now: float) -> None:
        """A local connection (``mesh.agent.localserver``) is readable, or writable again."""
        if stream.out and not self.transport.flush_local(stream):
            return
        try:
            frames = stream.frames()
        except StreamClosed as exc:  # (closed, or a frame over the limit)
            if exc.oversized:
                self.dropped["oversized"] += 1
            log.debug("local connection closed: %s", exc)
            self.transport.drop_local(stream)
            # (nobody will read its results: its calls stop)
            self.actions.do(self.dispatcher.client_gone(stream.identity), now)
            return
        identity = stream.identity
        for frame in frames:
            self._on_frame(identity, frame, now)

    def _on_frame(self, identity: bytes, frame: bytes, now: float) -> None:
        """A frame from a client or a member on our ROUTER: a message, or a batch of them."""
        self.bytes_in += len(frame)
        self.dispatcher.heard(identity)  # (a client's calls stay while it talks: leases)
        msg = self._decode(frame)
        if type(msg) is m.Batch:
            for inner in self._unbatch(msg):
                self._on_router(identity, inner, now)
        elif msg is not None:
            self._on_router(identity, msg, now)

    def _on_router(self, identity: bytes, msg: m.Message, now: float) -> None:
        peer_id = identity.hex() if len(identity) == 16 else None
        if peer_id is not None and peer_id not in self.members.members:
            peer_id = None
        if peer_id is not None:
            self.actions.do(self.members.heard_from(peer_id, now), now)
        handler = self._router.get(type(msg))
        if handler is None:
            self.dropped["unexpected"] += 1
            return
        try:
            handler(msg, identity, peer_id, None, now)
        except Exception as exc:  # (a bug, or a resource refused: this message only)
            self._failed(msg, identity, peer_id, None, exc, now)

    def read_dealer(self, sock: zmq.Socket, address: str, now: float) -> None:
        """Our connection to the member at ``address`` is readable."""
        for _ in range(MAX_BATCH):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.bytes_in += len(frame)
            msg = self._decode(frame)
            if msg is None:
                continue
            member = self.members.member_at(address)
            peer_id = None if member is None else member.info.id
            if peer_id is not None:
                self.actions.do(self.members.heard_from(peer_id, now), now)
            for one in (self._unbatch(msg) if type(msg) is m.Batch else (msg,)):
                handler = self._dealer.get(type(one))
                if handler is None:
                    self.dropped["unexpected"] += 1
                else:
                    try:
                        handler(one, None, peer_id, address, now)
                    except Exception as exc:  # (this message only)
                        self._failed(one, None, peer_id, address, exc, now)
                if self.transport.dealers.get(address) is not sock:
                    return  # the message made us close this connection (or open a new one)

    def _failed(self, msg: m.Message, identity: bytes | None, peer_id: str | None,
                address: str | None, exc: Exception, now: float) -> None:
        """Handling ``msg`` raised: counted and logged; a call nobody took fails at once."""
        kind = type(msg).__name__
        if peer_id is not None:
            member = self.members.members.get(peer_id)
            sender = f"member {member.info.name if member is not None else peer_id[:8]}"
        elif address is not None:
            sender = address
        else:
            sender = f"client {identity.hex()[:16]}"
        self.faults.caught(f"input:{kind}", f"a {kind} from {sender}", exc, now)
        if type(msg) is m.Call and identity is not None and msg.call_id not in self.dispatcher.pending:
            self.transport.reply(identity, m.encode(m.Result(
                msg.call_id, False, b"", self.members.me.name, "AgentFault",
                f"the agent failed to take this call: {type(exc).__name__}: {str(exc)[:200]}")))

    # ------------------------------------------------------------------ the dispatcher's

    def _call(self, msg: m.Call, identity: bytes, peer_id: str | None, address: None,
              now: float) -> None:
        self.actions.do(self.dispatcher.submit(msg, identity, peer_id, now), now)

    def _cancel(self, msg: m.Cancel, identity: bytes, peer_id: str | None, address: None,
                now: float) -> None:
        self.actions.do(self.dispatcher.cancel(msg.call_id, identity, msg.owner), now)

    def _reclaim(self, msg: m.Reclaim, identity: bytes, peer_id: str | None, address: None,
                 now: float) -> None:
        if peer_id is None:  # (an idle peer asks for calls back: work stealing)
            self.dropped["unexpected"] += 1
            return
        self.actions.do(self.dispatcher.reclaim(msg.call_ids, peer_id, msg.free, msg.queued), now)

    def _result(self, msg: m.Result, identity: bytes | None, peer_id: str | None,
                address: str | None, now: float) -> None:
        if peer_id is None:  # (from a member only)
            self.dropped["unexpected"] += 1
            return
        self.actions.do(self.dispatcher.remote_result(msg, peer_id), now)

    def _handback(self, msg: m.Handback, identity: bytes | None, peer_id: str | None,
                  address: str | None, now: float) -> None:
        if peer_id is None:  # (from a member only)
            self.dropped["unexpected"] += 1
            return
        self.actions.do(self.dispatcher.handed_back(msg.call_id, peer_id), now)

    def _holds(self, msg: m.Holds, identity: bytes, peer_id: str | None, address: None,
               now: float) -> None:
        """Which of these calls we hold for the connection that asks (``Held``, at once)."""
        self.transport.reply(identity, m.encode(self.dispatcher.holding(msg.call_ids, identity)))

    def _held(self, msg: m.Held, identity: bytes | None, peer_id: str | None,
              address: str | None, now: float) -> None:
        if peer_id is None:  # (from a member only)
            self.dropped["unexpected"] += 1
            return
        self.actions.do(self.dispatcher.held(msg.held, msg.unknown, peer_id), now)
