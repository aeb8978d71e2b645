"""Recovery: the program-side runtime's part that makes lost task outputs again.

Theory of operation
-------------------
A task output kept at an agent (``mesh.sched.objects.Ref``) is lost when its holder
leaves or dies. ``Recovery`` owns the ``Lineage`` of such outputs (``mesh.program.lineage``:
plain bookkeeping of how each was made) and does the rest: it sends the reruns and
carries on with what waited for them. It runs under the runtime's lock, as the rest of
the runtime's graph events, except ``fetch`` (the program thread).

* A task's result that holds a ``Ref`` is recorded (``record``: the call as it was sent).
* When something finds an output lost it asks ``recover(oid, then)``; ``then`` is what
  goes on once the output is made again: ``("wait", Future)`` for a ``wait_on``,
  ``("rerun", task id)`` for a rerun whose own input was lost too, ``("resubmit", task
  id)`` for a reader whose call failed with ``ObjectLost``, which the runtime sends again
  (``resubmit``) or, when the output cannot be made again, fails (``fail``).
* A rerun is a call of the producer as it was sent, its own lost inputs replaced by
  their newest values; its result comes back as a runtime event (``deliver``, kind
  "rerun") and is handled here (``rerun_finished``): the lost outputs are renamed to
  the new ones in the runtime's table of values (``values``) and what waited goes on.

``fetch`` never waits without a bound: it waits for a rerun in slices of
``WAIT_SLICE``, and gives up (``TaskFailed``) when the runtime's client closed, and
after ``wait_limit`` seconds in all. ``abandon`` (the runtime broke) fails every
``wait_on`` waiting here at once.
"""

from __future__ import annotations

import functools
import logging
import pickle
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from mesh.program import slot
from mesh.program.lineage import Lineage, holdings, outputs_of
from mesh.program.taskexec import TaskFailed, _execute
from mesh.sched.objects import ObjectLost, Ref

log = logging.getLogger("mesh.runtime")

RERUN_WAIT = 600.0  # s a wait_on may wait for a lost output to be made again, at most
WAIT_SLICE = 1.0  # s between its looks at whether the connection still stands


class Recovery:
    """Lost task outputs made again (see the module docstring). Given what it needs
    of the runtime explicitly: its client, its lock, its table of values (version ->
    value, where renamed outputs go), and three callbacks run under the lock:
    ``resubmit(task_id)`` (send a reader again), ``fail(task_id, exc)`` (its input
    cannot be made again) and ``deliver(task_id, attempt, ok, value, kind)`` (a
    rerun's result, handed to the runtime as an event)."""

    def __init__(self, client: Any, lock: threading.Lock, values: dict, resubmit, fail, deliver,
                 lineage: Lineage | None = None, wait_limit: float = RERUN_WAIT) -> None:
        self.client = client
        self.lock = lock
        self.values = values
        self.resubmit = resubmit
        self.fail = fail
        self.deliver = deliver
        self.lineage = Lineage() if lineage is None else lineage
        self.wait_limit = wait_limit

    # ------------------------------------------------------------------ program thread

    def fetch(self, ref: Ref) -> Any:
        """The value of a task output kept at an agent; made again when its holder lost
        it. Raises ``TaskFailed`` when it cannot be (or not within the bound)."""
        for _ in range(8):
            try:
                return pickle.loads(self.client.fetch(ref.oid, ref.holder))
            except ObjectLost as exc:
                done: Future = Future()
                with self.lock:
                    how = self.recover(ref.oid, ("wait", done))
                if how is None:
                    raise TaskFailed(f"a task output was lost and cannot be recomputed: {exc}") from exc
                with slot.lent():
                    self._await(done, ref)
                with self.lock:
                    new = self.lineage.latest(ref.oid)
                if type(new) is not Ref:
                    return new
                ref = new
        raise TaskFailed(f"a task output was lost again and again: {ref!r}")

    def _await(self, done: Future, ref: Ref) -> None:
        deadline = time.monotonic() + self.wait_limit
        while True:
            try:
                done.result(timeout=max(min(WAIT_SLICE, deadline - time.monotonic()), 0.0))
                return
            except FutureTimeout:
                if self.client._closed.is_set():
                    raise TaskFailed(f"the connection closed while a lost task output ({ref!r}) "
                                     f"was being made again") from None
                if time.monotonic() >= deadline:
                    raise TaskFailed(f"a lost task output ({ref!r}) was not made again within "
                                     f"{self.wait_limit:.0f} s") from None

    # ------------------------------------------------------------------ under the lock

    def record(self, task_id: str, ready: Any, call: Any, sent: tuple, outputs: list) -> None:
        """A task finished; its outputs [(version, value)] (kept if one is a ``Ref``)."""
        self.lineage.record(task_id, ready, call, sent, outputs)

    def recover(self, oid: str, then: tuple) -> str | None:
        """The output ``oid`` kept at an agent is lost; do ``then`` once it is made again.
        None: it cannot be (its producer is unknown, or was rerun too often)."""
        how = self.lineage.recover(oid, then)
        if how == "ready":
            self._then(then, None)
        elif how == "started":
            self._send_rerun(self.lineage.producer(oid))
        return how

    def rerun_finished(self, task_id: str, ok: bool, payload: Any) -> None:
        """The rerun of ``task_id`` ended: ``payload`` is its result, or the exception."""
        if not ok and type(payload) is ObjectLost:  # its own input is lost too
            if self.recover(payload.oid, ("rerun", task_id)) is not None:
                return
        if ok:
            entry = self.lineage.entries[task_id]
            try:
                outputs = outputs_of(entry.ready, entry.call, payload)
            except Exception as exc:
                ok, payload = False, exc
        if not ok:
            for then in self.lineage.rerun_failed(task_id):
                self._then(then, payload)
            return
        waiting, changes = self.lineage.rerun_done(task_id, outputs)
        for version, old, new in changes:
            if self.values.get(version) is old:
                self.values[version] = new
        for then in waiting:
            self._then(then, None)

    def abandon(self, err: BaseException) -> None:
        """The runtime broke: every ``wait_on`` waiting for a rerun fails with ``err``."""
        for entry in self.lineage.entries.values():
            waiting, entry.waiting = entry.waiting or [], None
            for kind, target in waiting:
                if kind == "wait" and not target.done():
                    target.set_exception(err)

    def _send_rerun(self, task_id: str) -> None:
        fn, args, kwargs, outs, files, returns, refs, *flags = self.lineage.payload(task_id)
        log.info("mesh: running task %s again: an output of it kept at an agent was lost", task_id)
        try:
            self.client._submit_to(functools.partial(self.deliver, task_id, -1, kind="rerun"), (),
                                   _execute, fn, args, kwargs, outs, files, returns, refs, *flags,
                                   inputs=holdings(refs), needs=self.lineage.entries[task_id].call.needs)
        except BaseException as exc:  # (handed over as an event: we hold the lock)
            self.deliver(task_id, -1, False, exc, kind="rerun")

    def _then(self, then: tuple, exc: BaseException | None) -> None:
        """Go on with what waited for a lost output (``exc``: it could not be made)."""
        kind, target = then
        if kind == "wait":
            if exc is None:
                target.set_result(None)
            else:
                target.set_exception(exc)
        elif kind == "rerun":
            if exc is None:
                self._send_rerun(target)
            else:
                self.rerun_finished(target, False, exc)
        elif exc is None:  # "resubmit": a reader whose input was lost
            self.resubmit(target)
        else:
            self.fail(target, exc)
