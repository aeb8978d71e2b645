"""The program-side runtime of the task model (``mesh.program.api``): it drives a ``TaskGraph``.

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

Results, failures and futures the program dropped (``forget``) reach the graph on
the client's thread or on the runtime's own thread (``mesh-runtime``), as follows.

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

An event of an attempt that no longer runs (killed or cancelled) only counts in
``stale_results``. A result's outputs become the values of their versions (``_store``:
a file is written back while its version is the newest) and are recorded for
``mesh.program.recovery``; an attempt that failed because an input kept at an agent was lost
(``ObjectLost``) waits until it is made again (``Recovery.recover``) and is sent again
(``_resubmit``), or fails when it cannot be (``_fail_reader``).
``_apply`` carries out the graph's actions in order (the list above); the
oids of released ``Ref`` values are freed at their holders once it is done.

Nothing waits for ever because of a bug here. An exception while handling an event is
never only logged: a task's result that cannot be handled before the graph is told
fails that attempt (``_event_failed``: its policy decides, its waiters get the error);
a ``Ready`` that cannot be sent fails that attempt too. Any other action that raises
leaves the graph half-updated (the actions after it are lost), so the graph is
*broken* (``_break``): one ``GraphBroken`` error reaches every waiter, ``barrier`` and
task group at once, later calls raise it, and the calls in flight are cancelled.

A failed attempt (``_failed``) goes to the graph with the task's policy, except a
``COMPSsException``: never retried; in a task group the group's other unfinished tasks
are cancelled (``TaskGraph.cancel``) and the group keeps the exception for the program
(``TaskGroup``, ``barrier_group``: groups are found by name while not waited for). On a
task's last attempt what its outputs are is kept first (``_keep_failed``): a file holds
what the failed task left in it (also written to the program's path), and
``on_failure`` defaults replace that; the tasks that still run (IGNORE) and ``wait_on``
read these (``_kept``, dropped with the task's fate). Files the program deleted
(``delete_file``) are never written back; files it wrote itself (``open_file``) are
read from disk again by the next task that reads them (a ``host_write``).

Values are sent when a task is ready, not copied when it is called: an object passed
as a plain argument (not INOUT) must not be changed by the program before its task
ran. A task's ``time_out`` travels with each attempt and is enforced by the worker
that runs it, from when it starts (``mesh.program.timeout``): time spent waiting for a
slot does not count, and the attempt fails with ``TaskTimedOut`` like any failure. An
attempt the graph kills (``Kill``: its group was cancelled, the graph failed) is
cancelled (``Client.cancel``): the agents stop it wherever it runs, and a result that
still arrives is ignored. A failed attempt's agent is remembered, and a RETRY asks the
mesh to run it elsewhere (``Call.avoid``).

A big task output stays at the agent that made it (``mesh.sched.objects``): the version's
value is then a ``Ref``, sent as such to the tasks that read it (the call names where
its inputs are, ``Call.inputs``, for placement), fetched by ``wait_on``, and freed at its
holder when the version is released. When a holder lost one, the task that made it runs
again: the runtime's ``recovery`` part (``mesh.program.recovery``, which owns the outputs'
lineage, ``mesh.program.lineage``).

Inside a worker (nested tasks) the runtime is the worker's, shared by the calls it
runs one after another: a call ends when the tasks it called have (``finish_call``),
and a graph that failed is dropped then, so the next call starts anew.

``Runtime`` owns the graph, what is in flight (attempts, values, waiters, fates) and
both sides of it: the program thread's (``call``, ``wait``, ``barrier``, task groups)
and the events' (results, the runtime's thread, sending, the graph's actions). Two
parts own the rest, each given what it needs in its constructor: ``calls``
(``mesh.program.calls``: a call becomes a ``TaskSpec``, a ``Ready`` task's arguments)
and ``recovery`` (``mesh.program.recovery``: lost outputs made again; it owns their
lineage, ``mesh.program.lineage``).
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

from mesh.errors import LocalProtocolError
from mesh.program import slot
from mesh.program.calls import CallOptions, Calls, _Group, bind, needs_of
from mesh.program.containers import PASS
from mesh.program.lineage import holdings, outputs_of
from mesh.program.recovery import Recovery
from mesh.program.taskexec import (
    COMPSsException,
    GraphBroken,
    TaskCancelled,
    TaskFailed,
    TaskFuture,
    TaskTimedOut,
    _execute,
)
from mesh.program.tasktrace import TaskTrace
from mesh.sched.graph import (
    Cancelled,
    DataVersion,
    Finished,
    GraphFailed,
    Kill,
    OnFailure,
    Outcome,
    Ready,
    Release,
    Resolved,
    Snapshot,
    TaskGraph,
    TaskState,
    return_id,
)
from mesh.sched.objects import ObjectLost, Ref

__all__ = ["GraphBroken", "Runtime", "TaskCancelled", "TaskFailed", "TaskFuture", "TaskTimedOut", "current",
           "needs_of"]

log = logging.getLogger("mesh.runtime")  # (mesh.program.runtime: the name logs always had)
FATE_SWEEP = 64  # fates kept before the first sweep of those no longer needed (_set_fate)


class Runtime:
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
        self._values: dict[DataVersion, Any] = {}
        self._running: dict[str, Ready] = {}
        self._call_id: dict[str, str] = {}  # task id -> the call of its running attempt
        self._failed_on: dict[str, list[str]] = {}  # task id -> agents its attempts failed on
        self._waiters: dict[DataVersion, tuple[Future, str | None]] = {}
        self._last_exc: dict[str, BaseException] = {}
        self._fate: dict[str, BaseException] = {}  # failed/cancelled task -> what wait_on raises
        self._fate_sweep = FATE_SWEEP  # its size at which it is swept next (_set_fate)
        self._groups: dict[str, list[_Group]] = {}  # task id -> the groups it was called in
        self._named: dict[str, _Group] = {}  # open or unsynchronised task groups by name
        # values of versions a failed task did not make: what it left in a file, or an
        # on_failure default; read by the tasks that read them (IGNORE) and by wait_on.
        # Kept with the task's fate (swept with it, ``_drop_fate``)
        self._kept: dict[DataVersion, Any] = {}
        self._kept_of: dict[str, list[DataVersion]] = {}  # task id -> its versions in _kept
        self._dirty: set[str] = set()  # files the program changed itself (compss_open)
        self._deleted: set[str] = set()  # files deleted by the program: never written back
        self._no_more: tuple | None = None  # ("call", call id) after barrier(no_more_tasks)
        self._files_sweep = FATE_SWEEP  # the size of _deleted and _dirty at the next sweep
        self.failure: tuple[str, str] | None = None
        self.failure_exc: BaseException | None = None
        self._failed_exc: BaseException | None = None
        self.stale_results = 0
        self._progress: tuple[tuple | None, float] = (None, 0.0)  # last reported, when
        self._progress_base: tuple[str | None, tuple] = (None, (0, 0, 0))  # call, counters
        self.trace = TaskTrace()  # the run's task graph, for `mesh run --graph`
        self._sent: dict[str, tuple] = {}  # task id -> _execute's arguments as sent
        self._to_free: dict[str, list[str]] = {}  # holder -> released oids, sent after _apply
        self._retired = False  # dropped by finish_call: the thread ends once idle
        self.calls = Calls(self, self._known)  # the tasks' calls: specs, arguments, objects
        # how lost outputs kept at agents are made again (owns their lineage)
        self.recovery = Recovery(client, self.lock, self._values, self._resubmit, self._fail_reader,
                                 self._result)
        self.broken: GraphBroken | None = None  # an internal error failed it all (_break)
        self._thread = threading.Thread(target=self._loop, name="mesh-runtime", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ program thread

    def call(self, fn, signature: inspect.Signature, directions: dict, args: tuple, kwargs: dict,
             returns: int, name: str, priority: bool, on_failure: OnFailure,
             time_out: float | None, groups: list, options: CallOptions | None = None) -> list[str]:
        """Submit one task call (``mesh.program.calls``); returns its task id and the data
        ids of its returns."""
        arguments, positional = bind(signature, args, kwargs)
        with self.lock:
            if self.broken is not None:
                raise self.broken
            if self._no_more is not None and self._no_more == ("call", slot.call_id):
                raise RuntimeError(f"{name}: no task may be called after barrier(no_more_tasks=True)")
            if slot.call_id != self._progress_base[0]:  # a worker's next call: a new run
                c = self.graph.counters
                self._progress_base = (slot.call_id,
                                       (c["submitted"], c["done"], c["failed"] + c["cancelled"]))
            spec = self.calls.make(fn, signature, directions, arguments, positional, returns, name,
                                   priority, on_failure, time_out, groups, options)
            task_id = spec.task_id
            files = [p for p in spec.params if p.data_id is not None and p.direction.is_file]
            try:
                for p in files:  # a file the program changed since: its new contents first
                    if p.data_id in self._dirty:
                        self._dirty.discard(p.data_id)
                        if p.direction.reads:
                            self._apply(self.graph.host_write(p.data_id, file=True))
                    self._deleted.discard(p.data_id)
                acts = self.graph.submit(spec, time.monotonic())
            except BaseException:
                self.calls.end(task_id)
                raise
            self.trace.task(task_id, name, self.calls.wrote(spec))
            for g in groups:
                g.pending += 1
                g.tasks.add(task_id)
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
            if self.broken is not None:
                raise self.broken
            for data_id, writer in items:
                version = self.graph.data_state(data_id).version
                entry = self._waiters.get(version)
                if entry is None:
                    entry = self._waiters[version] = (Future(), self.calls.last_writer.get(data_id, writer))
                waits.append(entry[0])
            self._apply(self.graph.wait_on([d for d, _ in items]))
            self._notify()
        if all(w.done() for w in waits):
            values = [w.result() for w in waits]
        else:
            with slot.lent():  # inside a task: give the slot back while we wait
                values = [w.result() for w in waits]
        return [self.recovery.fetch(v) if type(v) is Ref else v for v in values]

    def object_data_id(self, obj: Any) -> str | None:
        with self.lock:
            return self.calls.object_data_id(obj)

    def known(self, data_id: str) -> bool:
        with self.lock:
            return self._known(data_id)

    def _known(self, data_id: str) -> bool:
        try:
            self.graph.data_state(data_id)
        except LocalProtocolError:
            return False
        return True

    def barrier(self) -> None:
        with slot.lent(), self.cond:
            self.cond.wait_for(lambda: self.graph.active_count == 0 or self.broken is not None)
            failure = self.failure
        if self.broken is not None:
            raise self.broken
        if failure is not None:
            task_id, error = failure
            raise TaskFailed(f"the task graph failed: task {task_id} failed: {error}") \
                from self.failure_exc

    def barrier_no_more(self) -> None:
        """``barrier``; then this program (this worker's call, or the process) may call no
        more tasks (PyCOMPSs' ``compss_barrier(no_more_tasks=True)``)."""
        self.barrier()
        with self.lock:
            self._no_more = ("call", slot.call_id)

    def wait_group(self, group: _Group) -> None:
        with slot.lent(), self.cond:
            self.cond.wait_for(lambda: group.pending == 0 or self.broken is not None)
        if self.broken is not None:
            raise self.broken

    def open_group(self, group: _Group) -> None:
        """A task group is entered: ``barrier_group(name)`` finds it until it is waited for."""
        with self.lock:
            self._named[group.name] = group

    def close_group(self, group: _Group) -> None:
        with self.lock:
            if self._named.get(group.name) is group:
                del self._named[group.name]

    def barrier_group(self, name: str) -> _Group:
        """Wait for the tasks of the group named ``name`` (one not waited for yet); returns
        it (its ``exception`` and ``failed`` say how it went). ValueError: no such group."""
        with self.lock:
            group = self._named.pop(name, None)
        if group is None:
            raise ValueError(f"no task group named {name!r} is waiting to be synchronised "
                             f"(never opened, or already waited for)")
        self.wait_group(group)
        return group

    def cancel_group(self, name: str) -> bool:
        """Cancel the unfinished tasks of the task group ``name`` (PyCOMPSs'
        ``compss_cancel_group``): they and the tasks that read their outputs end
        cancelled. False: no such group waiting to be synchronised."""
        with self.lock:
            group = self._named.get(name)
            if group is None:
                return False
            if group.tasks:
                self._apply(self.graph.cancel(sorted(group.tasks), f"task group {name!r} was cancelled",
                                              time.monotonic()))
                self._notify()
        return True

    def delete_object(self, obj: Any) -> bool:
        """The program gives up an object tasks write (PyCOMPSs' ``compss_delete_object``):
        the runtime stops tracking it and frees its versions once no task reads them.
        False: no task writes it."""
        with self.lock:
            data_id = self.calls.forget_object(obj)
            if data_id is None:
                return False
            self.calls.last_writer.pop(data_id, None)
            self._apply(self.graph.forget(data_id))
            self._notify()
        return True

    def delete_file(self, path: str) -> bool:
        """The program deletes a file (PyCOMPSs' ``compss_delete_file``): its versions are
        freed once no task reads them, no task's output is written to it any more (until
        a task is called with it again), and the file is removed now. False: no such file."""
        data_id = "file:" + os.path.abspath(path)
        with self.lock:
            if self._known(data_id):
                self._deleted.add(data_id)
                self.calls.last_writer.pop(data_id, None)
                self._apply(self.graph.forget(data_id))
                self._notify()
                self._sweep_files()
            self._dirty.discard(data_id)
        try:
            os.remove(path)
        except FileNotFoundError:
            return False
        return True

    def file_changed(self, path: str) -> None:
        """The program writes a file itself (``compss_open`` for writing): the next task
        that reads it reads it from disk again, not the version a task made."""
        data_id = "file:" + os.path.abspath(path)
        with self.lock:
            if self._known(data_id):
                self._dirty.add(data_id)
                self._sweep_files()

    def _sweep_files(self) -> None:
        """Under the lock: ``_deleted`` and ``_dirty`` keep only files the graph still
        holds (no task's output can come for another), swept each time one of them
        doubles: at most twice the files held, or ``FATE_SWEEP``."""
        if len(self._deleted) + len(self._dirty) > self._files_sweep:
            self._deleted = {d for d in self._deleted if self._known(d)}
            self._dirty = {d for d in self._dirty if self._known(d)}
            self._files_sweep = max(FATE_SWEEP, 2 * (len(self._deleted) + len(self._dirty)))

    def _writes_back(self, version) -> bool:
        """Under the lock: a task's file output goes to the program's path when it is the
        file's newest version and the program has not deleted the file. A file the graph
        no longer holds (deleted, its newest version dropped while an older writer still
        ran) has no newest version: nothing is written."""
        if version.data_id in self._deleted:
            return False
        try:
            return self.graph.data_state(version.data_id).version == version
        except LocalProtocolError:
            return False

    def retire(self) -> None:
        """This runtime takes no more tasks (``finish_call`` dropped it): its thread ends."""
        self._retired = True
        self._post(("tick",))

    def forget(self, data_id: str) -> None:
        """From a finalizer: never takes the lock here."""
        self._post(("forget", data_id))

    # ------------------------------------------------------------------ events

    def _post(self, event: tuple) -> None:
        """Hand an event to the runtime's thread (from any thread, never under a lock
        of ours); see the module docstring."""
        self.inbox.append(event)
        if not self._rung:
            self._rung = True
            self._doorbell.put(None)

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
            if self._retired and idle and not self.inbox:
                return
            if self.client._closed.is_set():
                closed_since = closed_since or time.monotonic()
                if (idle and not self.inbox) or time.monotonic() - closed_since > 30:
                    return

    def _handle(self, events: list[tuple]) -> None:
        """Carry out events, under the lock. An event that raises fails what it was
        about (``_event_failed``): nothing is left waiting."""
        for ev in events:
            if self.broken is not None:
                break  # (nothing will be sent again: see _break)
            try:
                self._event(ev)
            except Exception as exc:  # a bug, or a core refusing what we told it
                self._event_failed(ev, exc)
        if self.broken is None and self.graph.next_deadline() is not None:
            try:
                acts = self.graph.tick(time.monotonic())
            except Exception as exc:
                self._break(exc, "ticking the graph")
            else:
                self._apply(acts)
        self._notify()

    def _event_failed(self, ev: tuple, exc: Exception) -> None:
        """Under the lock: handling ``ev`` raised outside ``_apply`` (which breaks the
        graph itself when an action fails). For a task's result, before the graph was
        told: that attempt fails with the error (its policy decides what follows, its
        waiters get the error). Anything else: the graph is broken (``_break``)."""
        log.error("mesh runtime: handling %r failed", ev[:2], exc_info=exc)
        kind = ev[0]
        if kind not in ("result", "failed"):
            self._break(exc, f"handling a {kind!r} event")
            return
        _, task_id, attempt, _ = ev
        state = self.graph.task_state(task_id)
        if state is None or state.terminal:  # the graph knew of it: what followed is unknown
            self._break(exc, f"handling the result of task {task_id}")
            return
        self._running.pop(task_id, None)
        self._call_id.pop(task_id, None)
        self._sent.pop(task_id, None)
        error = TaskFailed(f"task {task_id}: its result could not be handled: "
                           f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        self._last_exc[task_id] = error
        try:
            acts = self.graph.done(task_id, attempt, Outcome.failed(str(error)), time.monotonic())
        except Exception as again:
            self._break(again, f"failing task {task_id}")
            return
        self._apply(acts)

    def _break(self, exc: BaseException, where: str) -> None:
        """Under the lock: an internal error left the graph in a state that cannot be
        trusted (some of its actions were not carried out). Fail everything at once,
        with one clear error: every waiter, ``barrier`` and task groups wake with it,
        later calls raise it, and the calls in flight are cancelled at the agents (their
        results would reach nobody)."""
        if self.broken is not None:
            return
        log.error("mesh runtime: the task graph is broken while %s", where, exc_info=exc)
        err = GraphBroken(f"the task graph cannot go on: an internal error while {where}: "
                          f"{type(exc).__name__}: {exc}")
        err.__cause__ = exc
        self.broken = err
        self.failure = ("(runtime)", str(err))
        self.failure_exc = err
        waiters, self._waiters = self._waiters, {}
        for fut, _ in waiters.values():
            if not fut.done():
                fut.set_exception(err)
        self.recovery.abandon(err)  # wait_on fetches waiting for a rerun
        calls, self._call_id = self._call_id, {}
        self._running.clear()
        self._sent.clear()
        for call_id in calls.values():
            try:
                self.client.cancel(call_id)
            except Exception:  # (a closed client: nothing runs for us any more)
                pass
        self.cond.notify_all()

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
            self.calls.last_writer.pop(data_id, None)
            task_id = data_id.rpartition("#r")[0]
            if task_id and self.graph.task_state(task_id) is None:
                self._drop_fate(task_id)
            return
        if kind.startswith("rerun"):
            self.recovery.rerun_finished(ev[1], kind == "rerunresult", ev[3])
            return
        _, task_id, attempt, payload = ev
        ready = self._running.get(task_id)
        if ready is None or ready.attempt != attempt:
            self.stale_results += 1  # a killed or cancelled attempt
            return
        del self._running[task_id]
        self._call_id.pop(task_id, None)
        now = time.monotonic()
        exc = payload if kind == "failed" else None
        if type(exc) is ObjectLost:  # sent again once its input is made again (maybe now:
            self._running[task_id] = ready  # then resubmit finds it running)
            if self.recovery.recover(exc.oid, ("resubmit", task_id)) is not None:
                return
            del self._running[task_id]
        sent = self._sent.pop(task_id, None)
        if exc is None:
            try:
                outputs = self._store(task_id, ready, payload)
                if sent is not None:
                    self.recovery.record(task_id, ready, self.calls.by_task[task_id], sent, outputs)
            except Exception as e:  # a malformed answer, or writing a file back failed
                exc = e
        if exc is None:
            self._apply(self.graph.done(task_id, attempt, Outcome.OK, now))
        else:
            self._failed(task_id, ready, exc, now)

    def _failed(self, task_id: str, ready: Ready, exc: BaseException, now: float) -> None:
        """Under the lock: an attempt failed with ``exc``. A ``COMPSsException`` is not
        retried: inside a task group the group's other tasks are cancelled and the
        exception waits for the program at the group; outside one the task's own policy
        applies (RETRY acting as FAIL). On the task's last attempt, what it leaves is kept
        first (``_keep_failed``), so the tasks its failure lets run read it."""
        self._last_exc[task_id] = exc
        agent = getattr(exc, "mesh_agent", None)
        if agent:
            self._failed_on.setdefault(task_id, []).append(agent)
        spec, policy, group = ready.spec, None, None
        if _is_compss_exception(exc):
            groups = self._groups.get(task_id)
            group = groups[-1] if groups else None
            policy = (OnFailure.CANCEL_SUCCESSORS if group is not None
                      else OnFailure.FAIL if spec.on_failure is OnFailure.RETRY else spec.on_failure)
        if policy is not None or spec.on_failure is not OnFailure.RETRY or ready.attempt >= spec.max_attempts:
            self._keep_failed(task_id, ready, exc)
        self._apply(self.graph.done(task_id, ready.attempt,
                                    Outcome.failed(f"{type(exc).__name__}: {exc}", policy), now))
        if group is not None:
            if group.exception is None:
                group.exception = exc
            others = sorted(group.tasks - {task_id})
            if others:
                self._apply(self.graph.cancel(
                    others, f"task {task_id} of task group {group.name!r} raised "
                            f"COMPSsException: {exc}", now))

    def _keep_failed(self, task_id: str, ready: Ready, exc: BaseException) -> None:
        """Under the lock, before the graph hears of a task's final failure: what its
        outputs are then. A file holds what the task left in it (``_execute`` sends it on
        the exception), written to the program's path while its version is the newest,
        as COMPSs keeps a failed task's files; an ``on_failure`` default (a value, or for a
        file the path of a file to copy) replaces that. These are what the tasks that
        still run read (IGNORE) and what ``wait_on`` gives instead of raising."""
        call = self.calls.by_task.get(task_id)
        if call is None:
            return
        defaults = call.failure_values or {}
        files = list(getattr(exc, "__mesh_files__", None) or ())
        kept: dict[DataVersion, Any] = {}
        for access, info in zip(ready.params, call.slots, strict=True):
            data = files.pop(0) if info.kind == "file" and files else None
            if access.write is None:
                continue
            default = defaults.get(info.name, PASS) if info.name else PASS
            if info.kind == "file":
                if default is not PASS:
                    with open(os.fspath(default), "rb") as fh:
                        data = fh.read()
                if data is None:
                    continue
                kept[access.write] = data
                if self._writes_back(access.write):
                    _write_file(info.value, data)
            elif default is not PASS:
                kept[access.write] = default
        default = defaults.get("returns", PASS)
        if default is not PASS:
            many = len(ready.returns) > 1 and isinstance(default, (tuple, list)) \
                and len(default) == len(ready.returns)
            for i, version in enumerate(ready.returns):
                kept[version] = default[i] if many else default
        if kept:
            self._kept.update(kept)
            self._kept_of.setdefault(task_id, []).extend(kept)

    def _kept_value(self, version: DataVersion) -> Any:
        """What was kept of a version a failed task did not make (``PASS``: nothing)."""
        return self._kept.get(version, PASS)

    def _submit(self, ready: Ready) -> None:
        """Under the lock: send an attempt of a ``Ready`` task (``client._submit_to``:
        non-blocking, it only queues a frame), away from the agents its earlier attempts
        failed on (``Call.avoid``) and naming where its ``Ref`` inputs are
        (``Call.inputs``). A file input that could not be read, or a call that cannot be
        sent (client closed, arguments that do not pickle), fails the attempt through
        the inbox (``_post``)."""
        call = self.calls.by_task[ready.task_id]
        task_id, attempt = ready.task_id, ready.attempt
        self._running[task_id] = ready
        try:
            args, kwargs, outs, files, refs = call.arguments(ready, self._values, self._kept_value)
        except OSError as exc:  # a file input that could not be read when it was called
            self._post(("failed", task_id, attempt, exc))
            return
        flags = None  # (the time-out is enforced where it runs, from when it starts)
        if ready.spec.time_out is not None or call.inline:
            flags = {"time_out": ready.spec.time_out, "inline": call.inline}
        self._sent[task_id] = (call.fn, args, kwargs, outs, files, call.returns, refs, flags)
        try:
            self._call_id[task_id] = self.client._submit_to(
                functools.partial(self._result, task_id, attempt), self._failed_on.get(task_id, ()),
                _execute, call.fn, args, kwargs, outs, files, call.returns, refs is not None, flags,
                inputs=holdings(refs), needs=call.needs)
        except BaseException as exc:  # client closed, or the arguments do not pickle
            self._post(("failed", task_id, attempt, exc))
            return

    def _resubmit(self, task_id: str) -> None:
        """Under the lock: a reader's lost input was made again: send it again."""
        ready = self._running.get(task_id)
        if ready is not None:
            self._submit(ready)

    def _fail_reader(self, task_id: str, exc: BaseException) -> None:
        """Under the lock: a reader's lost input cannot be made again: it fails."""
        ready = self._running.pop(task_id, None)
        if ready is None:
            return
        self._call_id.pop(task_id, None)
        self._sent.pop(task_id, None)
        self._last_exc[task_id] = exc
        self._apply(self.graph.done(task_id, ready.attempt, Outcome.failed(
            f"{type(exc).__name__}: {exc}"), time.monotonic()))

    def _store(self, task_id: str, ready: Ready, result: tuple) -> list:
        """Keep a task's outputs as the values of their versions (files are written
        back); returns the object outputs [(version, value)] (values may be ``Ref``)."""
        value, outs, files, agent = result
        self.trace.ran(task_id, agent)
        call = self.calls.by_task[task_id]
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
            if self._writes_back(access.write):
                _write_file(info.value, data)
        return outputs

    def _apply(self, acts: list) -> None:
        """Carry out the graph's actions in order (under the lock). A ``Ready`` that
        cannot be sent fails that attempt; any other action that raises breaks the graph
        (``_break``): the actions after it are lost, so its state is unknown."""
        if self.broken is not None:
            return
        act = None
        try:
            for act in acts:
                self._act(act)
        except Exception as exc:
            self._break(exc, f"carrying out {type(act).__name__}")
        if self._to_free:
            to_free, self._to_free = self._to_free, {}
            for holder, oids in to_free.items():
                self.client.free(holder, oids)

    def _act(self, act: Any) -> None:
        """One action of the graph (see ``_apply``)."""
        if isinstance(act, Ready):
            try:
                self._submit(act)
            except Exception as exc:  # the attempt fails with it; the graph is fine
                log.error("mesh runtime: task %s could not be sent", act.task_id, exc_info=exc)
                call_id = self._call_id.pop(act.task_id, None)
                if call_id is not None:  # (it went: nobody will take its result)
                    self.client.cancel(call_id)
                self._running[act.task_id] = act
                self._post(("failed", act.task_id, act.attempt, exc))
        elif isinstance(act, Resolved):
            entry = self._waiters.pop(act.version, None)
            if entry is None:
                return
            fut, writer = entry
            if act.ok:
                fut.set_result(self._values.get(act.version))
            elif act.version in self._kept:  # a failed task's file, or an on_failure default
                fut.set_result(self._kept[act.version])
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
                self._values[act.version] = self.calls.object_of[data_id]
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
            if act.state is TaskState.FAILED:
                exc = self._last_exc.pop(act.task_id, None)
                if exc is None:
                    cls = TaskTimedOut if act.error.startswith("TimedOut") else TaskFailed
                    exc = cls(f"task {act.task_id} failed: {act.error}")
                self._set_fate(act.task_id, exc)
                self._failed_exc = exc
            self._terminal(act.task_id, act.state is TaskState.FAILED)
        elif isinstance(act, Cancelled):
            self._running.pop(act.task_id, None)
            self._sent.pop(act.task_id, None)
            self._set_fate(act.task_id, TaskCancelled(f"task {act.task_id} cancelled: {act.reason}"))
            self._terminal(act.task_id, False)
        elif isinstance(act, GraphFailed):
            self.failure = (act.task_id, act.error)
            self.failure_exc = self._failed_exc

    def _notify(self) -> None:
        """Under the lock: wake ``barrier`` and ``wait_group`` when what they wait for may
        have come (no task active, or a group's last task ended), not at every event: a
        wake of a waiting thread per result costs a thread switch per task."""
        if self.graph.active_count == 0 or self._group_ended:
            self._group_ended = False
            self.cond.notify_all()

    def _set_fate(self, task_id: str, exc: BaseException) -> None:
        """What ``wait_on`` on the outputs of a failed or cancelled task raises. Kept
        while the graph holds the task (an output can still be waited on); the fates
        of tasks it let go are swept once the table doubled since the last sweep (so at
        most twice those still needed, or ``FATE_SWEEP``; O(1) per task)."""
        self._fate[task_id] = exc
        if len(self._fate) > self._fate_sweep:
            task_state = self.graph.task_state
            for gone in [t for t in self._fate if task_state(t) is None]:
                self._drop_fate(gone)
            self._fate_sweep = max(FATE_SWEEP, 2 * len(self._fate))

    def _drop_fate(self, task_id: str) -> None:
        """The graph let a failed or cancelled task go: its fate and what was kept of its
        outputs go too."""
        self._fate.pop(task_id, None)
        for version in self._kept_of.pop(task_id, ()):
            self._kept.pop(version, None)

    def _terminal(self, task_id: str, failed: bool) -> None:
        """A task is over (done, failed or cancelled): what was kept for its attempts goes."""
        self.calls.end(task_id)
        self._failed_on.pop(task_id, None)
        self._last_exc.pop(task_id, None)
        fate = self._fate.get(task_id) if failed else None
        signalled = _is_compss_exception(fate)  # (its group has it: no failure of any group)
        for g in self._groups.pop(task_id, ()):
            g.pending -= 1
            g.tasks.discard(task_id)
            if g.pending == 0:
                self._group_ended = True
            if failed and not signalled:
                g.failed.append((task_id, fate))
        if self.graph.task_state(task_id) is None:  # no output left: nobody can wait on it
            self._drop_fate(task_id)


def _is_compss_exception(exc: Any) -> bool:
    """A task's ``COMPSsException`` (also one that could not be rebuilt here)."""
    return isinstance(exc, COMPSsException) or getattr(exc, "type_name", None) == "COMPSsException"


def _write_file(path: str, data: bytes) -> None:
    """A task's output file to the program's path, whole or not at all."""
    tmp = f"{path}.mesh-tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


_current: Runtime | None = None
_current_lock = threading.Lock()


def current(create: bool = True) -> Runtime | None:
    """The runtime of the process's default client, or None when no mesh is connected
    (task calls then run sequentially)."""
    global _current
    from mesh.client.client import default_client

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
            if slot.channel is not None:  # in a worker: a call ends when its tasks have
                slot.after_call = finish_call
        return _current


def finish_call() -> TaskFailed | None:
    """In a worker, once a call's function has returned or raised (``slot.call_done``):
    the tasks it called and did not wait for ("fire and forget") live in this process's
    graph, and the worker may be stopped or given other work once its call is over (a
    stand-in retired, a slot given back): their results would then reach nobody, and
    tasks still waiting for an input would never be sent. So the call ends when they
    have: a barrier, lending the slot meanwhile, as PyCOMPSs' main program ends with
    one. A graph that failed is dropped (the worker's next call, of any program, starts
    a new one) and reported as ``TaskFailed``, which fails the call."""
    rt = _current
    if rt is None or (rt.graph.active_count == 0 and rt.failure is None):
        return None  # (the common case, without the lock)
    try:
        rt.barrier()
    except TaskFailed as exc:
        _drop(rt)
        return exc
    return None


def drop_failed() -> None:
    """The program run by this worker's call reported its failed graph itself (``mesh
    run --pycompss``: its exit code and traceback): the graph is dropped now, so the call
    ends with the program's own outcome and the worker's next call starts anew."""
    rt = _current
    if rt is not None and (rt.failure is not None or rt.broken is not None):
        _drop(rt)


def _drop(rt: Runtime) -> None:
    global _current
    with _current_lock:
        if _current is rt:
            _current = None
    rt.retire()


def _worker_client():
    """In a worker process: connect to our own agent (address and key from the
    environment the agent gave us), once; None if it does not answer."""
    from mesh import keys
    from mesh.client.client import connect
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
