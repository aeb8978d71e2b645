"""What a client has in flight at its agent, and how what the agent sends back reaches
whoever waits for it.

``Requests`` is the client's table: its calls (a ``CallFuture`` or a ``Callback`` per call
id, ``mesh.client.futures``), its queries (a Future per query id) and its object fetches (the
Futures waiting for each object id). The client's threads hand it every frame they read
(``handle``); it completes what the frame answers. It shares the client's lock
(``mesh.client.client``: who reads the socket is decided under the same lock as what is in
flight), and counts what it could not use.

It also keeps a lease on each call (``leases``: ``mesh.sched.leases.ClientLeases``, with the
call's frame): a frame lost between the client and its agent on a connection that stays up
(a full buffer, a reply the agent could not send) would leave the call waiting for ever.
The client's thread asks it each time it wakes (``questions``): once a lease period
(``CLIENT_PERIOD``) it has the agent asked about the calls without news for a whole
period (``Holds``); the agent's answer (``Held``) confirms those it holds, and those it
does not hold are sent again, with the same call id (``resend``: the client's queue), at
most ``CLIENT_RESENDS`` times each, after which the call fails with ``AgentUnreachable``
(the agent never takes it). Only the first result of a call completes its future.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future

from mesh.client.futures import complete
from mesh.errors import AgentUnreachable, DecodeError
from mesh.sched.leases import ClientLeases
from mesh.wire import messages as m


class Requests:
    """Calls, queries and fetches in flight; answers coming in."""

    def __init__(self, lock: threading.Lock, resend: Callable[[bytes], None] = lambda frame: None,
                 agent: str = "the agent") -> None:
        """``resend``: queues a frame for the agent (a call sent again); ``agent``: how
        errors name it."""
        self.lock = lock  # (the client's: see the module docstring)
        self.resend = resend
        self.agent = agent
        self.leases = ClientLeases()  # a lease on each call, with its frame
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

    def add_call(self, call_id: str, fut, frame: bytes = b"") -> bool:
        """Register a call (``frame``: its encoded Call, sent again if the agent loses it);
        True when nothing else was in flight (the caller may send it itself, see
        ``mesh.client.client``)."""
        with self.lock:
            alone = not (self.calls or self.queries or self.fetches)
            self.calls[call_id] = fut
            self.leases.sent(call_id, frame)
        return alone

    def pop_call(self, call_id: str):
        with self.lock:
            self.leases.ended(call_id)
            return self.calls.pop(call_id, None)

    def questions(self, now: float) -> list[bytes]:
        """Lease questions to send the agent now (``Holds`` frames; none but once a
        period, and only about calls without news for a whole period)."""
        with self.lock:
            asks = self.leases.tick(now) if self.calls else []
        return [m.encode(m.Holds(ids)) for ids in asks]

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

    def fail_all(self, exc: AgentUnreachable) -> list[str]:
        """Nothing in flight will be answered: fail it. Returns the ids of the calls."""
        with self.lock:
            futures = list(self.calls.values())
            ids = list(self.calls)
            self.calls.clear()
            self.leases.clear()
            queries = list(self.queries.values())
            fetches = [f for fs in self.fetches.values() for f in fs]
        for fut in futures + queries + fetches:
            if not fut.done():
                fut.set_exception(exc)
        return ids

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
                self.leases.ended(msg.call_id)
            if fut is not None:
                complete(fut, msg)
            else:  # a result for a call already answered, cancelled or given up on
                self.late_results += 1
        elif isinstance(msg, m.Held):  # the agent's answer to our lease question
            with self.lock:
                again, failed = self.leases.answered(msg.held, msg.unknown)
                futures = [f for f in (self.calls.pop(c, None) for c in failed) if f is not None]
            for frame in again:
                self.resend(frame)
            for fut in futures:
                if not fut.done():
                    fut.set_exception(AgentUnreachable(
                        f"{self.agent} did not take call {fut.call_id} after "
                        f"{self.leases.resends + 1} sends (it could not read it?)"))
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
