"""Lineage: how the program-side runtime recomputes a task output that was lost.

A task output kept at an agent (``mesh.objects.Ref``) is lost when that agent leaves
or dies. The program's runtime (``mesh.runtime``) remembers, for every task that made
such an output, the call as it was sent (``record``). When a reader fails with
``ObjectLost`` for that output, or ``wait_on`` cannot fetch it, the runtime asks
``recover``: the producing task is run again (once, however many readers wait for it;
at most ``max_reruns`` times), with its own lost inputs recomputed the same way (its
call is sent with the newest value of each input, ``payload``), and when its result
comes (``rerun_done``) the lost outputs are renamed to the new ones and the waiting
readers go again. Plain bookkeeping, no I/O: the runtime sends and receives.

Entries are kept for the newest ``max_entries`` producers (an output whose producer
was forgotten fails its reader with the ``ObjectLost`` error instead), and so is what
leads to them: ``made`` (an output's producer) holds the current outputs of the kept
producers, ``renamed`` (a lost output's recomputed value) the lost outputs of the kept
producers; both go with their producer's entry.

``Recovery`` is the runtime's side (a mixin of ``mesh.runtime.Runtime``, run under its
lock like the rest of its graph events): it sends the reruns and carries on with what
waited for them.
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from mesh import slot
from mesh.messages import Holding
from mesh.objects import ObjectLost, Ref, refs_in, replace_refs
from mesh.sched.graph import Outcome
from mesh.taskexec import TaskFailed, _execute

log = logging.getLogger("mesh.runtime")


@dataclass
class _Entry:
    ready: Any  # the graph's Ready of the task (its parameters and output versions)
    call: Any  # the runtime's _Call (function, slots)
    sent: tuple  # the arguments of _execute as sent: (fn, args, kwargs, outs, files, returns, refs)
    outputs: list  # [(version, value)] as last produced
    reruns: int = 0
    waiting: list | None = None  # what to do when the running rerun finishes
    lost: list | None = None  # oids of its earlier outputs, lost and renamed (``renamed``)


class Lineage:
    def __init__(self, max_entries: int = 10_000, max_reruns: int = 3) -> None:
        self.max_entries = max_entries
        self.max_reruns = max_reruns
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.made: dict[str, str] = {}  # oid -> the task id that made it
        self.renamed: dict[str, Any] = {}  # lost oid -> its recomputed value (maybe a Ref)
        self.reruns = 0

    def record(self, task_id: str, ready: Any, call: Any, sent: tuple, outputs: list) -> None:
        """A task finished; ``outputs`` [(version, value)]. Kept if any value is a Ref."""
        if not any(type(v) is Ref for _, v in outputs):
            return
        self.entries[task_id] = _Entry(ready, call, sent, outputs)
        for _, v in outputs:
            if type(v) is Ref:
                self.made[v.oid] = task_id
        while len(self.entries) > self.max_entries:
            _, old = self.entries.popitem(last=False)
            for _, v in old.outputs:
                if type(v) is Ref:
                    self.made.pop(v.oid, None)
            for oid in old.lost or ():
                self.renamed.pop(oid, None)

    def latest(self, oid: str) -> Any:
        """The newest value of a lost object (following recomputations), or None."""
        value = None
        seen = 0
        while oid in self.renamed and seen < 64:
            value = self.renamed[oid]
            if type(value) is not Ref:
                break
            oid, seen = value.oid, seen + 1
        return value

    def recover(self, oid: str, then: Any) -> str | None:
        """The object ``oid`` is lost; ``then`` is to be done once it is recomputed.
        Returns "ready" (it was already: do ``then`` now), "started" (rerun its producer:
        ``payload(producer(oid))``), "joined" (a rerun is on its way), or None (cannot:
        its producer is unknown, or was rerun ``max_reruns`` times already)."""
        if oid in self.renamed:
            return "ready"
        pid = self.made.get(oid)
        entry = self.entries.get(pid) if pid is not None else None
        if entry is None:
            return None
        if entry.waiting is not None:
            entry.waiting.append(then)
            return "joined"
        if entry.reruns >= self.max_reruns:
            return None
        entry.reruns += 1
        self.reruns += 1
        entry.waiting = [then]
        return "started"

    def producer(self, oid: str) -> str:
        return self.made[oid]

    def payload(self, task_id: str) -> tuple:
        """The producer's call as sent, each lost input replaced by its newest value."""
        fn, args, kwargs, outs, files, returns, refs = self.entries[task_id].sent
        if self.renamed:
            found: list[Ref] = []
            refs_in((args, kwargs, outs), found, depth=4)
            values = {r.oid: self.latest(r.oid) for r in found if r.oid in self.renamed}
            if values:
                args, kwargs, outs = (replace_refs(args, values), replace_refs(kwargs, values),
                                      replace_refs(outs, values))
        return fn, args, kwargs, outs, files, returns, refs

    def rerun_done(self, task_id: str, outputs: list) -> tuple[list, list]:
        """The rerun produced ``outputs`` (same versions, in the same order). Returns
        (what was waiting, [(version, old value, new value)] for the lost ones)."""
        entry = self.entries[task_id]
        changes = []
        for (version, old), (_, new) in zip(entry.outputs, outputs, strict=True):
            if type(old) is Ref:
                self.renamed[old.oid] = new
                self.made.pop(old.oid, None)  # (renamed: ``recover`` finds it there)
                entry.lost = [*(entry.lost or ()), old.oid]
                changes.append((version, old, new))
                if type(new) is Ref:
                    self.made[new.oid] = task_id
        entry.outputs = outputs
        waiting, entry.waiting = entry.waiting or [], None
        return waiting, changes

    def rerun_failed(self, task_id: str) -> list:
        """The rerun failed: what was waiting (to fail in turn)."""
        entry = self.entries[task_id]
        waiting, entry.waiting = entry.waiting or [], None
        return waiting


class Recovery:
    """Mixin of ``mesh.runtime.Runtime``: lost task outputs (see the module docstring)."""

    def _fetch(self, ref: Ref) -> Any:
        """The value of a task output kept at an agent (``mesh.objects``); recomputed
        (``mesh.lineage``) when its holder lost it."""
        for _ in range(8):
            try:
                return pickle.loads(self.client.fetch(ref.oid, ref.holder))
            except ObjectLost as exc:
                done: Future = Future()
                with self.lock:
                    how = self._recover(ref.oid, ("wait", done))
                if how is None:
                    raise TaskFailed(f"a task output was lost and cannot be recomputed: {exc}") from exc
                with slot.lent():
                    done.result()
                with self.lock:
                    new = self.lineage.latest(ref.oid)
                if type(new) is not Ref:
                    return new
                ref = new
        raise TaskFailed(f"a task output was lost again and again: {ref!r}")

    def _rerun_result(self, task_id: str, ok: bool, value: Any) -> None:
        """The rerun of a task whose lost output is wanted (``mesh.lineage``) is done."""
        self._result(task_id, -1, ok, value, "rerun")

    def _recover(self, oid: str, then: tuple) -> str | None:
        """Under the lock: the output ``oid`` kept at an agent is lost; do ``then`` once
        it is made again (``mesh.lineage``). None: it cannot be."""
        how = self.lineage.recover(oid, then)
        if how == "ready":
            self._then(then, None)
        elif how == "started":
            self._send_rerun(self.lineage.producer(oid))
        return how

    def _send_rerun(self, task_id: str) -> None:
        fn, args, kwargs, outs, files, returns, refs = self.lineage.payload(task_id)
        log.info("mesh: running task %s again: an output of it kept at an agent was lost", task_id)
        try:
            self.client._submit_to(functools.partial(self._rerun_result, task_id), (), _execute,
                                   fn, args, kwargs, outs, files, returns, refs,
                                   inputs=holdings(refs), needs=self.lineage.entries[task_id].call.needs)
        except BaseException as exc:
            self._post(("rerunfailed", task_id, -1, exc))

    def _rerun_finished(self, task_id: str, ok: bool, payload: Any) -> None:
        if not ok and type(payload) is ObjectLost:  # its own input is lost too
            if self._recover(payload.oid, ("rerun", task_id)) is not None:
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
            if self._values.get(version) is old:
                self._values[version] = new
        for then in waiting:
            self._then(then, None)

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
                self._rerun_finished(target, False, exc)
        else:  # "resubmit": a task whose input was lost
            ready = self._running.get(target)
            if ready is None:
                return
            if exc is None:
                self._submit(ready)
            else:
                del self._running[target]
                self._call_id.pop(target, None)
                self._sent.pop(target, None)
                self._last_exc[target] = exc
                self._apply(self.graph.done(target, ready.attempt, Outcome.failed(
                    f"{type(exc).__name__}: {exc}"), time.monotonic()))


def outputs_of(ready: Any, call: Any, result: tuple) -> list:
    """The object outputs of a task's result as [(version, value)]: its returns, then
    its INOUT/OUT objects in parameter order (files are not included)."""
    value, outs, _files, _agent = result
    if call.returns == 1:
        outputs = [(ready.returns[0], value)]
    else:
        outputs = list(zip(ready.returns, value or (), strict=True))
    outs = list(outs)
    for access, info in zip(ready.params, call.slots, strict=True):
        if info.kind != "file" and access.write is not None:
            outputs.append((access.write, outs.pop(0)))
    return outputs


def holdings(refs: list | None) -> tuple:
    """Where a call's ``Ref`` inputs are: bytes per holder (``Call.inputs``)."""
    if not refs:
        return ()
    sizes: dict[str, int] = {}
    for r in refs:
        sizes[r.holder] = sizes.get(r.holder, 0) + r.size
    return tuple(Holding(h, n) for h, n in sizes.items())
