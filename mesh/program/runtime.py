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
the client's thread or on the runtime's own thread (``mesh-runtime``): see
``mesh.program.events``.

Values are sent when a task is ready, not copied when it is called: an object passed
as a plain argument (not INOUT) must not be changed by the program before its task
ran. A timed-out attempt (``Kill``) is cancelled (``Client.cancel``): the agents stop
it wherever it runs, and a result that still arrives is ignored. A failed attempt's
agent is remembered, and a RETRY asks the mesh to run it elsewhere (``Call.avoid``).

A big task output stays at the agent that made it (``mesh.sched.objects``): the version's
value is then a ``Ref``, sent as such to the tasks that read it (the call names where
its inputs are, ``Call.inputs``, for placement), fetched by ``wait_on``, and freed at its
holder when the version is released. When a holder lost one, the task that made it runs
again: the runtime's ``recovery`` part (``mesh.program.recovery``, which owns the outputs'
lineage, ``mesh.program.lineage``).

Inside a worker (nested tasks) the runtime is the worker's, shared by the calls it
runs one after another: a call ends when the tasks it called have (``finish_call``),
and a graph that failed is dropped then, so the next call starts anew.

``Runtime`` holds the state and the program thread's side (``wait``, ``barrier``, task
groups); its parts own the rest: ``calls`` (``mesh.program.calls``: a call becomes a
``TaskSpec``, a ``Ready`` task's arguments) and ``recovery`` (``mesh.program.recovery``);
the ``GraphEvents`` mixin (``mesh.program.events``) holds results, the runtime's thread,
sending and the graph's actions.
"""

from __future__ import annotations

import collections
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
from mesh.program.calls import Calls, _Group, bind, needs_of
from mesh.program.events import GraphEvents
from mesh.program.recovery import Recovery
from mesh.program.taskexec import GraphBroken, TaskCancelled, TaskFailed, TaskFuture, TaskTimedOut
from mesh.program.tasktrace import TaskTrace
from mesh.sched.graph import DataVersion, OnFailure, Ready, TaskGraph, return_id
from mesh.sched.objects import Ref

__all__ = ["GraphBroken", "Runtime", "TaskCancelled", "TaskFailed", "TaskFuture", "TaskTimedOut", "current",
           "needs_of"]

log = logging.getLogger(__name__)


class Runtime(GraphEvents):
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
        self._fate_sweep = 64  # its size at which it is swept next (events._set_fate)
        self._groups: dict[str, list[_Group]] = {}
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
        self.broken: GraphBroken | None = None  # an internal error failed it all (events._break)
        self._thread = threading.Thread(target=self._loop, name="mesh-runtime", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ program thread

    def call(self, fn, signature: inspect.Signature, directions: dict, args: tuple, kwargs: dict,
             returns: int, name: str, priority: bool, on_failure: OnFailure,
             time_out: float | None, groups: list) -> list[str]:
        """Submit one task call (``mesh.program.calls``); returns its task id and the data
        ids of its returns."""
        arguments, positional = bind(signature, args, kwargs)
        with self.lock:
            if self.broken is not None:
                raise self.broken
            if slot.call_id != self._progress_base[0]:  # a worker's next call: a new run
                c = self.graph.counters
                self._progress_base = (slot.call_id,
                                       (c["submitted"], c["done"], c["failed"] + c["cancelled"]))
            spec = self.calls.make(fn, signature, directions, arguments, positional, returns, name,
                                   priority, on_failure, time_out, groups)
            task_id = spec.task_id
            try:
                acts = self.graph.submit(spec, time.monotonic())
            except BaseException:
                self.calls.end(task_id)
                raise
            self.trace.task(task_id, name, self.calls.wrote(spec))
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

    def wait_group(self, group: _Group) -> None:
        with slot.lent(), self.cond:
            self.cond.wait_for(lambda: group.pending == 0 or self.broken is not None)
        if self.broken is not None:
            raise self.broken

    def retire(self) -> None:
        """This runtime takes no more tasks (``finish_call`` dropped it): its thread ends."""
        self._retired = True
        self._post(("tick",))

    def forget(self, data_id: str) -> None:
        """From a finalizer: never takes the lock here."""
        self._post(("forget", data_id))


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
