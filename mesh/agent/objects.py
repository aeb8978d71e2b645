"""The agent's side of task outputs kept where they were made (``mesh.sched.objects``).

``ObjectService`` owns the ``Objects`` core of this agent and feeds it with what workers,
clients and peers send (puts, gets, ``Fetch``, ``Free``, ``Object``) and with the loss of
peers; it carries out the core's actions (``Give``: an object to the worker or client
that waited for it; ``FetchFrom``: ask its holder), in the agent's loop like everything
else. Decisions live in ``mesh.sched.objects``.
"""

from __future__ import annotations

import logging
import os

from mesh.agent.actions import Actions
from mesh.agent.input import Input
from mesh.agent.pool import Worker, WorkerPool
from mesh.agent.transport import Transport
from mesh.discovery import membership as mb
from mesh.sched import dispatch as dp
from mesh.sched.objects import INLINE_MAX, FetchFrom, Give, Objects
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")


def store_settings() -> tuple[int, int]:
    """(inline_max, store bytes): ``MESH_INLINE_MAX`` bytes (0: every output travels
    inline), ``MESH_STORE_MB`` (default: a quarter of the memory, at most 1 GiB)."""
    inline_max = int(os.environ.get("MESH_INLINE_MAX", INLINE_MAX))
    store_mb = os.environ.get("MESH_STORE_MB")
    if store_mb is not None:
        return inline_max, int(float(store_mb) * (1 << 20))
    try:
        import psutil

        total = psutil.virtual_memory().total
    except Exception:  # no psutil or no /proc: a modest store
        total = 1 << 30
    return inline_max, min(total // 4, 1 << 30)


class ObjectService:
    def __init__(self, node_id: str, max_frame: int, members: mb.Membership,
                 dispatcher: dp.Dispatcher, pool: WorkerPool, transport: Transport, input: Input,
                 actions: Actions) -> None:
        inline_max, store_bytes = store_settings()
        self.node_id = node_id
        self.core = Objects(node_id, max_bytes=store_bytes, cache_bytes=min(64 << 20, store_bytes // 4))
        self.members = members
        self.dispatcher = dispatcher  # (whose call made an output: its origin and owner)
        self.pool = pool
        self.transport = transport
        self.actions = actions
        pool.inline_max = max(inline_max, 0)
        pool.room = self.core.room
        pool.max_put = max(max_frame - (64 << 10), 0)  # fetchable in one frame
        actions.handle(Give, self._give)
        actions.handle(FetchFrom, self._fetch_from)
        input.handle(m.Fetch, self._on_fetch)
        input.handle(m.Free, self._on_free)
        input.handle(m.Object, self._on_object, router=False, dealer=True)  # (what we fetched)

    def tick(self, now: float) -> None:
        """Fetches that took too long fail (their readers recompute)."""
        if self.core.fetching:
            self.actions.do(self.core.tick(now), now)

    def from_workers(self, now: float) -> None:
        """Puts and gets the pool read from workers (puts first: a worker sends its put
        before the result that refers to it)."""
        pool, core = self.pool, self.core
        if pool.puts:
            puts, pool.puts = pool.puts, []
            for call_id, oid, data in puts:
                entry = self.dispatcher.pending.get(call_id)
                origin, owner = (entry.call.origin, entry.call.owner) if entry is not None else ("", "")
                if not core.put(oid, data, origin, owner) and owner not in core.closed:
                    log.warning("object store full (%d of %d bytes): output %s of call %s is "
                                "lost and will be recomputed when read", core.nbytes,
                                core.max_bytes, oid[:8], call_id)
        if pool.gets:
            gets, pool.gets = pool.gets, []
            for worker, oid, holder in gets:
                self.actions.do(core.get(oid, holder, worker, now), now)

    def peer_lost(self, node_id: str, name: str, now: float) -> None:
        """A member died or left: fetches of its objects fail, its programs' objects go."""
        acts = self.core.holder_lost(node_id, f"{name} left or died")
        dropped = self.core.origin_lost(node_id)
        if acts or dropped:
            log.info("peer %s lost: %d fetch(es) of its objects failed (to be recomputed), "
                     "%d object(s) its programs owned dropped", name, len(acts), dropped)
        self.actions.do(acts, now)

    # ------------------------------------------------------------------ messages

    def _on_fetch(self, msg: m.Fetch, identity: bytes, peer_id: str | None, address: None,
                  now: float) -> None:
        """A ``Fetch``: of an object we hold, or, from one of our clients, of one held elsewhere."""
        if peer_id is not None or not msg.holder or msg.holder == self.node_id:
            data, error = self.core.serve(msg.oid)  # a peer (or a client) asks us, the holder
            self.transport.reply(identity, m.encode(m.Object(msg.oid, data is not None, data or b"", error)))
        else:  # one of our clients (a program's wait_on): we get it from its holder
            self.actions.do(self.core.get(msg.oid, msg.holder, identity, now), now)

    def _on_object(self, msg: m.Object, identity: None, peer_id: str | None, address: str,
                   now: float) -> None:
        """An object we asked its holder for."""
        self.actions.do(self.core.fetched(msg.oid, msg.data if msg.ok else None, msg.error), now)

    def _on_free(self, msg: m.Free, identity: bytes, peer_id: str | None, address: None,
                 now: float) -> None:
        if msg.owner:  # a client session ended: its objects go, here and everywhere
            self.core.owner_closed(msg.owner)
            if peer_id is None:  # from the client itself: tell every member that may
                frame = m.encode(m.Free("", [], msg.owner))  # hold some (a suspect one too:
                for member in self.members.members.values():  # it is alive, as a rule)
                    if member.state in ("alive", "suspect") and member.conn is not None:
                        self.transport.send(member.conn, frame)
            return
        if not msg.holder or msg.holder == self.node_id:
            self.core.free(msg.oids)
            return
        member = self.members.members.get(msg.holder)
        if member is not None and member.conn is not None:
            self.transport.send(member.conn, m.encode(msg))
        self.core.free(msg.oids)  # our cached copies too

    # ------------------------------------------------------------------ actions

    def _give(self, act: Give, now: float) -> None:
        if isinstance(act.waiter, Worker):
            self.pool.give(act.waiter, act.oid, act.data, act.error)
        else:  # a client's identity on our ROUTER
            self.transport.reply(act.waiter, m.encode(m.Object(act.oid, act.data is not None,
                                                               act.data or b"", act.error)))

    def _fetch_from(self, act: FetchFrom, now: float) -> None:
        member = self.members.members.get(act.holder)
        if (member is None or member.state not in ("alive", "suspect") or member.conn is None
                or not self.transport.send(member.conn, m.encode(m.Fetch(act.oid)))):
            self.actions.do(self.core.fetched(act.oid, None, "ObjectLost: its holder is not a live "
                                                            "member of this mesh"), now)
