"""The PyCOMPSs-style programming model: ``@task``, ``@constraint``, ``@implement``,
``wait_on``, ``barrier``, ``TaskGroup``, the parameter directions and the rest of the
synchronisation API (``barrier_group``, ``wait_on_file``, ``open_file``,
``delete_object``, ``delete_file``). PyCOMPSs programs run unchanged through
``mesh.compat.pycompss``, which maps PyCOMPSs' names onto these.

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
  version. ``self`` of a method is IN unless ``target_direction=INOUT`` (PyCOMPSs makes
  it INOUT by default; here a method is read-only unless it says otherwise, so that
  calls of read-only methods of one object run in parallel);
* collections (``COLLECTION_IN``, ``COLLECTION_INOUT``, ``COLLECTION_OUT``, or
  ``Collection(direction, depth)``): a list whose elements, sub-lists walked ``depth``
  levels (1 by default, as PyCOMPSs), are data of their own. A task writing a collection may replace its elements
  (``out[i] = ...``; placeholders such as ``object()`` for OUT), not add or remove
  any; afterwards each element is read on its own by the tasks it is passed to, and
  ``wait_on(the list)`` gives the values;
* ``FILE_IN``/``FILE_OUT``/``FILE_INOUT`` parameters are paths on the program's
  machine: the file's bytes travel with the task (read when the task is called) and
  written bytes come back and are written to the path when the task ends (only the
  latest version is written). ``wait_on_file(path, ...)`` waits for that. None instead of a
  path reaches the task as None, with no file (PyCOMPSs' null parameter). A task that
  fails on its last attempt leaves its files as it wrote them, as COMPSs does;
* ``on_failure``: RETRY (run once more, then as FAIL), CANCEL_SUCCESSORS (the tasks
  that read its outputs are cancelled: their futures raise ``TaskCancelled``), FAIL
  (every pending task is cancelled, later calls are cancelled at once and ``barrier``
  raises ``TaskFailed``; the graph of this connection stays failed) and IGNORE (its
  outputs become None for the tasks that read them, a file what the failed task left
  in it; ``wait_on`` on them raises). ``failure_values`` gives defaults instead (by
  parameter name, ``"returns"``), which the tasks that go on and ``wait_on`` get;
* ``COMPSsException`` raised by a task is not retried: the other unfinished tasks of
  the innermost ``TaskGroup`` it was called in are cancelled and the exception is
  raised where the program leaves that group, or at ``barrier_group(name)``;
* ``time_out`` seconds per attempt, from when it starts running (waiting for a slot
  does not count): the attempt is stopped where it runs (``TaskTimedOut`` is raised in
  it, a task that ignores that is abandoned and its worker replaced) and fails with
  ``TaskTimedOut`` under its ``on_failure`` policy;
* ``@constraint(cpus=..., memory=..., labels=[...])``: the task runs only on an agent
  with that many slots (it takes them all while it runs), offering at least that much
  memory (``join --memory``) and every label (``join --label``); it waits while such
  agents are busy, and fails with ``NoSuitableAgent`` when no agent that fits is known
  for ``MESH_UNFIT_GRACE`` seconds (30 by default, set on the agent). ``@implement``
  adds implementations with constraints of their own (``mesh.program.implement``);
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
id names the datum) unless the program gives it up (``delete_object``); plain
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

from mesh.program import implement as _implement
from mesh.program import runtime as _rt
from mesh.program.calls import CallOptions, Collection, needs_of
from mesh.program.containers import PASS, replace
from mesh.program.runtime import GraphBroken, TaskCancelled, TaskFailed, TaskFuture, TaskTimedOut
from mesh.program.taskexec import COMPSsException
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
    "COLLECTION_IN", "COLLECTION_INOUT", "COLLECTION_OUT", "FILE_IN", "FILE_INOUT", "FILE_OUT", "IN",
    "INOUT", "OUT", "COMPSsException", "Collection", "Constraints", "GraphBroken", "Task",
    "TaskCancelled", "TaskFailed", "TaskFuture", "TaskGroup", "TaskTimedOut", "barrier",
    "barrier_group", "constraint", "delete_file", "delete_object", "implement", "open_file", "task",
    "wait_on", "wait_on_file",
]

COLLECTION_IN = Collection(IN)
COLLECTION_INOUT = Collection(INOUT)
COLLECTION_OUT = Collection(OUT)


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

    def __init__(self, fn, returns: Any = 1, priority: bool = False, on_failure: str = "RETRY",
                 time_out: float | None = None, directions: dict | None = None,
                 target_direction: Any = None, failure_values: dict | None = None) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)
        self.signature = inspect.signature(fn)
        params = [p for p in self.signature.parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        names = {p.name for p in params}
        directions = dict(directions or {})
        unknown = set(directions) - names
        if unknown:
            raise TypeError(f"@task on {fn.__name__}: no parameter named {sorted(unknown)}")
        if target_direction is not None:
            if not params or params[0].name != "self":
                raise TypeError(f"@task on {fn.__name__}: target_direction is for methods (a first "
                                f"parameter named self)")
            directions.setdefault("self", target_direction)
        self.directions = {k: v if type(v) is Collection else Direction(v) for k, v in directions.items()}
        if isinstance(returns, str) and not returns.isdigit():
            if returns not in names:
                raise TypeError(f"@task on {fn.__name__}: returns={returns!r} names no parameter")
        elif isinstance(returns, str):
            returns = int(returns)
        elif isinstance(returns, bool) or not isinstance(returns, int):
            returns = 1 if returns else 0  # PyCOMPSs also accepts a type, e.g. returns=list
        if isinstance(returns, int) and returns < 0:
            raise ValueError("returns must be >= 0")
        self.returns = returns  # an int, or the name of the parameter giving it per call
        self.priority = bool(priority)
        self.on_failure = OnFailure(on_failure)
        if time_out is not None and not time_out > 0:
            raise ValueError("time_out must be positive or None")
        self.time_out = time_out
        unknown = set(failure_values or ()) - names - {"returns"}
        if unknown:
            raise TypeError(f"@task on {fn.__name__}: failure values for no parameter {sorted(unknown)}")
        self.failure_values = dict(failure_values) if failure_values else None

    @property
    def constraints(self) -> Constraints | None:
        return getattr(self.fn, "__mesh_constraints__", None)

    def _count(self, args: tuple, kwargs: dict) -> int:
        """How many values this call returns (``returns`` may name a parameter)."""
        if isinstance(self.returns, int):
            return self.returns
        value = self.signature.bind(*args, **kwargs).arguments[self.returns]
        value = wait_on(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"{self.fn.__name__}: returns={self.returns!r} is {value!r}, not an int >= 0")
        return value

    def _inline(self) -> bool:
        """Whether the tasks this one calls run inline in its worker (mesh: never)."""
        return False

    def __call__(self, *args, **kwargs):
        rt = _rt.current()
        if rt is None:  # no mesh: plain sequential execution
            args, kwargs = wait_on(list(args)), wait_on(kwargs)
            return self.fn(*args, **kwargs)
        returns = self._count(args, kwargs)
        fn, options = self.fn, CallOptions(inline=self._inline(), failure_values=self.failure_values)
        alternatives = _implement.of(self)
        if alternatives:
            impls = [(t.fn, needs_of(t.fn)) for t in [self, *alternatives]]
            fn = _implement.Implementations(impls)
            options.needs = _implement.placement(impls, rt.client)
        ids = rt.call(fn, self.signature, self.directions, args, kwargs, returns,
                      self.fn.__name__, self.priority, self.on_failure, self.time_out,
                      list(_group_stack()), options)
        futures = tuple(TaskFuture(rt, ids[0], d) for d in ids[1:])
        if returns == 0:
            return None
        return futures[0] if returns == 1 else futures

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"<task {self.fn.__qualname__}>"


def task(fn=None, *, returns: Any = 1, priority: bool = False, on_failure: str = "RETRY",
         time_out: float | None = None, target_direction: Any = None,
         failure_values: dict | None = None, **directions):
    """``@task(returns=1, priority=False, on_failure="RETRY", time_out=None, x=INOUT, ...)``:
    calling the function makes a task (see the module docstring). ``directions`` map
    parameter names to IN (default), OUT, INOUT, FILE_IN, FILE_OUT, FILE_INOUT or a
    collection (COLLECTION_IN, COLLECTION_INOUT, COLLECTION_OUT, or ``Collection(INOUT,
    depth)``). ``returns``: how many values (a type counts as one; the name of a
    parameter: that argument's value, per call). ``target_direction``: the direction of
    ``self`` for a method (IN unless given: methods that change ``self`` say INOUT).
    ``failure_values``: what the outputs of a failed call read as, by parameter name
    and ``"returns"`` (for a file, the path of a file whose contents to use)."""
    def deco(f):
        return Task(f, returns, priority, on_failure, time_out, directions, target_direction,
                    failure_values)

    return deco if fn is None else deco(fn)


def implement(source_class: Any, method: str | None = None):
    """``@implement(main_task)`` or ``@implement(source_class="module", method="name")``
    above ``@constraint`` and ``@task``: the decorated task is another implementation
    of that task (``mesh.program.implement``): a call of the main task is placed where one
    of them fits and runs the one that fits the agent it lands on."""
    if isinstance(source_class, Task):
        target = (source_class.fn.__module__, source_class.fn.__name__)
    elif method is not None:
        target = (str(source_class), str(method))
    else:
        raise TypeError("implement needs the task it implements, or source_class and method")

    def deco(alternative):
        if not isinstance(alternative, Task):
            raise TypeError("@implement goes above @task (and @constraint)")
        _implement.register(target, alternative)
        return alternative

    return deco


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


def wait_on_file(*paths: str | os.PathLike) -> str | list[str]:
    """Wait until the tasks that write these files (FILE_OUT/FILE_INOUT) are done and
    their output is written to each path; returns the path (a list for several). Raises
    like ``wait_on``; after a task that failed under IGNORE or CANCEL_SUCCESSORS the
    file holds what that task left in it (as COMPSs keeps it)."""
    rt = _rt.current(create=False)
    if rt is not None:
        waits = []
        for path in paths:
            data_id = "file:" + os.path.abspath(os.fspath(path))
            if rt.known(data_id):
                waits.append((data_id, None))
        if waits:
            rt.wait(waits)
    out = [os.fspath(p) for p in paths]
    return out[0] if len(out) == 1 else out


def barrier(no_more_tasks: bool = False) -> None:
    """Wait until every task called so far has finished (or failed or was cancelled).
    Raises ``TaskFailed`` (the failing task's exception as ``__cause__``) if the graph
    failed (a task under FAIL, or RETRY with its retry used up). ``no_more_tasks``: the
    program calls no task after it (one that does raises RuntimeError)."""
    rt = _rt.current(create=False)
    if rt is not None:
        if no_more_tasks:
            rt.barrier_no_more()
        else:
            rt.barrier()


def barrier_group(name: str) -> None:
    """Wait for the tasks of the task group ``name`` (opened with
    ``TaskGroup(name, implicit_barrier=False)``). Raises the ``COMPSsException`` one of
    them raised (the group's other tasks were cancelled), else ``TaskFailed`` if one of
    them failed; ValueError for a group that is not waiting to be synchronised."""
    rt = _rt.current(create=False)
    if rt is not None:
        _raise_for(rt.barrier_group(name))


def delete_object(*objs: Any) -> bool | list[bool]:
    """The program gives these objects up: the runtime stops tracking them (an object a
    task writes is held for the life of the connection otherwise) and frees their
    versions once no task reads them. True for each object a task wrote."""
    rt = _rt.current(create=False)
    done = [rt.delete_object(o) if rt is not None else True for o in objs]
    return done[0] if len(done) == 1 else done


def delete_file(*paths: str | os.PathLike) -> bool | list[bool]:
    """Delete these files: tasks called before still read the versions they were
    called with; no task's output is written to them any more; the files are removed
    now. True for each file that existed."""
    rt = _rt.current(create=False)
    done = []
    for p in paths:
        path = os.fspath(p)
        if rt is not None:
            done.append(rt.delete_file(path))
        else:
            try:
                os.remove(path)
                done.append(True)
            except FileNotFoundError:
                done.append(False)
    return done[0] if len(done) == 1 else done


def open_file(path: str | os.PathLike, mode: str = "r"):
    """``open(path, mode)`` once the tasks that write the file are done (PyCOMPSs'
    ``compss_open``); opened for writing, the program's own contents are what the next
    task that reads it gets."""
    wait_on_file(path)
    if any(c in mode for c in "wax+"):
        rt = _rt.current(create=False)
        if rt is not None:
            rt.file_changed(os.fspath(path))
    return open(os.fspath(path), mode)  # noqa: SIM115 - the caller closes it


_local = threading.local()


def _group_stack() -> list:
    return getattr(_local, "groups", [])


def _raise_for(group: _rt._Group) -> None:
    """What leaving a task group (or ``barrier_group``) raises: a task's
    ``COMPSsException``, else ``TaskFailed`` if one of its tasks failed."""
    if group.exception is not None:
        raise group.exception
    if group.failed:
        first, exc = group.failed[0]
        raise TaskFailed(f"task group {group.name!r}: {len(group.failed)} task(s) failed, "
                         f"first {first}") from exc


class TaskGroup:
    """``with TaskGroup("name"):`` — leaving the block waits for the tasks called inside
    it (in this thread) and raises the ``COMPSsException`` one of them raised (its other
    tasks are cancelled then), else ``TaskFailed`` if one of them failed (unless the
    block itself raised). With ``implicit_barrier=False`` leaving does not wait:
    ``barrier_group(name)`` does, later. Without a mesh it does nothing."""

    def __init__(self, name: str, implicit_barrier: bool = True) -> None:
        self.name = name
        self.implicit_barrier = implicit_barrier
        self._group = _rt._Group(name)
        self._rt: _rt.Runtime | None = None

    def __enter__(self) -> TaskGroup:
        self._rt = _rt.current()
        if not hasattr(_local, "groups"):
            _local.groups = []
        _local.groups.append(self._group)
        if self._rt is not None:
            self._rt.open_group(self._group)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _local.groups.remove(self._group)
        if self._rt is None or not self.implicit_barrier:
            return
        self._rt.close_group(self._group)
        self._rt.wait_group(self._group)
        if exc_type is None:
            _raise_for(self._group)
