"""The PyCOMPSs-style programming model: ``@task``, ``@constraint``, ``wait_on``,
``barrier``, ``TaskGroup`` and the parameter directions.

With no mesh connected (``mesh.client.client.default_client()`` is None) a task call simply
runs the function at once and returns its value: ``wait_on`` is then the identity and
``barrier`` does nothing, as PyCOMPSs without its runtime. A task called *inside* a
task on an agent goes to that agent's mesh (nested tasks; a task blocked in ``wait_on``
lends its slot, so recursive graphs cannot deadlock the mesh).

With a mesh connected (``mesh.connect(...)``) a task call returns a ``TaskFuture`` at
once (a tuple of them for ``returns`` > 1, None for ``returns=0``) and the program-side
runtime (``mesh.program.runtime``) runs the task on the mesh when its inputs exist:

* futures passed as arguments, also inside lists, tuples and dicts (their values, up
  to 100 deep: the rule of ``mesh.program.containers``), are dependencies, and so are
  objects a task writes passed there; one inside a set, a dict key or a subclass of
  list, tuple or dict raises TypeError at the call (pass a list);
* ``INOUT``/``OUT`` objects get a new version from the task (the worker's mutated copy):
  as in PyCOMPSs the program sees it only through ``obj = wait_on(obj)``, which
  returns the latest version (a new object; ``obj`` itself is not changed), also for
  such objects inside lists, tuples and dicts (``C = wait_on(C)`` on a list of lists
  of INOUT blocks). Passing such an object again as a plain argument reads its latest
  version;
* ``FILE_IN``/``FILE_OUT``/``FILE_INOUT`` parameters are paths on the program's
  machine: the file's bytes travel with the task (read when the task is called) and
  written bytes come back and are written to the path when the task ends (only the
  latest version is written). ``wait_on_file(path)`` waits for that. None instead of a
  path reaches the task as None, with no file (PyCOMPSs' null parameter);
* ``on_failure``: RETRY (run once more, then as FAIL), CANCEL_SUCCESSORS (the tasks
  that read its outputs are cancelled: their futures raise ``TaskCancelled``), FAIL
  (every pending task is cancelled, later calls are cancelled at once and ``barrier``
  raises ``TaskFailed``; the graph of this connection stays failed) and IGNORE (its
  outputs become None for the tasks that read them; ``wait_on`` on them raises);
* ``time_out`` seconds per attempt: the attempt is stopped where it runs (its worker is
  killed and replaced) and a late result is ignored;
* ``@constraint(cpus=..., memory=..., labels=[...])``: the task runs only on an agent
  with that many slots (it takes them all while it runs), offering at least that much
  memory (``join --memory``) and every label (``join --label``); it waits while such
  agents are busy, and fails with ``NoSuitableAgent`` when no agent that fits is known
  for ``MESH_UNFIT_GRACE`` seconds (30 by default, set on the agent);
* outputs that pickle to more than 100 kB stay at the agent that made them
  (``mesh.sched.objects``): readers run there or fetch them from it, and a lost one is
  recomputed from its lineage;
* ``wait_on`` on a failed task raises the task's own exception, with the remote
  traceback as ``__cause__``;
* tasks a task calls and does not wait for ("fire and forget") are never dropped: the
  task's call ends once they have ended (its worker waits for them, lending its slot),
  as PyCOMPSs waits for every task at the end of the main program. Their graph lives
  in the worker, which the agent may stop or give other work once the call is over,
  so nobody would receive their results otherwise. If one of them fails the graph
  (FAIL, or RETRY used up), the call fails with ``TaskFailed``, as ``barrier`` would
  raise, and the worker's next call starts with a new graph.

Limits: a TaskFuture cannot be returned by a task (resolve inner futures inside it);
an object used as INOUT/OUT is held by the runtime for the life of the connection (its
id names the datum); plain
arguments are serialized when their task is sent, so changing them before that is
seen by the task; file contents travel in memory inside the call frames (64 MiB cap);
a failed graph (FAIL) stays failed for this connection (connect again to start anew).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from mesh.program import runtime as _rt
from mesh.program.containers import PASS, replace
from mesh.program.runtime import GraphBroken, TaskCancelled, TaskFailed, TaskFuture, TaskTimedOut
from mesh.sched.taskspec import (
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    IN,
    INOUT,
    OUT,
    Direction,
    OnFailure,
)

__all__ = [
    "FILE_IN", "FILE_INOUT", "FILE_OUT", "IN", "INOUT", "OUT", "Constraints", "GraphBroken", "Task",
    "TaskCancelled", "TaskFailed", "TaskFuture", "TaskGroup", "TaskTimedOut", "barrier",
    "constraint", "task", "wait_on", "wait_on_file",
]


@dataclass(frozen=True)
class Constraints:
    """What a task needs from the agent that runs it (placement honours it: see the
    module docstring)."""

    cpus: int = 1
    memory: int | None = None  # bytes
    labels: tuple[str, ...] = field(default_factory=tuple)


def constraint(cpus: int = 1, memory: int | None = None, labels=()):
    """``@constraint(cpus=..., memory=..., labels=[...])``: what a task needs of the
    agent that runs it (slots, bytes offered, capabilities), above or below ``@task``;
    stored on the function (``fn.__mesh_constraints__``, also ``Task.constraints``) and
    sent with each call. ``memory`` is in bytes."""
    c = Constraints(int(cpus), memory, tuple(labels))

    def deco(fn):
        fn.__mesh_constraints__ = c
        if isinstance(fn, Task):
            fn.fn.__mesh_constraints__ = c
        return fn

    return deco


class Task:
    """A function decorated with ``@task``; call it like the function."""

    def __init__(self, fn, returns: Any, priority: bool, on_failure: str, time_out: float | None,
                 directions: dict[str, Direction]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)
        self.signature = inspect.signature(fn)
        names = {p.name for p in self.signature.parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        unknown = set(directions) - names
        if unknown:
            raise TypeError(f"@task on {fn.__name__}: no parameter named {sorted(unknown)}")
        self.directions = {k: Direction(v) for k, v in directions.items()}
        if isinstance(returns, bool) or not isinstance(returns, int):
            returns = 1 if returns else 0  # PyCOMPSs also accepts a type, e.g. returns=list
        if returns < 0:
            raise ValueError("returns must be >= 0")
        self.returns = returns
        self.priority = bool(priority)
        self.on_failure = OnFailure(on_failure)
        if time_out is not None and not time_out > 0:
            raise ValueError("time_out must be positive or None")
        self.time_out = time_out

    @property
    def constraints(self) -> Constraints | None:
        return getattr(self.fn, "__mesh_constraints__", None)

    def __call__(self, *args, **kwargs):
        rt = _rt.current()
        if rt is None:  # no mesh: plain sequential execution
            args, kwargs = wait_on(list(args)), wait_on(kwargs)
            return self.fn(*args, **kwargs)
        ids = rt.call(self.fn, self.signature, self.directions, args, kwargs, self.returns,
                      self.fn.__name__, self.priority, self.on_failure, self.time_out,
                      list(_group_stack()))
        futures = tuple(TaskFuture(rt, ids[0], d) for d in ids[1:])
        if self.returns == 0:
            return None
        return futures[0] if self.returns == 1 else futures

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"<task {self.fn.__qualname__}>"


def task(fn=None, *, returns: Any = 1, priority: bool = False, on_failure: str = "RETRY",
         time_out: float | None = None, **directions):
    """``@task(returns=1, priority=False, on_failure="RETRY", time_out=None, x=INOUT, ...)``:
    calling the function makes a task (see the module docstring). ``directions`` map
    parameter names to IN (default), OUT, INOUT, FILE_IN, FILE_OUT or FILE_INOUT."""
    def deco(f):
        return Task(f, returns, priority, on_failure, time_out, directions)

    return deco if fn is None else deco(fn)


def _wait_one(x: Any) -> Any:
    """``x`` with every future and every object a task writes (INOUT/OUT) inside it
    (``mesh.program.containers``: lists, tuples and dict values, up to its depth limit;
    ``x`` itself too) replaced by its value, the latest version for an object; one
    ``wait`` per runtime, so a task waiting here lends its slot once."""
    objects_rt = _rt.current(create=False)
    found: dict[int, tuple] = {}  # id(node) -> (runtime, data id, writer task id or None)

    def collect(node: Any) -> Any:
        if isinstance(node, TaskFuture):
            found[id(node)] = (node.runtime, node.data_id, node.task_id)
            return node
        if objects_rt is not None:
            data_id = objects_rt.object_data_id(node)
            if data_id is not None:  # an object a task writes: its latest version
                found[id(node)] = (objects_rt, data_id, None)
                return node
        return PASS

    replace(x, collect)
    if not found:
        return x
    by_rt: dict[int, list[int]] = {}
    for key, (rt, _, _) in found.items():
        by_rt.setdefault(id(rt), []).append(key)
    values: dict[int, Any] = {}
    for keys in by_rt.values():
        got = found[keys[0]][0].wait([found[k][1:] for k in keys])
        values.update(zip(keys, got, strict=True))
    return replace(x, lambda node: values.get(id(node), PASS))


def wait_on(*objs: Any) -> Any:
    """The value of each argument: futures become their values and INOUT/OUT objects
    their latest version, also inside lists, tuples and dict values, 100 deep (as
    PyCOMPSs' ``compss_wait_on``, see ``mesh.program.containers``); anything else is
    returned as is. One argument gives one value, several a list (as PyCOMPSs).
    Raises what a failed task raised, or ``TaskCancelled``."""
    values = [_wait_one(o) for o in objs]
    return values[0] if len(values) == 1 else values


def wait_on_file(path: str | os.PathLike) -> str:
    """Wait until the tasks that write this file (FILE_OUT/FILE_INOUT) are done and
    their output is written to ``path``; returns ``path``. Raises like ``wait_on``."""
    rt = _rt.current(create=False)
    if rt is not None:
        data_id = "file:" + os.path.abspath(os.fspath(path))
        if rt.known(data_id):
            rt.wait([(data_id, None)])
    return os.fspath(path)


def barrier() -> None:
    """Wait until every task called so far has finished (or failed or was cancelled).
    Raises ``TaskFailed`` (the failing task's exception as ``__cause__``) if the graph
    failed (a task under FAIL, or RETRY with its retry used up)."""
    rt = _rt.current(create=False)
    if rt is not None:
        rt.barrier()


_local = threading.local()


def _group_stack() -> list:
    return getattr(_local, "groups", [])


class TaskGroup:
    """``with TaskGroup("name"):`` — leaving the block waits for the tasks called inside
    it (in this thread) and raises ``TaskFailed`` if one of them failed (unless the
    block itself raised). Without a mesh it does nothing."""

    def __init__(self, name: str, implicit_barrier: bool = True) -> None:
        self.name = name
        self.implicit_barrier = implicit_barrier
        self._group = _rt._Group()
        self._rt: _rt.Runtime | None = None

    def __enter__(self) -> TaskGroup:
        self._rt = _rt.current()
        if not hasattr(_local, "groups"):
            _local.groups = []
        _local.groups.append(self._group)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _local.groups.remove(self._group)
        if self._rt is None or not self.implicit_barrier:
            return
        self._rt.wait_group(self._group)
        if exc_type is None and self._group.failed:
            first, exc = self._group.failed[0]
            raise TaskFailed(f"task group {self.name!r}: {len(self._group.failed)} task(s) "
                             f"failed, first {first}") from exc
