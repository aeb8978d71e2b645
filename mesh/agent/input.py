"""What reaches an agent from the network and from programs on its device: frames from its
ROUTER (clients over TCP, members), from its local socket's connections (``mesh.wire.localconn``)
and from its DEALERs to members, decoded and handed to the cores (membership, the tree, the
dispatcher) as events.

``AgentInput`` is a mixin of ``mesh.agent.agent.Agent`` (it uses the agent's transport, cores and
counters; the agent's loop calls ``_read_router``, ``_read_local`` and ``_read_dealer``
when the poll says so).
"""

from __future__ import annotations

import logging

import zmq

from mesh.discovery import membership as mb
from mesh.errors import DecodeError
from mesh.wire import messages as m
from mesh.wire.localconn import FrameStream, StreamClosed
from mesh.wire.localsock import LOCAL_TAG

log = logging.getLogger("mesh.agent")
MAX_BATCH = 256  # frames read from one socket before looking at the others
_EVENTS, _POLLIN = zmq.EVENTS, int(zmq.POLLIN)


class AgentInput:
    """Reading and dispatching input (a mixin of ``Agent``)."""

    def _unbatch(self, batch: m.Batch) -> list[m.Message]:
        msgs, errors = m.unbatch(batch, self.config.max_frame)
        self.batches_in += 1
        self.batched_in += len(batch.frames)
        for exc in errors:
            self.dropped[exc.reason] = self.dropped.get(exc.reason, 0) + 1
            log.debug("dropped a frame in a batch: %s", exc)
        return msgs

    def _decode(self, frame: bytes) -> m.Message | None:
        try:
            return m.decode(frame, self.config.max_frame)
        except DecodeError as exc:
            self.dropped[exc.reason] = self.dropped.get(exc.reason, 0) + 1
            log.debug("dropped a frame: %s", exc)
            return None

    def _read_router(self, now: float, router: zmq.Socket) -> None:
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
                    self.dropped["identity"] = self.dropped.get("identity", 0) + 1
                    continue
                self._on_frame(identity, frame, now)
            else:
                self.dropped["frames"] = self.dropped.get("frames", 0) + 1
            if not router.get(_EVENTS) & _POLLIN:
                return

    def _read_local(self, stream: FrameStream, now: float) -> None:
        """A local connection (``mesh.wire.localconn``) is readable, or writable again."""
        if stream.out and not self.transport.flush_local(stream):
            return
        try:
            frames = stream.frames()
        except StreamClosed as exc:  # (closed, or a frame over the limit)
            if exc.oversized:
                self.dropped["oversized"] = self.dropped.get("oversized", 0) + 1
            log.debug("local connection closed: %s", exc)
            self.transport.drop_local(stream)
            self._do(self.dispatcher.client_gone(stream.identity), now)  # (nobody reads its results)
            return
        identity = stream.identity
        for frame in frames:
            self._on_frame(identity, frame, now)

    def _on_frame(self, identity: bytes, frame: bytes, now: float) -> None:
        """A frame from a client or a member: a message, or a batch of them."""
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
            self._do(self.members.heard_from(peer_id, now), now)
        if isinstance(msg, mb.ROUTER_MESSAGES):
            self._do(self.members.receive(msg, now, identity=identity), now)
            if isinstance(msg, m.Ping):
                self._peer_load(msg.sender, msg.load, now)
        elif isinstance(msg, m.TreeAdvert):
            member = self.members.members.get(msg.sender)
            if peer_id != msg.sender or member is None or member.state not in ("alive", "suspect"):
                self.dropped["tree_advert"] = self.dropped.get("tree_advert", 0) + 1
            else:
                self._do(self.tree.heard(peer_id, msg.advert, member.rtt, now), now)
        elif isinstance(msg, m.Call):
            self._do(self.dispatcher.submit(msg, identity, peer_id, now), now)
        elif isinstance(msg, m.Cancel):
            self._do(self.dispatcher.cancel(msg.call_id, identity, msg.owner), now)
        elif isinstance(msg, m.Holds):  # a lease question, from a member or a client
            self.transport.reply(identity, m.encode(self.dispatcher.holding(msg.call_ids, identity)))
        elif isinstance(msg, m.Held) and peer_id is not None:  # (its ROUTER could not answer)
            self._do(self.dispatcher.held(msg.held, msg.unknown, peer_id), now)
        elif isinstance(msg, m.Fetch):
            self._on_fetch(identity, peer_id, msg, now)
        elif isinstance(msg, m.Free):
            self._on_free(msg, peer_id, now)
        elif isinstance(msg, m.Result) and peer_id is not None:  # a far holder answering us
            self._do(self.dispatcher.remote_result(msg, peer_id), now)
        elif isinstance(msg, m.Handback) and peer_id is not None:
            self._do(self.dispatcher.handed_back(msg.call_id, peer_id), now)
        elif isinstance(msg, m.Reclaim) and peer_id is not None:  # an idle peer (work stealing)
            self._do(self.dispatcher.reclaim(msg.call_ids, peer_id, msg.free, msg.queued), now)
        elif isinstance(msg, m.Query):
            self.transport.reply(identity, m.encode(self._answer(msg)))
        elif isinstance(msg, m.Resources):
            self.transport.reply(identity, m.encode(self.change_resources(msg, now)))
        else:
            self.dropped["unexpected"] = self.dropped.get("unexpected", 0) + 1

    def _read_dealer(self, sock: zmq.Socket, address: str, now: float) -> None:
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
            if member is not None:
                self._do(self.members.heard_from(member.info.id, now), now)
            for one in (self._unbatch(msg) if type(msg) is m.Batch else (msg,)):
                self._on_dealer(one, member, address, now)
                if address not in self.transport.dealers:
                    return  # the message made us close this connection

    def _on_dealer(self, msg: m.Message, member, address: str, now: float) -> None:
        if isinstance(msg, mb.DEALER_MESSAGES):
            self._do(self.members.receive(msg, now, via=address), now)
            if isinstance(msg, m.Pong):
                self._peer_load(msg.sender, msg.load, now)
        elif isinstance(msg, m.Result) and member is not None:
            self._do(self.dispatcher.remote_result(msg, member.info.id), now)
        elif isinstance(msg, m.Object):
            self._do(self.objects.fetched(msg.oid, msg.data if msg.ok else None, msg.error), now)
        elif isinstance(msg, m.Handback) and member is not None:
            self._do(self.dispatcher.handed_back(msg.call_id, member.info.id), now)
        elif isinstance(msg, m.Held) and member is not None:  # the answer to our lease question
            self._do(self.dispatcher.held(msg.held, msg.unknown, member.info.id), now)
        else:
            self.dropped["unexpected"] = self.dropped.get("unexpected", 0) + 1

    def _peer_load(self, sender: m.NodeInfo, load: m.Load, now: float) -> None:
        member = self.members.members.get(sender.id)
        if member is None or member.state != "alive":
            return
        acts = self.dispatcher.peer_load(sender.id, sender.name, load.cpus, load.free, member.rtt,
                                         load.queued, load.speed, load.memory, load.labels)
        self._do(acts, now)
