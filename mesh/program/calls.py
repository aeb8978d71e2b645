"""The calls of the program-side runtime's tasks (``mesh.program.runtime``): how a task call
becomes a ``TaskSpec`` of the graph, and how a ``Ready`` task's arguments are put back
together to be sent.

Theory of operation
-------------------
``bind`` matches a call's arguments to the function's parameters (outside the lock).
``Calls.make`` then walks them once, under ``Runtime.lock``: each argument the graph must
know of (a ``TaskFuture``, a file, an object passed as INOUT or OUT, or an object a task
writes passed again) becomes a ``Param`` of the ``TaskSpec`` and a ``_Slot`` placeholder
in the call's argument template, described by a ``_SlotInfo``; any other value stays in
the template as it is. Futures and objects a task writes inside lists, tuples and dicts
are found by the one container walk (``mesh.program.containers``, its depth rule
included), and so are the slots when the values are put in. A collection parameter
written by the task (``Collection``: PyCOMPSs' ``COLLECTION_INOUT`` / ``COLLECTION_OUT``,
with its depth) makes one datum of each element (``containers.leaves``: an object, or a
future, never a plain number or string, which could not be told apart), INOUT or OUT,
and a ``_CollOut`` tells the worker to send back the elements as the task left them (it
may replace them: ``blocks[i] = ...``). ``COLLECTION_IN`` is an IN parameter: the walk
already reads each element that is a future or an object a task writes. The function, the template
and the slots are kept as a ``_Call`` until the task ends (``Calls.by_task``). An object
passed as INOUT or OUT gets one data id (``object_id``) and stays pinned for the life of
the runtime. A FILE_* parameter given None reaches the function as None, with no file
behind it (PyCOMPSs' null parameter); any other value that is not a path is refused.
``Calls.wrote`` keeps which task writes the latest version of each datum
(``last_writer``: the edges of ``mesh run --graph``, and the task whose fate ``wait_on``
on an object raises).

When the graph says ``Ready``, ``_Call.arguments`` puts the values of the versions the
task reads in place of its slots (``substitute``; files as ``_FileArg``); the runtime
sends ``_execute(fn, ...)`` with them. A version whose writer failed (IGNORE) reads as
what the runtime kept of it (``kept``: the bytes the failed task left in a file, or an
``on_failure`` default value), else as None (an empty file for a file).

``Calls`` is plain bookkeeping owned by the runtime and run under its lock: no I/O, no
thread.
"""

from __future__ import annotations

import inspect
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from mesh.program.containers import ATOMS, PASS, map_leaves, replace
from mesh.program.taskexec import TaskFuture, _CollOut, _FileArg
from mesh.sched.graph import IN, INOUT, OUT, Direction, OnFailure, Param, Ready, TaskSpec
from mesh.sched.objects import Ref
from mesh.wire.messages import Needs


class _Slot:
    """Placeholder for parameter ``index`` of a call, in the argument template."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass(frozen=True)
class Collection:
    """A collection parameter (PyCOMPSs' ``COLLECTION_IN``/``_INOUT``/``_OUT``): a list
    whose elements are data of their own, sub-lists walked ``depth`` levels (1, as in
    PyCOMPSs: the items of the list are the elements, a sub-list is one element; None:
    every level, ``mesh.program.containers.MAX_DEPTH``). ``direction`` is IN, INOUT or OUT."""

    direction: Direction
    depth: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(self.direction))
        if self.direction not in (IN, INOUT, OUT):
            raise ValueError(f"a collection is IN, INOUT or OUT, not {self.direction.value}")
        if self.depth is not None and (type(self.depth) is not int or self.depth < 1):
            raise ValueError(f"a collection's depth is an int >= 1 (or None: all), not {self.depth!r}")


@dataclass
class _SlotInfo:
    kind: str  # "future" | "obj" | "file" | "elem" (an element of a written collection)
    value: Any = None  # the program's object (obj, elem) or the absolute path (file)
    coll: str | None = None  # elem: the collection parameter's name, on its first element
    name: str = ""  # obj, file: the parameter it is (on_failure defaults are by name)


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
    colls: dict = field(default_factory=dict)  # written collection name -> (depth, elements)
    inline: bool = False  # the tasks it calls run inline (PyCOMPSs' classic mode)
    failure_values: dict | None = None  # on_failure defaults: "returns" or a parameter name

    def arguments(self, ready: Ready, values: dict, kept=None) -> tuple:
        """(args, kwargs, outs, files, refs) of ``_execute`` for this attempt: the values
        of the versions it reads (``values``: version -> value) in place of the slots;
        a version whose writer failed reads as ``kept(version)`` (``PASS``: nothing was
        kept: None, or an empty file). Raises the ``OSError`` of a file input that could
        not be read."""
        got: list[Any] = []
        outs: list[Any] = []
        files: list[_FileArg] = []
        markers: list[tuple[str, _CollOut]] = []
        for access, info in zip(ready.params, self.slots, strict=True):
            failed = PASS
            if access.read_failed and kept is not None:
                failed = kept(access.read)
            if info.kind == "file":
                if access.read_failed:  # its writer failed (IGNORE): what it left, if anything
                    data = b"" if failed is PASS or failed is None else failed
                else:
                    data = values[access.read] if access.read is not None else None
                if isinstance(data, OSError):
                    raise data
                f = _FileArg(os.path.basename(info.value), data, access.write is not None)
                files.append(f)
                got.append(f)
                continue
            if access.read is None:  # an OUT object: the program's object as given
                v = info.value
            elif access.read_failed:
                v = None if failed is PASS else failed
            else:
                v = values[access.read]
            got.append(v)
            if access.write is not None:
                if info.kind != "elem":
                    outs.append(v)
                elif info.coll is not None:  # (the elements go back as the task left them)
                    depth, count = self.colls[info.coll]
                    marker = _CollOut(-1, depth, count, info.coll)
                    outs.append(marker)
                    markers.append((info.coll, marker))
        refs = [v for v in got if type(v) is Ref] or None
        given = {k: substitute(t, got) for k, t in self.template.items()}
        if self.positional:  # the arguments in the signature's order, all by position
            args, kwargs = tuple(given.values()), {}
        else:
            bound = inspect.BoundArguments(self.signature, given)
            args, kwargs = bound.args, bound.kwargs
        for pname, marker in markers:  # where each written collection went
            coll = given[pname]
            marker.where = next((i for i, a in enumerate(args) if a is coll), None)
            if marker.where is None:
                marker.where = next(k for k, v in kwargs.items() if v is coll)
        return args, kwargs, outs, files, refs


@dataclass
class CallOptions:
    """What a task call asks beyond its spec: ``needs`` (placement constraints instead of
    the function's own, ``@implement``), ``inline`` (the tasks it calls run inline, in
    its worker: PyCOMPSs' classic mode) and ``failure_values`` (``on_failure`` defaults:
    what its outputs read as if it fails, by parameter name or ``"returns"``)."""

    needs: Any = None
    inline: bool = False
    failure_values: dict | None = None


class _Group:
    """A ``TaskGroup`` of the runtime: its unfinished tasks, those that failed, and the
    first ``COMPSsException`` one of them raised."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.pending = 0
        self.tasks: set[str] = set()  # unfinished tasks called in it
        self.failed: list[tuple[str, Any]] = []  # (task id, its fate)
        self.exception: BaseException | None = None  # a task's COMPSsException


# types of argument values that cannot hold a TaskFuture (``make`` still checks that
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


def bind(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[dict, bool]:
    """(parameter name -> value, whether every parameter was given by position)."""
    names = _positional_names(signature)
    if names is not None and not kwargs and len(args) == len(names):
        return dict(zip(names, args, strict=True)), True  # as signature.bind, cheaper
    return signature.bind(*args, **kwargs).arguments, False


def substitute(x: Any, values: list) -> Any:
    """``x`` with every ``_Slot`` replaced by its value (``mesh.program.containers``)."""
    return replace(x, lambda node: values[node.index] if type(node) is _Slot else PASS)


def needs_of(fn) -> Needs | None:
    """What a function's ``@constraint`` asks of the agent that runs it (None: nothing
    beyond one slot)."""
    c = getattr(fn, "__mesh_constraints__", None)
    if c is None or (c.cpus == 1 and not c.memory and not c.labels):
        return None
    return Needs(max(int(c.cpus), 1), int(c.memory or 0), [str(x) for x in c.labels])


class Calls:
    """The runtime's task calls (see the module docstring). ``owner`` is the runtime (a
    future of another one is refused); ``known(data_id)`` says whether the graph holds
    that datum (an input file a task will write need not exist yet)."""

    def __init__(self, owner: Any, known) -> None:
        self.owner = owner
        self.known = known
        self.ids = itertools.count(1)  # task and object numbers
        self.by_task: dict[str, _Call] = {}  # task id -> its call, until the task ends
        self.objects: dict[int, tuple[str, Any]] = {}  # id(obj) -> (data id, obj): pinned
        self.object_of: dict[str, Any] = {}  # data id -> the object (INOUT/OUT)
        self.last_writer: dict[str, str] = {}  # data id -> task writing its latest version

    def make(self, fn, signature: inspect.Signature, directions: dict, arguments: dict,
             positional: bool, returns: int, name: str, priority: bool, on_failure: OnFailure,
             time_out: float | None, groups: list, options: Any = None) -> TaskSpec:
        """The ``TaskSpec`` of one call (its ``_Call`` kept under its task id until
        ``end``). Raises for an argument that cannot be passed (see the module docstring).
        ``options``: a ``CallOptions`` (None: the defaults)."""
        params: list[Param] = []
        slots: list[_SlotInfo] = []
        objects = self.objects
        colls: dict = {}

        def add(param: Param, info: _SlotInfo) -> _Slot:
            params.append(param)
            slots.append(info)
            return _Slot(len(params) - 1)

        def future(fut: TaskFuture) -> _Slot:
            if fut.runtime is not self.owner:
                raise ValueError("this future belongs to another mesh connection")
            return add(Param(IN, fut.data_id), _SlotInfo("future"))

        def inside(node: Any) -> Any:  # (a node inside an argument: mesh.program.containers)
            if isinstance(node, TaskFuture):
                return future(node)
            entry = objects.get(id(node))
            if entry is not None and entry[1] is node:  # an object a task writes: read its latest
                return add(Param(IN, entry[0]), _SlotInfo("obj", node))
            return PASS

        def collection(pname: str, value: Any, c: Collection) -> list:
            if type(value) is not list:
                raise TypeError(f"{name}: parameter {pname!r} is a COLLECTION_{c.direction.value}: "
                                f"a list, not {type(value).__name__}")
            first, start = [True], len(params)

            def element(x: Any) -> _Slot:
                if isinstance(x, TaskFuture):
                    if x.runtime is not self.owner:
                        raise ValueError("this future belongs to another mesh connection")
                    data_id, obj = x.data_id, None
                elif type(x) in ATOMS:
                    raise TypeError(f"{name}: an element of collection {pname!r} is {x!r}: the elements "
                                    f"of a COLLECTION_{c.direction.value} must be objects (or futures), "
                                    f"one per element (e.g. object() as a placeholder), since a number, "
                                    f"a string or None cannot be told apart from another")
                else:
                    data_id, obj = self.object_id(x), x
                info = _SlotInfo("elem", obj, pname if first[0] else None)
                first[0] = False
                return add(Param(c.direction, data_id), info)

            tmpl = map_leaves(value, c.depth, element)
            colls[pname] = (c.depth, len(params) - start)
            return tmpl

        template: dict = {}
        for pname, value in arguments.items():
            d = directions.get(pname, IN) if directions else IN
            if type(d) is Collection:
                if d.direction is not IN:
                    template[pname] = collection(pname, value, d)
                    continue
                d = IN  # (COLLECTION_IN: the walk below reads its futures and written objects)
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
                if d.reads and not os.path.exists(path) and not self.known(data_id):
                    raise FileNotFoundError(f"{name}: input file {path!r} does not exist")
                template[pname] = add(Param(d, data_id), _SlotInfo("file", path, name=pname))
            elif d is INOUT or d is OUT:
                if isinstance(value, TaskFuture):
                    template[pname] = add(Param(d, value.data_id), _SlotInfo("obj", None, name=pname))
                else:
                    template[pname] = add(Param(d, self.object_id(value)),
                                          _SlotInfo("obj", value, name=pname))
            elif type(value) in _ATOMS and id(value) not in objects:
                # the common case: no future inside, not an object a task writes
                template[pname] = value
            elif isinstance(value, TaskFuture):
                template[pname] = future(value)
            elif id(value) in objects and objects[id(value)][1] is value:
                data_id = objects[id(value)][0]  # an object a task writes: a dependency
                template[pname] = add(Param(IN, data_id), _SlotInfo("obj", value))
            else:
                template[pname] = replace(value, inside)
        written = [p.data_id for p in params if p.direction is not IN and p.direction.writes]
        if len(written) != len(set(written)):
            raise ValueError(f"{name}: one object is written twice by this call (passed as two "
                             f"INOUT/OUT parameters, or twice in a written collection): each must "
                             f"be a distinct object")
        task_id = f"{name}-{next(self.ids)}"
        spec = TaskSpec(task_id, name, params, returns, priority, on_failure, time_out)
        opts = options if options is not None else CallOptions()
        self.by_task[task_id] = _Call(fn, signature, template, slots, returns, groups, positional,
                                      opts.needs if opts.needs is not None else needs_of(fn),
                                      colls, opts.inline, opts.failure_values)
        return spec

    def wrote(self, spec: TaskSpec) -> set[str]:
        """The graph took ``spec``: the tasks it reads from (for the trace); it is now the
        writer of the latest version of what it writes."""
        task_id, last_writer = spec.task_id, self.last_writer
        depends_on = set()
        for p in spec.params:
            if p.direction is IN or p.direction.reads:
                writer = last_writer.get(p.data_id)
                if writer is None and "#r" in p.data_id:
                    writer = p.data_id.rsplit("#r", 1)[0]  # a future: its task
                if writer is not None:
                    depends_on.add(writer)
        for p in spec.params:
            if p.direction is not IN and p.direction.writes:
                last_writer[p.data_id] = task_id
        return depends_on

    def end(self, task_id: str) -> None:
        """The task is over: its call is no longer needed."""
        self.by_task.pop(task_id, None)

    def object_id(self, obj: Any) -> str:
        """The data id of an object a task writes (INOUT/OUT), given on its first use."""
        entry = self.objects.get(id(obj))
        if entry is not None and entry[1] is obj:
            return entry[0]
        data_id = f"obj:{next(self.ids)}"
        self.objects[id(obj)] = (data_id, obj)
        self.object_of[data_id] = obj
        return data_id

    def forget_object(self, obj: Any) -> str | None:
        """The program gives up ``obj``: it is no longer pinned; its data id (None: no task
        writes it)."""
        entry = self.objects.get(id(obj))
        if entry is None or entry[1] is not obj:
            return None
        del self.objects[id(obj)]
        self.object_of.pop(entry[0], None)
        return entry[0]

    def object_data_id(self, obj: Any) -> str | None:
        """The data id of ``obj`` if a task writes it, else None."""
        entry = self.objects.get(id(obj))
        return entry[0] if entry is not None and entry[1] is obj else None
