"""What a client has in flight at its agent, and how what the agent sends back reaches
whoever waits for it.

``Requests`` is the client's table: its calls (a ``CallFuture`` or a ``Callback`` per call
id, ``mesh.client.futures``), its queries (a Future per query id) and its object fetches (the
Futures waiting for each object id). The client's threads hand it every frame they read
(``handle``); it completes what the frame answers. It shares the client's lock
(``mesh.client.client``: who reads the socket is decided under the same lock as what is in
flight), and counts what it could not use.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Future

from mesh.client.futures import complete
from mesh.errors import AgentUnreachable, DecodeError
from mesh.wire import messages as m


class Requests:
    """Calls, queries and fetches in flight; answers coming in."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock  # (the client's: see the module docstring)
        self.calls: dict[str, Future] = {}  # call id -> CallFuture or Callback
        self.queries: dict[int, Future] = {}  # qid -> Future of its Answer
        self.fetches: dict[str, list[Future]] = {}  # oid -> waiting fetch() calls
        # call ids are unique in the mesh: a random prefix per client and a counter (no
        # system call per call: os.urandom releases the GIL, and the I/O thread then takes it)
        self.id_prefix = os.urandom(8).hex()
        self.seq = itertools.count()
        self.qids = itertools.count(1)
        self.frames = 0  # frames the agent sent us: any is a sign of its life (the heartbeat)
        self.dropped = 0  # frames (or messages in a batch) that did not decode
        self.batches_received = 0  # frames from the agent that carried several messages
        self.late_results = 0  # results for calls already answered (or never made)

    # ------------------------------------------------------------------ the table

    def new_call_id(self) -> str:
        return f"{self.id_prefix}{next(self.seq):08x}"

    def add_call(self, call_id: str, fut) -> bool:
        """Register a call; True when nothing else was in flight (the caller may send it
        itself, see ``mesh.client.client``)."""
        with self.lock:
            alone = not (self.calls or self.queries or self.fetches)
            self.calls[call_id] = fut
        return alone

    def pop_call(self, call_id: str):
        with self.lock:
            return self.calls.pop(call_id, None)

    def call_ids(self) -> list[str]:
        with self.lock:
            return list(self.calls)

    def add_query(self) -> tuple[int, Future]:
        qid = next(self.qids)
        fut: Future = Future()
        with self.lock:
            self.queries[qid] = fut
        return qid, fut

    def end_query(self, qid: int) -> None:
        with self.lock:
            self.queries.pop(qid, None)

    def add_fetch(self, oid: str) -> Future:
        fut: Future = Future()
        with self.lock:
            self.fetches.setdefault(oid, []).append(fut)
        return fut

    def end_fetch(self, oid: str, fut: Future) -> None:
        with self.lock:
            waiters = self.fetches.get(oid)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self.fetches[oid]

    def inflight(self) -> bool:
        """Anything to read for (the caller holds ``lock``)."""
        return bool(self.calls or self.queries or self.fetches)

    def fail_all(self, exc: AgentUnreachable) -> None:
        """Nothing in flight will be answered: fail it."""
        with self.lock:
            futures = list(self.calls.values())
            self.calls.clear()
            queries = list(self.queries.values())
            fetches = [f for fs in self.fetches.values() for f in fs]
        for fut in futures + queries + fetches:
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------------ answers

    def handle(self, frame: bytes) -> None:
        """A frame from the agent: a message, or a batch of them."""
        self.frames += 1
        try:
            msg = m.decode(frame)
        except DecodeError:
            self.dropped += 1
            return
        if type(msg) is m.Batch:  # results (and answers) ready in one turn of the agent
            msgs, errors = m.unbatch(msg)
            self.dropped += len(errors)
            self.batches_received += 1
            for inner in msgs:
                self._message(inner)
        else:
            self._message(msg)

    def _message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Result):
            with self.lock:
                fut = self.calls.pop(msg.call_id, None)
            if fut is not None:
                complete(fut, msg)
            else:  # a second result for one call: the mesh promises this never happens
                self.late_results += 1
        elif isinstance(msg, m.Answer):
            with self.lock:
                qfut = self.queries.get(msg.qid)
            if qfut is not None and not qfut.done():
                qfut.set_result(msg)
        elif isinstance(msg, m.Object):
            with self.lock:
                waiters = self.fetches.pop(msg.oid, [])
            for f in waiters:
                if not f.done():
                    f.set_result(msg)
