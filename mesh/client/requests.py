"""The client's requests besides calls (``Client.submit``/``call``'s futures live in
``mesh.client.client``), and how what the agent sends back reaches whoever waits for it.

``ClientRequests`` is a mixin of ``mesh.client.client.Client``: it uses the client's lock, its
tables of what is in flight (``_futures``, ``_queries``, ``_fetches``) and its outbox
(``_post``); the client's threads call ``_handle`` with each frame they read.
"""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from mesh.client.futures import complete
from mesh.errors import AgentUnreachable, DecodeError
from mesh.sched.objects import ObjectLost
from mesh.wire import messages as m


class ClientRequests:
    """Queries, resource changes, object fetches and frees, cancels; answers coming in."""

    def fetch(self, oid: str, holder: str, timeout: float = 120.0) -> bytes:
        """The pickled bytes of a task output kept at the agent ``holder`` (a
        ``mesh.sched.objects.Ref``), through our agent. Raises ``ObjectLost`` when it is gone,
        AgentUnreachable when our agent does not answer."""
        fut: Future = Future()
        with self._lock:
            self._fetches.setdefault(oid, []).append(fut)
        self._post(m.encode(m.Fetch(oid, holder)))
        try:
            msg = fut.result(timeout)
        except (TimeoutError, FutureTimeout):
            raise AgentUnreachable(f"no object {oid[:8]} from agent at {self.address} "
                                   f"within {timeout} s") from None
        finally:
            with self._lock:
                waiters = self._fetches.get(oid)
                if waiters is not None and fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        del self._fetches[oid]
        if not msg.ok:
            raise ObjectLost(oid, msg.error or "ObjectLost")
        return msg.data

    def free(self, holder: str, oids: list[str]) -> None:
        """Nobody here reads these objects of ``holder`` again (non-blocking)."""
        if oids and not self._closed.is_set():
            self._post(m.encode(m.Free(holder, list(oids))))

    def cancel(self, call_id: str) -> bool:
        """Stop waiting for a call and tell the agent: it stops the call wherever it is
        (a task that timed out). Its result, if one still comes, is dropped. False if
        the call was not pending."""
        with self._lock:
            fut = self._futures.pop(call_id, None)
        if fut is None:
            return False
        self._post(m.encode(m.Cancel(call_id, "cancelled by the caller")))
        if isinstance(fut, Future) and not fut.done():
            fut.cancel()
        return True

    def call(self, function: str, args: tuple = (), kwargs: dict | None = None) -> Future:
        """Run ``module:function`` as the agent imports it, with picklable arguments."""
        return self._send_call(function, pickle.dumps((tuple(args), dict(kwargs or {}))))

    def query(self, what: str, timeout: float = 5.0, arg: str = "") -> Any:
        """Ask the agent ``status``, ``peers``, ``tree-node`` or ``progress``
        (``arg``: a call id). Raises AgentUnreachable on time-out, ValueError when the
        agent refuses."""
        return self._ask(lambda qid: m.Query(qid, what, arg), timeout)

    def resources(self, action: str, cpus: int = 0, peer: str = "", timeout: float = 5.0) -> Any:
        """COMPSs-style resource change (see ``messages.Resources``); returns the agent's
        status after it. Raises ValueError with the agent's message when refused."""
        return self._ask(lambda qid: m.Resources(qid, action, cpus, peer), timeout)

    def _ask(self, make, timeout: float) -> Any:
        """Send ``make(qid)`` and wait for the ``Answer`` with that qid."""
        qid = next(self._qids)
        fut: Future = Future()
        with self._lock:
            self._queries[qid] = fut
        self._post(m.encode(make(qid)))
        try:
            answer = fut.result(timeout)
        except (TimeoutError, FutureTimeout):  # distinct classes on 3.10
            why = f" ({self.auth_failure})" if self.auth_failure else (
                "" if self.key is None else " (or it does not hold this mesh key)")
            raise AgentUnreachable(f"no answer from agent at {self.address} within {timeout} s{why}") from None
        finally:
            with self._lock:
                self._queries.pop(qid, None)
        if answer.error:
            raise ValueError(answer.error)
        return answer.body

    def _fail_all(self, exc: AgentUnreachable) -> None:
        """Nothing in flight will be answered: fail it."""
        with self._lock:
            futures = list(self._futures.values())
            self._futures.clear()
            queries = list(self._queries.values())
            fetches = [f for fs in self._fetches.values() for f in fs]
        for fut in futures + queries + fetches:
            if not fut.done():
                fut.set_exception(exc)

    def _handle(self, frame: bytes) -> None:
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
                self._handle_message(inner)
        else:
            self._handle_message(msg)

    def _handle_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Result):
            with self._lock:
                fut = self._futures.pop(msg.call_id, None)
            if fut is not None:
                complete(fut, msg)
            else:  # a second result for one call: the mesh promises this never happens
                self.late_results += 1
        elif isinstance(msg, m.Answer):
            with self._lock:
                qfut = self._queries.get(msg.qid)
            if qfut is not None and not qfut.done():
                qfut.set_result(msg)
        elif isinstance(msg, m.Object):
            with self._lock:
                waiters = self._fetches.pop(msg.oid, [])
            for f in waiters:
                if not f.done():
                    f.set_result(msg)
