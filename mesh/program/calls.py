"""The submission side of the program-side runtime (``mesh.program.runtime``): a task call
becomes a ``TaskSpec`` of the graph, and a ``Ready`` task becomes a call to the mesh.

Theory of operation
-------------------
``call`` binds the call's arguments and walks them once, under ``Runtime.lock``: each
argument the graph must know of (a ``TaskFuture``, a file, an object passed as INOUT or
OUT, or an object a task writes passed again) becomes a ``Param`` of the ``TaskSpec``
and a ``_Slot`` placeholder in the call's argument template, described by a
``_SlotInfo``; any other value stays in the template as it is. Futures and objects
a task writes inside lists, tuples and dicts are found by the one container walk
(``mesh.program.containers``, its depth rule included), and so are the slots when the
values are put in. The function, the template and the slots are
kept as a ``_Call`` until the task ends. An object passed as INOUT or OUT gets one data
id (``_object_id``) and stays pinned for the life of the runtime. A FILE_* parameter
given None reaches the function as None, with no file behind it (PyCOMPSs' null
parameter); any other value that is not a path is refused.

When the graph says ``Ready``, ``_submit`` puts the values of the versions the task
reads in place of its slots (``substitute``; files as ``_FileArg``) and sends
``_execute(fn, ...)`` with ``client._submit_to`` (non-blocking: it only queues a frame),
away from the agents its earlier attempts failed on (``Call.avoid``) and naming where
its ``Ref`` inputs are (``Call.inputs``). A file input that could not be read, or a call
that cannot be sent (client closed, arguments that do not pickle), fails the attempt
through the runtime's inbox (``_post``, ``mesh.program.events``).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import LocalProtocolError
from mesh.program import slot
from mesh.program.containers import ATOMS, PASS, replace
from mesh.program.lineage import holdings
from mesh.program.taskexec import TaskFuture, _execute, _FileArg
from mesh.program.tasktrace import TaskTrace
from mesh.sched.graph import (
    IN,
    INOUT,
    OUT,
    DataVersion,
    OnFailure,
    Param,
    Ready,
    TaskGraph,
    TaskSpec,
    return_id,
)
from mesh.sched.objects import Ref
from mesh.wire.messages import Needs


class _Slot:
    """Placeholder for parameter ``index`` of a call, in the argument template."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass
class _SlotInfo:
    kind: str  # "future" | "obj" | "file"
    value: Any = None  # the program's object (obj) or the absolute path (file)


@dataclass
class _Call:
    fn: Any
    signature: inspect.Signature
    template: dict
    slots: list[_SlotInfo]
    returns: int
    groups: list = field(default_factory=list)
    positional: bool = False  # every parameter given by position (no defaults, no *args)
    needs: Any = None  # messages.Needs from the function's @constraint (None: none)


# types of argument values that cannot hold a TaskFuture (``call`` still checks that
# such a value is not an object a task writes, e.g. a str passed as INOUT elsewhere)
_ATOMS = ATOMS
_POSITIONAL_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_names_cache: dict[int, tuple[inspect.Signature, tuple[str, ...] | None]] = {}


def _positional_names(signature: inspect.Signature) -> tuple[str, ...] | None:
    """The parameter names when every parameter is plain positional (no ``*args``,
    ``**kwargs`` or keyword-only), else None. Cached per signature."""
    entry = _names_cache.get(id(signature))
    if entry is not None and entry[0] is signature:
        return entry[1]
    params = signature.parameters.values()
    names = tuple(p.name for p in params) if all(p.kind in _POSITIONAL_KINDS for p in params) else None
    if len(_names_cache) > 1024:
        _names_cache.clear()
    _names_cache[id(signature)] = (signature, names)
    return names


def substitute(x: Any, values: list) -> Any:
    """``x`` with every ``_Slot`` replaced by its value (``mesh.program.containers``)."""
    return replace(x, lambda node: values[node.index] if type(node) is _Slot else PASS)


class _Group:
    def __init__(self) -> None:
        self.pending = 0
        self.failed: list[tuple[str, Any]] = []  # (task id, its fate)


class TaskSubmission:
    """Mixin of ``mesh.program.runtime.Runtime``: ``call`` (a task call becomes a ``TaskSpec``)
    and ``_submit`` (a ``Ready`` task is sent); see the module docstring.

    ``Runtime`` provides the state below; ``GraphEvents`` (``mesh.program.events``)
    provides ``_apply``, ``_notify``, ``_post`` and ``_result``."""

    client: Any
    graph: TaskGraph
    lock: threading.Lock
    trace: TaskTrace
    _ids: itertools.count
    _calls: dict[str, _Call]
    _values: dict[DataVersion, Any]
    _running: dict[str, Ready]
    _call_id: dict[str, str]
    _failed_on: dict[str, list[str]]
    _last_writer: dict[str, str]
    _objects: dict[int, tuple[str, Any]]
    _object_of: dict[str, Any]
    _groups: dict[str, list[_Group]]
    _progress_base: tuple[str | None, tuple]
    _sent: dict[str, tuple]
    broken: Any

    def call(self, fn, signature: inspect.Signature, directions: dict, args: tuple, kwargs: dict,
             returns: int, name: str, priority: bool, on_failure: OnFailure,
             time_out: float | None, groups: list) -> list[str]:
        """Submit one task call; returns its task id and the data ids of its returns."""
        names = _positional_names(signature)
        if names is not None and not kwargs and len(args) == len(names):
            arguments = dict(zip(names, args, strict=True))  # as signature.bind, cheaper
            positional = True
        else:
            arguments = signature.bind(*args, **kwargs).arguments
            positional = False
        params: list[Param] = []
        slots: list[_SlotInfo] = []

        def add(param: Param, info: _SlotInfo) -> _Slot:
            params.append(param)
            slots.append(info)
            return _Slot(len(params) - 1)

        def future(fut: TaskFuture) -> _Slot:
            if fut.runtime is not self:
                raise ValueError("this future belongs to another mesh connection")
            return add(Param(IN, fut.data_id), _SlotInfo("future"))

        objects = self._objects

        def inside(node: Any) -> Any:  # (a node inside an argument: mesh.program.containers)
            if isinstance(node, TaskFuture):
                return future(node)
            entry = objects.get(id(node))
            if entry is not None and entry[1] is node:  # an object a task writes: read its latest
                return add(Param(IN, entry[0]), _SlotInfo("obj", node))
            return PASS

        template: dict = {}
        with self.lock:
            if self.broken is not None:
                raise self.broken
            if slot.call_id != self._progress_base[0]:  # a worker's next call: a new run
                c = self.graph.counters
                self._progress_base = (slot.call_id,
                                       (c["submitted"], c["done"], c["failed"] + c["cancelled"]))
            for pname, value in arguments.items():
                d = directions.get(pname, IN) if directions else IN
                if d is not IN and d.is_file:  # (Direction's properties cost a call)
                    if value is None:  # as PyCOMPSs: a null parameter, no file at all
                        template[pname] = None
                        continue
                    try:
                        path = os.path.abspath(os.fspath(value))
                    except TypeError:
                        raise TypeError(f"{name}: parameter {pname!r} is {d.value}: a path (str, bytes "
                                        f"or os.PathLike) or None, not {type(value).__name__}") from None
                    data_id = "file:" + path
                    if d.reads and not os.path.exists(path) and not self._known(data_id):
                        raise FileNotFoundError(f"{name}: input file {path!r} does not exist")
                    template[pname] = add(Param(d, data_id), _SlotInfo("file", path))
                elif d is INOUT or d is OUT:
                    if isinstance(value, TaskFuture):
                        template[pname] = add(Param(d, value.data_id), _SlotInfo("obj", None))
                    else:
                        template[pname] = add(Param(d, self._object_id(value)), _SlotInfo("obj", value))
                elif type(value) in _ATOMS and id(value) not in self._objects:
                    # the common case: no future inside, not an object a task writes
                    template[pname] = value
                elif isinstance(value, TaskFuture):
                    template[pname] = future(value)
                elif id(value) in self._objects and self._objects[id(value)][1] is value:
                    data_id = self._objects[id(value)][0]  # an object a task writes: a dependency
                    template[pname] = add(Param(IN, data_id), _SlotInfo("obj", value))
                else:
                    template[pname] = replace(value, inside)
            task_id = f"{name}-{next(self._ids)}"
            spec = TaskSpec(task_id, name, params, returns, priority, on_failure, time_out)
            self._calls[task_id] = _Call(fn, signature, template, slots, returns, groups, positional,
                                         needs_of(fn))
            try:
                acts = self.graph.submit(spec, time.monotonic())
            except BaseException:
                del self._calls[task_id]
                raise
            depends_on = set()
            for p in params:
                if p.direction is IN or p.direction.reads:
                    writer = self._last_writer.get(p.data_id)
                    if writer is None and "#r" in p.data_id:
                        writer = p.data_id.rsplit("#r", 1)[0]  # a future: its task
                    if writer is not None:
                        depends_on.add(writer)
            self.trace.task(task_id, name, depends_on)
            for p in params:
                if p.direction is not IN and p.direction.writes:
                    self._last_writer[p.data_id] = task_id
            for g in groups:
                g.pending += 1
            if groups:
                self._groups[task_id] = groups
            self._apply(acts)
            self._notify()
        return [task_id] + [return_id(task_id, i) for i in range(returns)]

    def _known(self, data_id: str) -> bool:
        try:
            self.graph.data_state(data_id)
        except LocalProtocolError:
            return False
        return True

    def _object_id(self, obj: Any) -> str:
        entry = self._objects.get(id(obj))
        if entry is not None and entry[1] is obj:
            return entry[0]
        data_id = f"obj:{next(self._ids)}"
        self._objects[id(obj)] = (data_id, obj)
        self._object_of[data_id] = obj
        return data_id

    def _submit(self, ready: Ready) -> None:
        call = self._calls[ready.task_id]
        values: list[Any] = []
        outs: list[Any] = []
        files: list[_FileArg] = []
        for access, info in zip(ready.params, call.slots, strict=True):
            if info.kind == "file":
                if access.read_failed:  # its writer failed under IGNORE: no value was kept
                    data = b""
                else:
                    data = self._values[access.read] if access.read is not None else None
                if isinstance(data, OSError):
                    self._running[ready.task_id] = ready
                    self._post(("failed", ready.task_id, ready.attempt, data))
                    return
                f = _FileArg(os.path.basename(info.value), data, access.write is not None)
                files.append(f)
                values.append(f)
                continue
            if access.read is None:  # an OUT object: the program's object as given
                v = info.value
            else:
                v = None if access.read_failed else self._values[access.read]
            values.append(v)
            if access.write is not None:
                outs.append(v)
        refs = [v for v in values if type(v) is Ref] or None
        if call.positional:  # the arguments in the signature's order, all by position
            args, kwargs = tuple([substitute(t, values) for t in call.template.values()]), {}
        else:
            bound = inspect.BoundArguments(
                call.signature, {k: substitute(t, values) for k, t in call.template.items()})
            args, kwargs = bound.args, bound.kwargs
        task_id, attempt = ready.task_id, ready.attempt
        self._running[task_id] = ready
        self._sent[task_id] = (call.fn, args, kwargs, outs, files, call.returns, refs)
        try:
            self._call_id[task_id] = self.client._submit_to(
                functools.partial(self._result, task_id, attempt), self._failed_on.get(task_id, ()),
                _execute, call.fn, args, kwargs, outs, files, call.returns, refs is not None,
                inputs=holdings(refs), needs=call.needs)
        except BaseException as exc:  # client closed, or the arguments do not pickle
            self._post(("failed", task_id, attempt, exc))
            return
        if ready.spec.time_out is not None:
            self._apply(self.graph.started(task_id, attempt, time.monotonic()))


def needs_of(fn) -> Needs | None:
    """What a function's ``@constraint`` asks of the agent that runs it (None: nothing
    beyond one slot)."""
    c = getattr(fn, "__mesh_constraints__", None)
    if c is None or (c.cpus == 1 and not c.memory and not c.labels):
        return None
    return Needs(max(int(c.cpus), 1), int(c.memory or 0), [str(x) for x in c.labels])
