"""Task graph: the dependencies of a COMPSs-style program, with no I/O.

Theory of operation
-------------------
The program calls tasks; the shell turns each call into a ``TaskSpec`` and feeds it
to ``TaskGraph.submit``. The graph answers with actions (``graph_actions``): which
task may run now and on exactly which data versions, what became of each task, which
values the program waits for are resolved, and which stored values may be freed.
It holds ids, never values, and reads no clock: ``now`` comes with every event.
The shell carries out the actions of one call in order (see ``graph_actions``).

Data and versions (COMPSs data versioning, with renaming). A datum is an object id or
a file path; each write of it makes a new version, named by a ``DataVersion`` that is
never reused. An IN reads the datum's latest version; an OUT writes a new one; an
INOUT reads the latest and writes a new one. A task depends only on the writers of
the versions it reads (read-after-write). Because every version is stored under its
own name (a file version under a renamed path, renamed back when the task runs,
COMPSs's ``keepRename``), a writer never waits for readers of the older version
(write-after-read) nor for its older writer (write-after-write): those are false
dependencies and the graph never creates them. There is no in-place mode: the shell
hands an INOUT task a copy of the version it reads (objects travel pickled anyway;
a file is copied to the new version's name), so readers of the old version keep it.
A datum the program passes without any task having written it starts with a version
that is the program's own value: ``Snapshot`` tells the shell to store it. After the
program changed a value it got back, ``host_write`` makes a new such version. Return
values are data too: the ``i``-th return of task ``t`` is the datum ``return_id(t, i)``.

Task states and the allowed moves (``_ALLOWED``). The events check their inputs
before acting, so misuse raises ``LocalProtocolError`` and changes nothing; every
move is checked against the table again (a failure there is a bug in this module)::

    (new)   -> pending                 submit
    pending -> ready                   every version it reads is resolved
    pending -> cancelled               an input was cancelled, or the graph failed
                                       (also at once, when submitted after that)
    ready   -> running                 started (optional; arms the time-out)
    ready|running -> done              done(ok)
    ready|running -> ready             failure under RETRY with attempts left (attempt + 1)
    ready|running -> failed            failure under any other policy, or retries used up
    ready|running -> cancelled         the graph failed (Kill is emitted)

A failure is a ``done`` with a failed outcome, a ``timed_out`` from the shell, or a
deadline passed at ``tick`` (both emit ``Kill`` first). Then the task's policy (or the
one the outcome names instead, ``Outcome.policy``):
RETRY runs it again up to ``max_attempts`` and then acts as FAIL; FAIL cancels every
unfinished task and the graph is failed (``GraphFailed``; later submissions are
cancelled at once); CANCEL_SUCCESSORS cancels the tasks that read its outputs,
transitively, and the rest go on; IGNORE marks its outputs as failed values: the
tasks that read them still run (their ``Access.read_failed`` says so, the shell passes
None, as COMPSs passes empty values), and ``wait_on`` on them resolves with an error.

``cancel`` cancels unfinished tasks the shell names (a task group a task of which
signalled it, PyCOMPSs' ``COMPSsException``), as a failed predecessor would: running
attempts are killed, and the tasks that read their outputs are cancelled in turn.

Exactly once: a result for an older attempt, for a task already terminal, or for a
task the graph has released is ignored and counted; a result for an attempt never
emitted is a bug (``LocalProtocolError``). Each (task, attempt) gets one ``Ready``.
Among the tasks that become ready in one call, priority tasks come first, then the
order of submission.

Bounded memory. A version is dropped once it is resolved, no unfinished task reads
it, and the program cannot name it any more: it is not the latest version, or the
program gave the datum up (``forget``, which the shell calls when the program drops
its last reference, e.g. a future's finalizer). Dropping an available version emits
``Release``: the shell frees it wherever it is stored. A finished task is dropped
once none of its outputs is left, a datum once none of its versions is. So a long
program that drops its futures keeps the graph, and the shell's store, bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from mesh.errors import LocalProtocolError
from mesh.sched.deadlines import Deadlines
from mesh.sched.graph_actions import (
    Access,
    Action,
    Cancelled,
    DataState,
    DataStatus,
    DataVersion,
    Finished,
    GraphFailed,
    Kill,
    Ready,
    Release,
    Resolved,
    Snapshot,
    TaskState,
    Transition,
)
from mesh.sched.taskspec import (
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    IN,
    INOUT,
    OUT,
    Direction,
    OnFailure,
    Outcome,
    Param,
    TaskSpec,
    return_id,
)
from mesh.sched.versions import Version, VersionTable

__all__ = [
    "FILE_IN", "FILE_INOUT", "FILE_OUT", "IN", "INOUT", "OUT", "Access", "Action", "Cancelled",
    "DataState", "DataStatus", "DataVersion", "Direction", "Finished", "GraphFailed", "Kill",
    "OnFailure", "Outcome", "Param", "Ready", "Release", "Resolved", "Snapshot", "TaskGraph",
    "TaskSpec", "TaskState", "Transition", "return_id",
]

P, R, U = TaskState.PENDING, TaskState.READY, TaskState.RUNNING
_ALLOWED: dict[TaskState | None, frozenset[TaskState]] = {
    None: frozenset({P}),
    P: frozenset({R, TaskState.CANCELLED}),
    R: frozenset({U, R, TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED}),
    U: frozenset({R, TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


class _Task:
    __slots__ = ("spec", "seq", "state", "attempt", "announced", "bindings", "reads", "writes",
                 "returns", "missing", "deadline", "live_outputs")

    def __init__(self, spec: TaskSpec, seq: int) -> None:
        self.spec = spec
        self.seq = seq
        self.state: TaskState | None = None
        self.attempt = 1
        self.announced = 0  # last attempt a Ready was emitted for
        self.bindings: tuple[tuple[Direction, Version | None, Version | None], ...] = ()
        self.reads: tuple[Version, ...] = ()  # distinct versions read; cleared when terminal
        self.writes: tuple[Version, ...] = ()  # versions written, returns included
        self.returns: tuple[Version, ...] = ()
        self.missing = 0  # versions read that are still pending
        self.deadline: float | None = None
        self.live_outputs = 0


class TaskGraph:
    """Dependencies, versions, failures and release of one program's tasks. See the
    module docstring. Every event returns the actions the shell must carry out, in
    order; misuse raises ``LocalProtocolError`` and changes nothing."""

    def __init__(self, log_size: int = 1000) -> None:
        self._tasks: dict[str, _Task] = {}
        self._versions = VersionTable(self._output_dropped)
        self._seq = 0  # submission order
        self._active = 0  # tasks not terminal
        self._failure: tuple[str, str] | None = None
        self._deadlines = Deadlines()  # keys (task id, attempt) of running attempts
        self._now = 0.0
        self._acts: list[Action] = []
        self._ready: list[_Task] = []
        self._releases: list[Action] = []
        self._to_cancel: list[tuple[_Task, str]] = []
        self.log: deque[Transition] = deque(maxlen=log_size)
        self.counters: dict[str, int] = dict.fromkeys(
            ("submitted", "done", "failed", "cancelled", "retried", "timed_out", "released",
             "stale_results", "unknown_results", "duplicate_starts"), 0)

    # ------------------------------------------------------------------ events

    def submit(self, spec: TaskSpec, now: float) -> list[Action]:
        """A task call. Raises ``LocalProtocolError`` if the task id is in use, a return
        id is already a datum, or one id is used both as a file and as an object."""
        if not isinstance(spec, TaskSpec):
            raise LocalProtocolError(f"submit needs a TaskSpec, not {type(spec).__name__}")
        task_id = spec.task_id
        if task_id in self._tasks:
            raise LocalProtocolError(f"task id {task_id!r} is already in the graph")
        kinds: dict[str, bool] = {}
        for p in spec.params:
            if p.data_id is None:
                continue
            known = self._versions.is_file(p.data_id)
            kind = known if known is not None else kinds.get(p.data_id, p.direction.is_file)
            if kind != p.direction.is_file:
                raise LocalProtocolError(
                    f"task {task_id}: {p.data_id!r} is used both as a file and as an object")
            kinds[p.data_id] = kind
        ret_ids = [return_id(task_id, i) for i in range(spec.returns)]
        for rid in ret_ids:
            if rid in self._versions or rid in kinds:
                raise LocalProtocolError(f"task {task_id}: return id {rid!r} is already a datum")

        self._begin(now)
        self._seq += 1
        task = _Task(spec, self._seq)
        self._tasks[task_id] = task
        self._active += 1
        self.counters["submitted"] += 1
        self._move(task, P, "submit")
        read_of: dict[str, Version] = {}
        for p in spec.params:  # every read sees the state before this task's writes
            if p.data_id is not None and p.direction.reads and p.data_id not in read_of:
                read_of[p.data_id] = self._versions.read(
                    p.data_id, p.direction.is_file, self._acts, self._releases)
        for v in read_of.values():
            v.readers += 1
        write_of: dict[str, Version] = {}
        for p in spec.params:
            if p.data_id is not None and p.direction.writes:
                write_of[p.data_id] = self._versions.write(
                    p.data_id, p.direction.is_file, task, DataState.PENDING, self._releases)
        task.returns = tuple(self._versions.write(rid, False, task, DataState.PENDING, self._releases)
                             for rid in ret_ids)
        task.reads = tuple(read_of.values())
        task.writes = tuple(write_of.values()) + task.returns
        task.live_outputs = len(task.writes)
        task.bindings = tuple(
            (p.direction,
             read_of[p.data_id] if p.data_id is not None and p.direction.reads else None,
             write_of[p.data_id] if p.data_id is not None and p.direction.writes else None)
            for p in spec.params)

        lost = next((v for v in task.reads if v.state is DataState.CANCELLED), None)
        if self._failure is not None:
            self._to_cancel.append((task, self._failure_text()))
        elif lost is not None:
            self._to_cancel.append((task, lost.error))
        else:
            waiting = [v for v in task.reads if v.state is DataState.PENDING]
            task.missing = len(waiting)
            for v in waiting:
                v.waiters.append(task)
            if not waiting:
                self._move(task, R, "inputs available")
                self._ready.append(task)
        return self._end()

    def started(self, task_id: str, attempt: int, now: float) -> list[Action]:
        """The shell started ``attempt`` of a task: its time-out runs from ``now``.
        Optional (a task may go from ready to done), but without it no time-out."""
        task = self._current(task_id, attempt, "started")
        if task is None:
            return []
        if task.state is U:
            self.counters["duplicate_starts"] += 1
            return []
        self._begin(now)
        self._move(task, U, "started")
        if task.spec.time_out is not None:
            task.deadline = now + task.spec.time_out
            self._deadlines.arm((task_id, attempt), task.deadline)
        return self._end()

    def done(self, task_id: str, attempt: int, outcome: Outcome, now: float) -> list[Action]:
        """``attempt`` of a task ended with ``outcome``. A late or duplicate report is
        ignored and counted; one for an attempt never emitted raises
        ``LocalProtocolError``."""
        if not isinstance(outcome, Outcome):
            raise LocalProtocolError(f"done needs an Outcome, not {type(outcome).__name__}")
        task = self._current(task_id, attempt, "done")
        if task is None:
            return []
        self._begin(now)
        if outcome.ok:
            self._move(task, TaskState.DONE, "done")
            self.counters["done"] += 1
            self._acts.append(Finished(task_id, attempt, TaskState.DONE))
            self._terminate(task)
            for v in task.writes:
                self._resolve(v, DataState.AVAILABLE, "")
        else:
            self._attempt_failed(task, outcome.error or "failed", "failed", outcome.policy)
        return self._end()

    def cancel(self, task_ids: Iterable[str], reason: str, now: float) -> list[Action]:
        """Cancel these tasks if they are not over (pending, ready or running: a running
        attempt gets ``Kill``); the tasks that read their outputs are cancelled too.
        Unknown and finished tasks are ignored."""
        self._begin(now)
        for task_id in self._ids(task_ids):
            task = self._tasks.get(task_id)
            if task is not None and task.state is not None and not task.state.terminal:
                self._to_cancel.append((task, reason))
        return self._end()

    def timed_out(self, task_id: str, attempt: int, now: float) -> list[Action]:
        """The shell's own timer says ``attempt`` ran too long: kill it and handle it as
        a failure. Late reports are ignored and counted, as for ``done``."""
        task = self._current(task_id, attempt, "timed_out")
        if task is None:
            return []
        self._begin(now)
        self._time_out(task)
        return self._end()

    def tick(self, now: float) -> list[Action]:
        """Time passed: running attempts whose time-out expired are killed and failed."""
        self._begin(now)
        for task_id, attempt in self._deadlines.expired(now):
            task = self._tasks.get(task_id)
            if task is not None and task.state is U and task.attempt == attempt:
                task.deadline = None
                self._time_out(task)
        return self._end()

    def wait_on(self, data_ids: Iterable[str] | str) -> list[Action]:
        """The program waits for the latest version of each datum. ``Resolved`` comes
        now for those already resolved, and later (from the event that resolves them)
        for the others. The shell flattens futures nested in lists and dicts into ids.
        Raises ``LocalProtocolError`` for an id that is not a datum of the graph."""
        versions = [self._versions.latest(d) for d in self._ids(data_ids)]
        self._begin(None)
        for v in versions:
            if v.state is DataState.PENDING:
                v.watched = True
            else:
                self._acts.append(Resolved(v.ref, v.state is DataState.AVAILABLE, v.error))
        return self._end()

    def forget(self, data_ids: Iterable[str] | str) -> list[Action]:
        """The program no longer names these data (a future was dropped, a file is no
        longer wanted): their latest versions may be released once no task reads them.
        Unknown ids are ignored (forget is idempotent)."""
        self._begin(None)
        for data_id in self._ids(data_ids):
            self._versions.forget(data_id, self._releases)
        return self._end()

    def host_write(self, data_ids: Iterable[str] | str, file: bool = False) -> list[Action]:
        """The program changed its own value of these data (after a wait_on, say): each
        gets a new version, which the shell stores on ``Snapshot``. Readers of older
        versions are not disturbed (renaming). Raises ``LocalProtocolError`` if an id is
        a datum of the other kind."""
        ids = self._ids(data_ids)
        for data_id in ids:
            known = self._versions.is_file(data_id)
            if known is not None and known != file:
                raise LocalProtocolError(f"{data_id!r} is not a {'file' if file else 'object'}")
        self._begin(None)
        for data_id in ids:
            v = self._versions.write(data_id, file, None, DataState.AVAILABLE, self._releases)
            self._acts.append(Snapshot(v.ref))
        return self._end()

    # ------------------------------------------------------------------ queries

    def barrier(self) -> bool:
        """True when every submitted task is terminal (done, failed or cancelled)."""
        return self._active == 0

    def task_state(self, task_id: str) -> TaskState | None:
        """The task's state, or None if unknown or already released from the graph."""
        task = self._tasks.get(task_id)
        return task.state if task is not None else None

    def data_state(self, data_id: str) -> DataStatus:
        """The latest version of a datum and its state. Raises ``LocalProtocolError``
        for an id that is not a datum of the graph."""
        v = self._versions.latest(data_id)
        return DataStatus(v.ref, v.state, v.error)

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do, or None."""
        return self._deadlines.next()

    @property
    def failure(self) -> tuple[str, str] | None:
        """(task id, error) of the failure that failed the graph, or None."""
        return self._failure

    @property
    def active_count(self) -> int:
        return self._active

    @property
    def task_count(self) -> int:
        """Tasks held: unfinished ones and finished ones whose outputs are still held."""
        return len(self._tasks)

    @property
    def data_count(self) -> int:
        return len(self._versions)

    @property
    def version_count(self) -> int:
        return self._versions.live_versions

    # ------------------------------------------------------------------ internals

    def _begin(self, now: float | None) -> None:
        if now is not None:
            self._now = now
        self._acts, self._ready, self._releases = [], [], []

    def _end(self) -> list[Action]:
        while self._to_cancel:
            task, reason = self._to_cancel.pop()
            self._cancel(task, reason)
        ready = [t for t in self._ready if t.state is R and t.announced != t.attempt]
        ready.sort(key=lambda t: (not t.spec.priority, t.seq))
        out = self._acts
        for t in ready:
            t.announced = t.attempt
            out.append(self._ready_action(t))
        out.extend(self._releases)
        self.counters["released"] += len(self._releases)
        self._acts, self._ready, self._releases = [], [], []
        return out

    def _move(self, task: _Task, new: TaskState, cause: str) -> None:
        if new not in _ALLOWED[task.state]:
            raise LocalProtocolError(f"task {task.spec.task_id}: {task.state} -> {new} is not allowed")
        self.log.append(Transition(self._now, task.spec.task_id, task.attempt, task.state, new, cause))
        task.state = new

    def _current(self, task_id: str, attempt: int, event: str) -> _Task | None:
        """The task if a report about ``attempt`` concerns its current attempt, else None
        (stale and unknown reports are counted). Raises ``LocalProtocolError`` for an
        attempt the graph never emitted."""
        task = self._tasks.get(task_id)
        if task is None:
            self.counters["unknown_results"] += 1
            return None
        if not isinstance(attempt, int) or attempt < 1 or attempt > task.attempt:
            raise LocalProtocolError(f"{event}: task {task_id} has no attempt {attempt!r}")
        if task.state is None or task.state.terminal or attempt < task.attempt:
            self.counters["stale_results"] += 1
            return None
        if task.state is P:
            raise LocalProtocolError(f"{event}: task {task_id} is not ready yet")
        return task

    def _ready_action(self, task: _Task) -> Ready:
        params = tuple(
            Access(d, r.ref if r is not None else None, w.ref if w is not None else None,
                   r is not None and r.state is DataState.FAILED)
            for d, r, w in task.bindings)
        return Ready(task.spec.task_id, task.attempt, task.spec, params,
                     tuple(v.ref for v in task.returns))

    def _ids(self, data_ids: Iterable[str] | str) -> list[str]:
        return [data_ids] if isinstance(data_ids, str) else list(data_ids)

    def _resolve(self, v: Version, state: DataState, error: str) -> None:
        v.state = state
        v.error = error
        if v.watched:
            v.watched = False
            self._acts.append(Resolved(v.ref, state is DataState.AVAILABLE, error))
        waiters, v.waiters = v.waiters, []
        for task in waiters:
            if task.state is not P:
                continue
            if state is DataState.CANCELLED:
                self._to_cancel.append((task, error))
                continue
            if self._failure is not None:
                self._to_cancel.append((task, self._failure_text()))
                continue
            task.missing -= 1
            if task.missing == 0:
                self._move(task, R, "inputs available")
                self._ready.append(task)
        self._versions.maybe_drop(v, self._releases)

    def _output_dropped(self, task: _Task) -> None:
        task.live_outputs -= 1
        self._maybe_drop_task(task)

    def _maybe_drop_task(self, task: _Task) -> None:
        if (task.state is not None and task.state.terminal and task.live_outputs == 0
                and self._tasks.get(task.spec.task_id) is task):
            del self._tasks[task.spec.task_id]

    def _terminate(self, task: _Task) -> None:
        """Bookkeeping for a task that became terminal: it reads nothing any more."""
        self._active -= 1
        self._disarm(task)
        reads, task.reads, task.bindings = task.reads, (), ()
        for v in reads:
            v.readers -= 1
            self._versions.maybe_drop(v, self._releases)
        self._maybe_drop_task(task)

    def _attempt_failed(self, task: _Task, error: str, cause: str,
                        policy: OnFailure | None = None) -> None:
        policy = task.spec.on_failure if policy is None else policy
        if policy is OnFailure.RETRY and task.attempt < task.spec.max_attempts:
            self._disarm(task)
            self._move(task, R, f"retry after: {cause}")
            task.attempt += 1
            self.counters["retried"] += 1
            self._ready.append(task)
            return
        task_id = task.spec.task_id
        self._move(task, TaskState.FAILED, cause)
        self.counters["failed"] += 1
        self._acts.append(Finished(task_id, task.attempt, TaskState.FAILED, error))
        self._terminate(task)
        text = f"task {task_id} failed: {error}"
        if policy is OnFailure.IGNORE:
            for v in task.writes:
                self._resolve(v, DataState.FAILED, text)
        elif policy is OnFailure.CANCEL_SUCCESSORS:
            for v in task.writes:
                self._resolve(v, DataState.CANCELLED, text)
        else:  # FAIL, or RETRY with no attempt left
            self._failure = (task_id, error)
            self._acts.append(GraphFailed(task_id, error))
            for v in task.writes:
                self._resolve(v, DataState.FAILED, text)
            reason = self._failure_text()
            self._to_cancel.extend((t, reason) for t in self._tasks.values()
                                   if t.state is not None and not t.state.terminal)

    def _cancel(self, task: _Task, reason: str) -> None:
        if task.state is None or task.state.terminal:
            return
        if task.state in (R, U) and task.announced == task.attempt:
            self._acts.append(Kill(task.spec.task_id, task.attempt, reason))
        self._move(task, TaskState.CANCELLED, reason)
        self.counters["cancelled"] += 1
        self._acts.append(Cancelled(task.spec.task_id, reason))
        self._terminate(task)
        for v in task.writes:
            self._resolve(v, DataState.CANCELLED, reason)

    def _time_out(self, task: _Task) -> None:
        text = f"TimedOut: attempt {task.attempt} ran longer than {task.spec.time_out} s"
        self.counters["timed_out"] += 1
        self._acts.append(Kill(task.spec.task_id, task.attempt, text))
        self._attempt_failed(task, text, "timed out")

    def _failure_text(self) -> str:
        assert self._failure is not None
        return f"graph failed: task {self._failure[0]} failed: {self._failure[1]}"

    def _disarm(self, task: _Task) -> None:
        if task.deadline is not None:
            task.deadline = None
            self._deadlines.disarm((task.spec.task_id, task.attempt))
