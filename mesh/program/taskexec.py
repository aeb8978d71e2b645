"""The values of ``mesh.program.api`` tasks: ``TaskFuture``, the task errors, and what runs on
the worker.

``_execute`` is what the program-side runtime (``mesh.program.runtime``) sends with
``client.submit``: it calls the user's function with the argument values bound on the
program side, puts FILE_* parameters in a temporary directory (their bytes travel with
the call) and sends back the return value, the INOUT/OUT objects as the function left
them (the elements of written collections as the task left them) and the bytes of the
files it wrote; a task that raises sends its files' bytes on the exception. While the
function runs, ``slot.task_depth`` and ``slot.inline_nested`` say so (PyCOMPSs' classic
mode runs the tasks it calls inline: ``mesh.compat.pycompss``).

``dumps`` is how calls (``Client.submit``) and results (``mesh.agent.worker``) are pickled:
cloudpickle's bytes, made by the standard pickler when that gives the very same bytes
(a few times cheaper, and a call or result is pickled per task).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Any

from mesh.program import slot

_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})
_MAX_ITEMS = 64  # bigger containers go to cloudpickle at once (checking costs too)
_cloudpickle = None


def dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``. When ``obj`` holds only None, bools, numbers, str,
    bytes, small tuples/lists/dicts of these and functions that cloudpickle pickles by
    reference (importable, not from ``__main__``, not registered by value), plain
    ``pickle`` makes the same bytes, a few times faster: it does. (``_plain`` looks 3
    deep and 64 items wide only to bound its own cost; it finds nothing: anything else
    simply goes to cloudpickle. Task values are found by ``mesh.program.containers``.)"""
    global _cloudpickle
    if _cloudpickle is None:
        import cloudpickle

        _cloudpickle = cloudpickle
    if _plain(obj, 3):
        try:  # the standard pickler checks that each function is importable as named
            return pickle.dumps(obj, protocol=_cloudpickle.DEFAULT_PROTOCOL)
        except Exception:  # not (a local function, ...): cloudpickle sends it by value
            pass
    return _cloudpickle.dumps(obj)


def _plain(x: Any, depth: int) -> bool:
    t = type(x)
    if t in _ATOMS:
        return True
    if t is tuple or t is list:
        if depth == 0 or len(x) > _MAX_ITEMS:
            return False
        for i in x:
            if type(i) not in _ATOMS and not _plain(i, depth - 1):
                return False
        return True
    if t is dict:
        if depth == 0 or len(x) > _MAX_ITEMS:
            return False
        for k, v in x.items():
            if type(k) is not str or (type(v) not in _ATOMS and not _plain(v, depth - 1)):
                return False
        return True
    if t is types.FunctionType:  # by reference, as cloudpickle would do it?
        name = x.__module__
        module = sys.modules.get(name) if type(name) is str else None
        if module is None or name == "__main__" or getattr(module, "__spec__", None) is None:
            return False  # cloudpickle sends these by value
        by_value = getattr(_cloudpickle.cloudpickle, "_is_registered_pickle_by_value", None)
        return by_value is not None and not by_value(module)
    return False


class TaskFailed(Exception):
    """A task failed and no better exception is known (or the graph failed: ``barrier``
    raises this with the failing task's own exception as ``__cause__``)."""


class TaskCancelled(TaskFailed):
    """The task never ran (to its end): a predecessor failed or the graph failed."""


class GraphBroken(TaskFailed):
    """An internal error left the program's task graph in a state that cannot be
    trusted: every unfinished task fails with this, and so do later calls, ``wait_on``
    and ``barrier`` (connect again to start anew)."""


class TaskTimedOut(TaskFailed):
    """The task ran longer than its ``time_out`` (on its last attempt)."""


class COMPSsException(Exception):
    """Raised by a task on purpose to stop its task group (PyCOMPSs' exception of the
    same name): the task is not retried, the other unfinished tasks of the innermost
    ``TaskGroup`` it was called in are cancelled (and the tasks that read their outputs),
    and this exception reaches the program when it leaves the group or at
    ``barrier_group``. Outside a group it fails the task under its ``on_failure``
    policy, never retried."""


class TaskFuture:
    """The future value of a task's return, given at once by a task call when a mesh is
    connected. Pass it to other tasks (a dependency, also inside lists, tuples and
    dicts) or resolve it with ``wait_on`` (or ``result()``). It cannot be sent to a
    worker any other way. Dropping it lets the runtime free the value."""

    __slots__ = ("runtime", "task_id", "data_id", "__weakref__")

    def __init__(self, runtime, task_id: str, data_id: str) -> None:
        self.runtime = runtime
        self.task_id = task_id
        self.data_id = data_id

    def result(self) -> Any:
        """Wait for the value; raises what the task raised (or ``TaskCancelled``)."""
        return self.runtime.wait([(self.data_id, self.task_id)])[0]

    def done(self) -> bool:
        """True once the task's outcome is known (done, failed or cancelled)."""
        with self.runtime.lock:
            state = self.runtime.graph.task_state(self.task_id)
        return state is None or state.terminal

    def __repr__(self) -> str:
        return f"<TaskFuture {self.data_id}>"

    def __reduce__(self):
        raise TypeError("a TaskFuture cannot be pickled: pass it as a task argument (directly "
                        "or inside lists, tuples or dicts) or resolve it with wait_on first")

    def __del__(self) -> None:
        try:
            self.runtime.forget(self.data_id)
        except Exception:
            pass


# ------------------------------------------------------------------ worker side


def entry_point(fn: Any) -> Any:
    """What runs for a function named as a program's entry point (``mesh call``'s
    MODULE:FUNCTION, ``mesh run``'s ``main``, COMPSs' startApplication): a ``@task``
    runs as the main program itself, its undecorated function in this worker, as COMPSs
    runs the method as the application's main. Calling the task wrapper here would make
    it one nested task of a graph made for it, whose future cannot even be sent back."""
    api = sys.modules.get("mesh.program.api")  # (not imported: no Task exists)
    if api is not None and isinstance(fn, api.Task):
        return fn.fn
    return fn


@dataclass
class _CollOut:
    """In ``_execute``'s ``outs``: the elements of the collection parameter found at
    ``where`` (an index into ``args``, or a name in ``kwargs``) as the task left them,
    ``count`` of them (``mesh.program.containers.leaves`` to ``depth``)."""

    where: int | str
    depth: int | None
    count: int
    name: str = ""


@dataclass
class _FileArg:
    """A FILE_* parameter on its way to the worker: the file's bytes (None for FILE_OUT)."""

    name: str
    data: bytes | None
    writes: bool
    path: str = ""


def _execute(fn, args: tuple, kwargs: dict, outs: list, files: list, returns: int,
             refs: bool = False, flags: dict | None = None):
    """Runs on the worker: call ``fn`` and send back (value, mutated INOUT/OUT objects,
    bytes of written files, the agent's name). The objects in ``outs`` and ``files`` are the very ones in
    ``args``/``kwargs`` (one pickle keeps identity), so in-place changes are seen; a
    ``_CollOut`` in ``outs`` stands for the elements of a collection parameter, read
    once the task returned (it may have replaced them).
    With ``refs``, some arguments are ``mesh.sched.objects.Ref``: fetched first (one object
    per id, so identity is kept). Outputs that pickle big stay at this agent and go
    back as a ``Ref`` (``_keep``). ``flags``: ``time_out`` (seconds, enforced here from
    now: ``mesh.program.timeout``) and ``inline`` (the tasks this one calls run inline,
    PyCOMPSs' classic mode). A task that raises sends back, on the exception
    (``__mesh_files__``), the bytes its written files held then (None: no file), so the
    program keeps what a failed task wrote, as COMPSs does."""
    from mesh.program import timeout

    flags = flags or {}
    if refs:
        args, kwargs, outs = _resolve(args, kwargs, outs)
    tmp = tempfile.mkdtemp(prefix="mesh-task-") if files else None
    try:
        for i, f in enumerate(files):
            d = os.path.join(tmp, str(i))
            os.mkdir(d)
            f.path = os.path.join(d, f.name)
            if f.data is not None:
                with open(f.path, "wb") as fh:
                    fh.write(f.data)
        if files:
            args = tuple(a.path if isinstance(a, _FileArg) else a for a in args)
            kwargs = {k: v.path if isinstance(v, _FileArg) else v for k, v in kwargs.items()}
        seconds = flags.get("time_out")
        name = getattr(fn, "__name__", "the task")

        def timed_out() -> TaskTimedOut:
            return TaskTimedOut(f"{name} ran longer than its time_out of {seconds} s")

        saved = slot.inline_nested
        slot.task_depth += 1
        slot.inline_nested = bool(flags.get("inline"))
        try:
            with timeout.guard(seconds, timed_out) as guard:
                value = fn(*args, **kwargs)
            if guard is not None and guard.expired:  # (it caught the TaskTimedOut)
                raise timed_out()
        except BaseException as exc:
            if files:
                _keep_files(exc, files)
            raise
        finally:
            slot.task_depth -= 1
            slot.inline_nested = saved
        if returns == 0:
            value = None
        elif returns > 1:
            value = tuple(value)
            if len(value) != returns:
                raise ValueError(f"{getattr(fn, '__name__', fn)} returned {len(value)} values, "
                                 f"its @task declares returns={returns}")
        if any(type(o) is _CollOut for o in outs):
            outs = _expand(outs, args, kwargs)
        written = []
        for f in files:
            if not f.writes:
                written.append(None)
                continue
            if not os.path.exists(f.path):
                raise FileNotFoundError(f"the task did not write its output file {f.name!r}")
            with open(f.path, "rb") as fh:
                written.append(fh.read())
        if slot.put_room > 0:
            if returns == 1:
                value = _keep(value)
            elif returns > 1:
                value = tuple(_keep(v) for v in value)
            outs = [_keep(o) for o in outs]
        return value, outs, written, os.environ.get("MESH_AGENT_NAME", "?")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _keep_files(exc: BaseException, files: list) -> None:
    """A task raised: what its written files hold now travels on the exception."""
    kept = []
    for f in files:
        data = None
        if f.writes and f.path and os.path.isfile(f.path):
            try:
                with open(f.path, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = None
        kept.append(data)
    try:
        exc.__mesh_files__ = kept
    except (AttributeError, TypeError):  # (an exception type that takes no attribute)
        pass


def _expand(outs: list, args: tuple, kwargs: dict) -> list:
    """``outs`` with each ``_CollOut`` replaced by the collection's elements as the task
    left them; a task that changed how many there are fails (as in PyCOMPSs, a
    collection keeps its length)."""
    from mesh.program.containers import leaves

    flat: list = []
    for o in outs:
        if type(o) is not _CollOut:
            flat.append(o)
            continue
        coll = args[o.where] if type(o.where) is int else kwargs[o.where]
        if type(coll) is not list:
            raise TypeError(f"collection parameter {o.name!r} is no longer a list after the task")
        items = leaves(coll, o.depth)
        if len(items) != o.count:
            raise ValueError(f"collection parameter {o.name!r} had {o.count} element(s) and the task "
                             f"left {len(items)}: a task may replace the elements of a collection, "
                             f"not add or remove any")
        flat.extend(items)
    return flat


def _resolve(args: tuple, kwargs: dict, outs: list) -> tuple:
    """Fetch the ``Ref`` arguments' values (``slot.get``: from our agent, which may get
    them from their holder) and put them in place: where the program's runtime put
    them, found by the same walk (``mesh.program.containers``), each argument from its
    own depth 0. One object per id, so identity is kept."""
    from mesh.program.containers import PASS, replace
    from mesh.sched.objects import Ref

    values: dict[str, Any] = {}

    def fetch(node: Any) -> Any:
        if type(node) is not Ref:
            return PASS
        value = values.get(node.oid, PASS)
        if value is PASS:
            value = values[node.oid] = pickle.loads(slot.get(node.oid, node.holder))
        return value

    return (tuple([replace(a, fetch) for a in args]), {k: replace(v, fetch) for k, v in kwargs.items()},
            [replace(o, fetch) for o in outs])


def _keep(value: Any) -> Any:
    """``value``, or a ``Ref`` to it when it pickles to more than ``slot.inline_max``
    bytes and our agent's store takes it. Small plain values are not even pickled."""
    t = type(value)
    if t in _ATOMS and (t is not bytes and t is not str or len(value) <= slot.inline_max // 4):
        return value
    if (t is tuple or t is list or t is dict) and len(value) <= 8 and _plain(value, 1) and all(
            type(v) not in (str, bytes) for v in (value.values() if t is dict else value)):
        return value  # a few numbers: cheaper to send than to measure
    data = dumps(value)
    if len(data) <= slot.inline_max:
        return value
    oid = slot.put(data)
    if oid is None:
        return value
    from mesh.sched.objects import Ref

    return Ref(oid, os.environ.get("MESH_AGENT_ID", ""), len(data))
