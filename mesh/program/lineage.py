"""Lineage: how the program-side runtime recomputes a task output that was lost.

A task output kept at an agent (``mesh.sched.objects.Ref``) is lost when that agent leaves
or dies. The program's runtime (``mesh.program.runtime``) remembers, for every task that made
such an output, the call as it was sent (``record``). When a reader fails with
``ObjectLost`` for that output, or ``wait_on`` cannot fetch it, the runtime asks
``recover``: the producing task is run again (once, however many readers wait for it;
at most ``max_reruns`` times), with its own lost inputs recomputed the same way (its
call is sent with the newest value of each input, ``payload``), and when its result
comes (``rerun_done``) the lost outputs are renamed to the new ones and the waiting
readers go again. Plain bookkeeping, no I/O: the runtime sends and receives.

Entries are kept for the newest ``max_entries`` producers (an output whose producer
was forgotten fails its reader with the ``ObjectLost`` error instead); ``made`` and
``renamed`` hold only oids of kept entries (a renaming goes with its producer's entry),
so the whole is bounded by ``max_entries``, ``max_reruns`` and the outputs per task.

The runtime's side, which sends the reruns and carries on with what waited for them,
is ``mesh.program.recovery``. ``outputs_of`` and ``holdings`` are what both sides read
of a task's result and of a call's inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from mesh.program.containers import PASS, replace
from mesh.sched.objects import Ref
from mesh.wire.messages import Holding


@dataclass
class _Entry:
    ready: Any  # the graph's Ready of the task (its parameters and output versions)
    call: Any  # the runtime's _Call (function, slots)
    sent: tuple  # _execute's arguments as sent: (fn, args, kwargs, outs, files, returns, refs[, flags])
    outputs: list  # [(version, value)] as last produced
    reruns: int = 0
    waiting: list | None = None  # what to do when the running rerun finishes
    lost: list = field(default_factory=list)  # oids of its outputs that were lost (renamed)


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
            for oid in old.lost:  # (its renamings go with it)
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
        fn, args, kwargs, outs, files, returns, refs, *flags = self.entries[task_id].sent
        if self.renamed:  # (where the runtime put them: mesh.program.containers' walk)
            def newest(node: Any) -> Any:
                if type(node) is Ref and node.oid in self.renamed:
                    return self.latest(node.oid)
                return PASS

            args = tuple([replace(a, newest) for a in args])
            kwargs = {k: replace(v, newest) for k, v in kwargs.items()}
            outs = [replace(o, newest) for o in outs]
        return (fn, args, kwargs, outs, files, returns, refs, *flags)

    def rerun_done(self, task_id: str, outputs: list) -> tuple[list, list]:
        """The rerun produced ``outputs`` (same versions, in the same order). Returns
        (what was waiting, [(version, old value, new value)] for the lost ones)."""
        entry = self.entries[task_id]
        changes = []
        for (version, old), (_, new) in zip(entry.outputs, outputs, strict=True):
            if type(old) is Ref:
                self.renamed[old.oid] = new
                entry.lost.append(old.oid)
                self.made.pop(old.oid, None)  # (recover finds it in renamed from now on)
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
