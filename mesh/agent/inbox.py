"""What other threads hand an agent's loop: mDNS announcements and the requests of the
faces it serves (REST), and ``AgentHandle``, all that such a face may use of its agent.

No state is shared with those threads: they put an item on ``Inbox``'s queue and wake the
loop (``mesh.agent.waker``); the loop takes the items (``drain``) and, for a request,
sets the outcome on the ``Future`` the other thread waits on (``ask``, bounded by a
time-out). mDNS announcements are checked here, in the mDNS thread (protocol version,
and with a mesh key the announcement's authenticator), and counted when dropped.

A face never holds the agent: whoever composes them (``mesh join``) gives it the agent's
``handle()``, whose ``ask`` and ``query`` go through the inbox and whose
``request_leave`` starts a graceful leave. The agent knows a face only as something
attached to it (``Agent.attach``) that has an address, a status and a ``close``.
"""

from __future__ import annotations

import logging
import queue
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from mesh.agent.actions import Actions
from mesh.agent.callbook import CallBook
from mesh.agent.faults import Faults
from mesh.agent.peers import Peers
from mesh.agent.queries import Queries
from mesh.agent.waker import Waker
from mesh.discovery import membership as mb
from mesh.keys import MeshKey, announcement_fields, verify
from mesh.sched import dispatch as dp
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")

REQUESTS = ("rest-call", "call-state", "resources")  # what ``ask`` takes besides query names


@dataclass(frozen=True)
class AgentHandle:
    """What a face running in its own threads may use of an agent (thread-safe)."""

    name: str
    interface: str
    address: str  # the agent's comm address, HOST:PORT
    key: MeshKey | None  # the mesh key (None: plaintext)
    ask: Callable  # Inbox.ask: (what, timeout=5.0, arg=None) -> the loop's answer
    request_leave: Callable[[], None]  # begin a graceful leave

    def query(self, what: str, timeout: float = 5.0):
        """A query's answer (as ``Client.query``): its body; ValueError if refused."""
        answer = self.ask(what, timeout)
        if answer.error:
            raise ValueError(answer.error)
        return answer.body


class Inbox:
    def __init__(self, waker: Waker, key: MeshKey | None, members: mb.Membership,
                 dispatcher: dp.Dispatcher, book: CallBook, queries: Queries, peers: Peers,
                 actions: Actions, dropped: Counter, faults: Faults) -> None:
        self.waker = waker
        self.key = key
        self.members = members
        self.dispatcher = dispatcher
        self.book = book  # calls submitted over REST, until read
        self.queries = queries
        self.peers = peers
        self.actions = actions
        self.dropped = dropped  # the agent's drop reasons (this part counts mDNS's)
        self.faults = faults
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    # ------------------------------------------------------------------ other threads

    def ask(self, what: str, timeout: float = 5.0, arg=None):
        """``what`` is a query name (answered with an Answer), or "rest-call" (``arg``: a
        Call; returns its id), "call-state" (``arg``: a call id; returns the call's
        document or None) or "resources" (``arg``: a Resources; returns an Answer).
        Raises TimeoutError."""
        fut: Future = Future()
        if what in REQUESTS:
            self._queue.put((what, arg, fut))
        else:
            self._queue.put(("ask", what, fut))
        self.waker.wake()
        return fut.result(timeout)

    def on_announcement(self, ann) -> None:
        """mDNS thread: check the announcement's authenticator, queue it for the loop."""
        if ann.protocol != m.PROTOCOL:
            self._queue.put(("dropped", "mdns_version", None))
        elif self.key is not None and not verify(
            self.key.announcement_auth(announcement_fields(
                ann.node_id, ann.name, ann.protocol, ann.host, ann.port, ann.cpus)), ann.auth):
            self._queue.put(("dropped", "mdns_auth", None))
            log.warning("ignored an mDNS announcement with a wrong authenticator: %s at %s",
                        ann.name, ann.address)
        else:
            self._queue.put(("found", ann.node_id, ann.address))
        self.waker.wake()

    # ------------------------------------------------------------------ the loop

    def drain(self, now: float) -> None:
        """Take what other threads queued (the loop, when the waker woke it). An item
        whose handling raises is counted and logged, and its asker gets the exception."""
        while True:
            try:
                kind, a, b = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self._take(kind, a, b, now)
            except Exception as exc:  # (that item only)
                self.faults.caught(f"inbox:{kind}", f"a {kind} request from another thread", exc, now)
                if isinstance(b, Future) and not b.done():
                    b.set_exception(exc)

    def _take(self, kind: str, a, b, now: float) -> None:
        if kind == "found":
            self.actions.do(self.members.discovered(a, b, now), now)
        elif kind == "dropped":
            self.dropped[a] += 1
        elif kind == "ask":
            b.set_result(self.queries.answer(m.Query(0, a)))
        elif kind == "rest-call":  # a: a Call built by the REST thread
            self.book.add(a.call_id, a.function, now)
            self.actions.do(self.dispatcher.submit(a, CallBook.identity(a.call_id), None, now), now)
            b.set_result(a.call_id)
        elif kind == "resources":  # a: a Resources request (COMPSs endpoints)
            b.set_result(self.queries.change_resources(a, now))
        elif kind == "call-state":  # a: a call id
            entry = self.dispatcher.pending.get(a)
            where = None if entry is None else (
                entry.where if entry.where in ("local", "backlog") else self.peers.name_of(entry.where))
            b.set_result(self.book.view(a, where))
