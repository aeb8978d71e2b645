"""The agent's side of task outputs kept where they were made (``mesh.sched.objects``).

A mixin of ``Agent``: feeds the ``Objects`` core with what workers, clients and peers
send (puts, gets, ``Fetch``, ``Object``, ``Free``) and carries out its actions, in the
agent's loop like everything else. Decisions live in ``mesh.sched.objects``.
"""

from __future__ import annotations

import logging
import os

from mesh.agent.pool import Worker
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


class AgentObjects:
    def _objects_setup(self) -> None:
        inline_max, store_bytes = store_settings()
        self.objects = Objects(self.node_id, max_bytes=store_bytes,
                               cache_bytes=min(64 << 20, store_bytes // 4))
        self.pool.inline_max = max(inline_max, 0)
        self.pool.room = self.objects.room
        self.pool.max_put = max(self.config.max_frame - (64 << 10), 0)  # fetchable in one frame
        self._handlers[Give] = self._act_give
        self._handlers[FetchFrom] = self._act_fetch_from

    def _worker_objects(self, now: float) -> None:
        """Puts and gets the pool read from workers (puts first: a worker sends its put
        before the result that refers to it)."""
        pool = self.pool
        if pool.puts:
            puts, pool.puts = pool.puts, []
            for call_id, oid, data in puts:
                entry = self.dispatcher.pending.get(call_id)
                origin, owner = (entry.call.origin, entry.call.owner) if entry is not None else ("", "")
                if not self.objects.put(oid, data, origin, owner) and owner not in self.objects.closed:
                    log.warning("object store full (%d of %d bytes): output %s of call %s is "
                                "lost and will be recomputed when read", self.objects.nbytes,
                                self.objects.max_bytes, oid[:8], call_id)
        if pool.gets:
            gets, pool.gets = pool.gets, []
            for worker, oid, holder in gets:
                self._do(self.objects.get(oid, holder, worker, now), now)

    def _on_fetch(self, identity: bytes, peer_id: str | None, msg: m.Fetch, now: float) -> None:
        if peer_id is not None or not msg.holder or msg.holder == self.node_id:
            data, error = self.objects.serve(msg.oid)  # a peer (or a client) asks us, the holder
            self._reply(identity, m.encode(m.Object(msg.oid, data is not None, data or b"", error)), now)
        else:  # one of our clients (a program's wait_on): we get it from its holder
            self._do(self.objects.get(msg.oid, msg.holder, identity, now), now)

    def _on_free(self, msg: m.Free, peer_id: str | None, now: float) -> None:
        if msg.owner:  # a client session ended: its objects go, here and everywhere
            self.objects.owner_closed(msg.owner)
            if peer_id is None:  # from the client itself: tell every member that may
                frame = m.encode(m.Free("", [], msg.owner))  # hold some (a suspect one too:
                for member in self.members.members.values():  # it is alive, as a rule)
                    if member.state in ("alive", "suspect") and member.conn is not None:
                        self._send(member.conn, frame, now)
            return
        if not msg.holder or msg.holder == self.node_id:
            self.objects.free(msg.oids)
            return
        member = self.members.members.get(msg.holder)
        if member is not None and member.conn is not None:
            self._send(member.conn, m.encode(msg), now)
        self.objects.free(msg.oids)  # our cached copies too

    def _objects_peer_lost(self, node_id: str, name: str, now: float) -> None:
        acts = self.objects.holder_lost(node_id, f"{name} left or died")
        dropped = self.objects.origin_lost(node_id)
        if acts or dropped:
            log.info("peer %s lost: %d fetch(es) of its objects failed (to be recomputed), "
                     "%d object(s) its programs owned dropped", name, len(acts), dropped)
        self._do(acts, now)

    def _act_give(self, act: Give, now: float) -> None:
        if isinstance(act.waiter, Worker):
            self.pool.give(act.waiter, act.oid, act.data, act.error)
        else:  # a client's identity on our ROUTER
            self._reply(act.waiter, m.encode(m.Object(act.oid, act.data is not None,
                                                      act.data or b"", act.error)), now)

    def _act_fetch_from(self, act: FetchFrom, now: float) -> None:
        member = self.members.members.get(act.holder)
        if (member is None or member.state not in ("alive", "suspect") or member.conn is None
                or not self._send(member.conn, m.encode(m.Fetch(act.oid)), now)):
            self._do(self.objects.fetched(act.oid, None, "ObjectLost: its holder is not a live "
                                                         "member of this mesh"), now)
