"""The program-side runtime of the task model (``mesh.api``): it drives a ``TaskGraph``.

Theory of operation
-------------------
As in PyCOMPSs, the graph lives in the process that runs the main program. One
``Runtime`` belongs to one ``Client`` (the process's default client when a task is
called). Every graph event runs under ``Runtime.lock`` and its actions are carried
out at once, in order, under the same lock:

* ``Snapshot``: store the program's value (the object itself, or the bytes of the
  file read now) as that version;
* ``Ready``: bind the versions read into the call's arguments and send
  ``_execute(fn, ...)`` with ``client._submit_to`` (``submit`` with a callback instead
  of a Future; non-blocking: it only queues a frame);
* ``Resolved``: complete the ``wait_on`` waiter of that version;
* ``Release``: drop the stored value; ``Finished``/``Cancelled``/``GraphFailed``:
  bookkeeping (the task's fate, task groups, ``barrier``).

The client's thread never waits for the lock. A result is handled where it arrives
(``_result``, the call's callback, on the client's thread) when the lock is free:
``graph.done`` and the ``Ready`` tasks it frees are sent at once, without waking
another thread (what makes a chain of dependent tasks fast). When the lock is taken
(the program is submitting tasks) the result only becomes an event on ``inbox``: the
runtime's own thread (``mesh-runtime``) takes events off it, calls ``graph.done`` and
ticks the graph for time-outs. Futures dropped by the program post a ``forget`` there
too (a finalizer may run anywhere, even inside the lock). Waking a thread costs more
than handling an event, so ``_post`` rings the thread's doorbell only when no ring is
pending; the thread clears that flag *before* it empties ``inbox``, so an event
posted after that rings again, and a burst of results and dropped futures wakes the
thread once, not once per event. (Events of different tasks may so be handled out of
order; the graph does not mind.) Progress (``slot.progress``, inside a worker) is
reported by whichever thread handled a result, at most every 0.2 s.

Values are sent when a task is ready, not copied when it is called: an object passed
as a plain argument (not INOUT) must not be changed by the program before its task
ran. A timed-out attempt (``Kill``) is cancelled (``Client.cancel``): the agents stop
it wherever it runs, and a result that still arrives is ignored. A failed attempt's
agent is remembered, and a RETRY asks the mesh to run it elsewhere (``Call.avoid``).

A big task output stays at the agent that made it (``mesh.objects``): the version's
value is then a ``Ref``, sent as such to the tasks that read it (the call names where
its inputs are, ``Call.inputs``, for placement), fetched by ``wait_on``, and freed at its
holder when the version is released. When a holder lost one, the task that made it runs
again (``mesh.lineage``, whose ``Recovery`` mixin holds that part of this class).
"""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mesh import slot
from mesh.errors import LocalProtocolError
from mesh.lineage import Lineage, Recovery, holdings, outputs_of
from mesh.messages import Needs
from mesh.objects import ObjectLost, Ref
from mesh.sched.graph import (
    IN,
    INOUT,
    OUT,
    Cancelled,
    DataVersion,
    Finished,
    GraphFailed,
    Kill,
    OnFailure,
    Outcome,
    Param,
    Ready,
    Release,
    Resolved,
    Snapshot,
    TaskGraph,
    TaskSpec,
    TaskState,
    return_id,
)
from mesh.taskexec import TaskCancelled, TaskFailed, TaskFuture, TaskTimedOut, _execute, _FileArg
from mesh.tasktrace import TaskTrace

__all__ = ["Runtime", "TaskCancelled", "TaskFailed", "TaskFuture", "TaskTimedOut", "current"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ program side


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
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
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
    """``x`` with every ``_Slot`` replaced by its value; containers without slots are
    returned as they are (no copy)."""
    if isinstance(x, _Slot):
        return values[x.index]
    if type(x) in (list, tuple):
        items = [substitute(i, values) for i in x]
        if any(a is not b for a, b in zip(items, x, strict=True)):
            return items if type(x) is list else tuple(items)
        return x
    if type(x) is dict:
        new = {k: substitute(v, values) for k, v in x.items()}
        return new if any(new[k] is not x[k] for k in x) else x
    return x


def scan(x: Any, on_future) -> Any:
    """``x`` with every TaskFuture inside lists, tuples and dicts (recursively) replaced
    by ``on_future(fut)``; containers without futures are returned as they are."""
    if isinstance(x, TaskFuture):
        return on_future(x)
    if type(x) in (list, tuple):
        items = [scan(i, on_future) for i in x]
        if any(a is not b for a, b in zip(items, x, strict=True)):
            return items if type(x) is list else tuple(items)
        return x
    if type(x) is dict:
        new = {k: scan(v, on_future) for k, v in x.items()}
        return new if any(new[k] is not x[k] for k in x) else x
    return x


class _Group:
    def __init__(self) -> None:
        self.pending = 0
        self.failed: list[str] = []


class Runtime(Recovery):
    """The task graph of the program's tasks sent through one client. See the module
    docstring."""

    def __init__(self, client) -> None:
        self.client = client
        self.graph = TaskGraph()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._group_ended = False  # a task group's last task ended since the last _notify
        self.inbox: collections.deque[tuple] = collections.deque()  # events, see ``_post``
        self._doorbell: queue.SimpleQueue = queue.SimpleQueue()
        self._rung = False  # the doorbell was rung and the thread has not answered yet
        self._ids = itertools.count(1)
        self._calls: dict[str, _Call] = {}
        self._values: dict[DataVersion, Any] = {}
        self._running: dict[str, Ready] = {}
        self._call_id: dict[str, str] = {}  # task id -> the call of its running attempt
        self._failed_on: dict[str, list[str]] = {}  # task id -> agents its attempts failed on
        self._waiters: dict[DataVersion, tuple[Future, str | None]] = {}
        self._last_exc: dict[str, BaseException] = {}
        self._fate: dict[str, BaseException] = {}
        self._last_writer: dict[str, str] = {}
        self._objects: dict[int, tuple[str, Any]] = {}  # id(obj) -> (data id, obj): pinned
        self._object_of: dict[str, Any] = {}
        self._groups: dict[str, list[_Group]] = {}
        self.failure: tuple[str, str] | None = None
        self.failure_exc: BaseException | None = None
        self._failed_exc: BaseException | None = None
        self.stale_results = 0
        self._progress: tuple[tuple | None, float] = (None, 0.0)  # last reported, when
        self._progress_base: tuple[str | None, tuple] = (None, (0, 0, 0))  # call, counters
        self.trace = TaskTrace()  # the run's task graph, for `mesh run --graph`
        self._sent: dict[str, tuple] = {}  # task id -> _execute's arguments as sent
        self.lineage = Lineage()  # how lost outputs kept at agents are made again
        self._to_free: dict[str, list[str]] = {}  # holder -> released oids, sent after _apply
        self._thread = threading.Thread(target=self._loop, name="mesh-runtime", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ program thread

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

        template: dict = {}
        with self.lock:
            if slot.call_id != self._progress_base[0]:  # a worker's next call: a new run
                c = self.graph.counters
                self._progress_base = (slot.call_id,
                                       (c["submitted"], c["done"], c["failed"] + c["cancelled"]))
            for pname, value in arguments.items():
                d = directions.get(pname, IN) if directions else IN
                if d is not IN and d.is_file:  # (Direction's properties cost a call)
                    path = os.path.abspath(os.fspath(value))
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
                    template[pname] = scan(value, future)
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

    def wait(self, items: list[tuple[str, str | None]]) -> list[Any]:
        """The values of the latest versions of these data (data id, writer task id);
        raises what the first one that failed raised."""
        waits = []
        with self.lock:
            for data_id, writer in items:
                version = self.graph.data_state(data_id).version
                entry = self._waiters.get(version)
                if entry is None:
                    entry = self._waiters[version] = (Future(), self._last_writer.get(data_id, writer))
                waits.append(entry[0])
            self._apply(self.graph.wait_on([d for d, _ in items]))
            self._notify()
        if all(w.done() for w in waits):
            values = [w.result() for w in waits]
        else:
            with slot.lent():  # inside a task: give the slot back while we wait
                values = [w.result() for w in waits]
        return [self._fetch(v) if type(v) is Ref else v for v in values]

    def object_data_id(self, obj: Any) -> str | None:
        with self.lock:
            entry = self._objects.get(id(obj))
            return entry[0] if entry is not None and entry[1] is obj else None

    def known(self, data_id: str) -> bool:
        with self.lock:
            return self._known(data_id)

    def barrier(self) -> None:
        with slot.lent(), self.cond:
            self.cond.wait_for(lambda: self.graph.active_count == 0)
            failure = self.failure
        if failure is not None:
            task_id, error = failure
            raise TaskFailed(f"the task graph failed: task {task_id} failed: {error}") \
                from self.failure_exc

    def wait_group(self, group: _Group) -> None:
        with slot.lent(), self.cond:
            self.cond.wait_for(lambda: group.pending == 0)

    def forget(self, data_id: str) -> None:
        """From a finalizer: never takes the lock here."""
        self._post(("forget", data_id))

    def _post(self, event: tuple) -> None:
        """Hand an event to the runtime's thread (from any thread, never under a lock
        of ours); see the module docstring."""
        self.inbox.append(event)
        if not self._rung:
            self._rung = True
            self._doorbell.put(None)

    # ------------------------------------------------------------------ internals

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

    def _loop(self) -> None:
        closed_since = None
        while True:
            with self.lock:
                nd = self.graph.next_deadline()
            timeout = 0.5 if nd is None else min(0.5, max(0.0, nd - time.monotonic()))
            try:
                self._doorbell.get(timeout=timeout)
            except queue.Empty:
                pass
            self._rung = False  # before emptying the inbox: see the module docstring
            events = []
            while self.inbox:
                events.append(self.inbox.popleft())
            with self.cond:
                self._handle(events)
                idle = self.graph.active_count == 0
                progress = self._progress_due()
            if progress is not None:
                slot.progress(*progress)  # inside `mesh run`: the CLI shows done/total
            if self.client._closed.is_set():
                closed_since = closed_since or time.monotonic()
                if (idle and not self.inbox) or time.monotonic() - closed_since > 30:
                    return

    def _handle(self, events: list[tuple]) -> None:
        """Carry out events, under the lock."""
        for ev in events:
            try:
                self._event(ev)
            except Exception:  # a bug here: keep the runtime alive, say so
                log.exception("mesh runtime: handling %r failed", ev[:2])
        if self.graph.next_deadline() is not None:
            self._apply(self.graph.tick(time.monotonic()))
        self._notify()

    def _progress_due(self) -> tuple[int, int, int] | None:
        """Under the lock: the graph's (submitted, done, failed) since the worker's call
        began (a worker runs one ``mesh run`` after another with this runtime), when it
        changed and the last report is 0.2 s old (reports go to the agent:
        ``slot.progress``)."""
        c, base = self.graph.counters, self._progress_base[1]
        progress = (c["submitted"] - base[0], c["done"] - base[1],
                    c["failed"] + c["cancelled"] - base[2])
        now = time.monotonic()
        if progress == self._progress[0] or now - self._progress[1] < 0.2:
            return None
        self._progress = (progress, now)
        return progress

    def _result(self, task_id: str, attempt: int, ok: bool, value: Any, kind: str = "") -> None:
        """A call is done (on the client's thread, as a rule): ``value`` is what
        ``_execute`` returned, or the exception. Handled here if the lock is free, else
        handed to the runtime's thread (see the module docstring)."""
        event = (kind + ("result" if ok else "failed"), task_id, attempt, value)
        if not self.lock.acquire(blocking=False):
            self._post(event)
            return
        progress = None
        try:
            self._handle([event])
            if self.graph.next_deadline() is not None:
                self._post(("tick",))  # the runtime's thread sleeps until the next deadline
            if slot.channel is not None:  # (only a worker reports progress)
                progress = self._progress_due()
        finally:
            self.lock.release()
        if progress is not None:
            slot.progress(*progress)

    def _event(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "tick":
            return
        if kind == "forget":
            data_id = ev[1]
            self._apply(self.graph.forget(data_id))
            self._last_writer.pop(data_id, None)
            task_id = data_id.rpartition("#r")[0]
            if task_id and self.graph.task_state(task_id) is None:
                self._fate.pop(task_id, None)
            return
        if kind.startswith("rerun"):
            self._rerun_finished(ev[1], kind == "rerunresult", ev[3])
            return
        _, task_id, attempt, payload = ev
        ready = self._running.get(task_id)
        if ready is None or ready.attempt != attempt:
            self.stale_results += 1  # a killed (timed-out) or cancelled attempt
            return
        del self._running[task_id]
        self._call_id.pop(task_id, None)
        now = time.monotonic()
        exc = payload if kind == "failed" else None
        if type(exc) is ObjectLost and self._recover(exc.oid, ("resubmit", task_id)) is not None:
            self._running[task_id] = ready  # sent again once its input is made again
            return
        sent = self._sent.pop(task_id, None)
        if exc is None:
            try:
                outputs = self._store(task_id, ready, payload)
                if sent is not None:
                    self.lineage.record(task_id, ready, self._calls[task_id], sent, outputs)
            except Exception as e:  # a malformed answer, or writing a file back failed
                exc = e
        if exc is None:
            self._apply(self.graph.done(task_id, attempt, Outcome.OK, now))
        else:
            self._last_exc[task_id] = exc
            agent = getattr(exc, "mesh_agent", None)
            if agent:
                self._failed_on.setdefault(task_id, []).append(agent)
            self._apply(self.graph.done(task_id, attempt,
                                        Outcome.failed(f"{type(exc).__name__}: {exc}"), now))

    def _store(self, task_id: str, ready: Ready, result: tuple) -> list:
        """Keep a task's outputs as the values of their versions (files are written
        back); returns the object outputs [(version, value)] (values may be ``Ref``)."""
        value, outs, files, agent = result
        self.trace.ran(task_id, agent)
        call = self._calls[task_id]
        outputs = outputs_of(ready, call, result)
        for version, v in outputs:
            self._values[version] = v
        files = list(files)
        for access, info in zip(ready.params, call.slots, strict=True):
            if info.kind != "file":
                continue
            data = files.pop(0)
            if access.write is None:
                continue
            self._values[access.write] = data
            if self.graph.data_state(access.write.data_id).version == access.write:
                tmp = f"{info.value}.mesh-tmp"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, info.value)
        return outputs

    def _apply(self, acts: list) -> None:
        for act in acts:
            if isinstance(act, Ready):
                self._submit(act)
            elif isinstance(act, Resolved):
                entry = self._waiters.pop(act.version, None)
                if entry is None:
                    continue
                fut, writer = entry
                if act.ok:
                    fut.set_result(self._values.get(act.version))
                else:
                    fut.set_exception(self._fate.get(writer) or TaskFailed(act.error))
            elif isinstance(act, Snapshot):
                data_id = act.version.data_id
                if data_id.startswith("file:"):
                    try:
                        with open(data_id[5:], "rb") as fh:
                            self._values[act.version] = fh.read()
                    except OSError as exc:  # the task that reads it fails with this
                        self._values[act.version] = exc
                else:
                    self._values[act.version] = self._object_of[data_id]
            elif isinstance(act, Release):
                value = self._values.pop(act.version, None)
                if type(value) is Ref:  # kept at an agent: free it there
                    self._to_free.setdefault(value.holder, []).append(value.oid)
            elif isinstance(act, Kill):
                ready = self._running.get(act.task_id)
                if ready is not None and ready.attempt == act.attempt:
                    del self._running[act.task_id]
                    self._sent.pop(act.task_id, None)
                    call_id = self._call_id.pop(act.task_id, None)
                    if call_id is not None:  # the agent stops it wherever it runs
                        self.client.cancel(call_id)
            elif isinstance(act, Finished):
                self._failed_on.pop(act.task_id, None)
                if act.state is TaskState.FAILED:
                    exc = self._last_exc.pop(act.task_id, None)
                    if exc is None:
                        cls = TaskTimedOut if act.error.startswith("TimedOut") else TaskFailed
                        exc = cls(f"task {act.task_id} failed: {act.error}")
                    self._fate[act.task_id] = exc
                    self._failed_exc = exc
                else:
                    self._last_exc.pop(act.task_id, None)
                self._terminal(act.task_id, act.state is TaskState.FAILED)
            elif isinstance(act, Cancelled):
                self._running.pop(act.task_id, None)
                self._sent.pop(act.task_id, None)
                self._fate[act.task_id] = TaskCancelled(f"task {act.task_id} cancelled: {act.reason}")
                self._terminal(act.task_id, False)
            elif isinstance(act, GraphFailed):
                self.failure = (act.task_id, act.error)
                self.failure_exc = self._failed_exc
        if self._to_free:
            to_free, self._to_free = self._to_free, {}
            for holder, oids in to_free.items():
                self.client.free(holder, oids)

    def _notify(self) -> None:
        """Under the lock: wake ``barrier`` and ``wait_group`` when what they wait for may
        have come (no task active, or a group's last task ended), not at every event: a
        wake of a waiting thread per result costs a thread switch per task."""
        if self.graph.active_count == 0 or self._group_ended:
            self._group_ended = False
            self.cond.notify_all()

    def _terminal(self, task_id: str, failed: bool) -> None:
        self._calls.pop(task_id, None)
        for g in self._groups.pop(task_id, ()):
            g.pending -= 1
            if g.pending == 0:
                self._group_ended = True
            if failed:
                g.failed.append((task_id, self._fate.get(task_id)))
        if self.graph.task_state(task_id) is None:  # no output left: nobody can wait on it
            self._fate.pop(task_id, None)

    def _submit(self, ready: Ready) -> None:
        call = self._calls[ready.task_id]
        values: list[Any] = []
        outs: list[Any] = []
        files: list[_FileArg] = []
        for access, info in zip(ready.params, call.slots, strict=True):
            if info.kind == "file":
                data = self._values[access.read] if access.read is not None else None
                if access.read_failed:
                    data = b""
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


_current: Runtime | None = None
_current_lock = threading.Lock()


def current(create: bool = True) -> Runtime | None:
    """The runtime of the process's default client, or None when no mesh is connected
    (task calls then run sequentially)."""
    global _current
    from mesh.client import default_client

    client = default_client()
    if client is None and create and slot.channel is not None:
        client = _worker_client()  # inside a task on an agent: nested tasks go to its mesh
    if client is None:
        return None
    rt = _current
    if rt is not None and rt.client is client:  # the common case, without the lock
        return rt
    with _current_lock:
        if _current is None or _current.client is not client:
            if not create:
                return None
            _current = Runtime(client)
        return _current


def _worker_client():
    """In a worker process: connect to our own agent (address and key from the
    environment the agent gave us), once; None if it does not answer."""
    from mesh import keys
    from mesh.client import connect
    from mesh.errors import MeshError

    address = os.environ.get("MESH_WORKER_AGENT")
    if not address:
        return None
    try:
        key = keys.MeshKey.parse(os.environ["MESH_WORKER_KEY"]) if os.environ.get("MESH_WORKER_KEY") else None
        return connect(address, timeout=10, key=key)
    except MeshError as exc:
        log.warning("nested tasks run here sequentially: cannot reach agent %s: %s", address, exc)
        return None
