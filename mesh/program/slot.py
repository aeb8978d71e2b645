"""Slot lending: a task blocked waiting for other tasks gives its slot back.

In a worker process, ``mesh.agent.worker`` sets ``channel`` to its socket to the agent. When
the program-side runtime (``mesh.program.runtime``) is about to block in ``wait_on``,
``barrier`` or a ``TaskGroup`` inside a task, it wraps the wait in ``lent()``: the
agent is told the slot is free while the task waits (so the tasks it waits for can
run even on a one-slot agent: recursive graphs cannot deadlock the mesh), and taken
again when it resumes. Outside a worker this does nothing.

When a call's function has returned or raised, the worker asks ``call_done`` before it
sends the result: a call that made tasks here ends when they have
(``mesh.program.runtime.finish_call``).

``task_depth`` and ``inline_nested`` say whether a task's function runs now in this
process and how the tasks it calls run (``mesh.program.taskexec._execute`` sets them);
``abort`` is how a task past its ``time_out`` that never gives the interpreter back is
abandoned (``mesh.program.timeout``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict

import cbor2

channel = None  # mesh.wire.framing.FrameSocket to the agent, in a worker process
inbox = None  # mesh.agent.worker.Inbox: what the agent sent (its thread reads the channel)
call_id: str | None = None  # the call the worker runs now
inline_max = 0  # task outputs pickling to more bytes are kept at the agent (mesh.sched.objects)
put_room = 0  # bytes the call running now may still put in the agent's store
# the bytes of objects this worker put or fetched lately, so that the next task here
# that reads one (the next stage of a pipeline, as a rule) skips the round trip to the
# agent; bytes, not objects: a task that changes its input in place changes no copy
_recent: OrderedDict = OrderedDict()
_recent_bytes = 0
RECENT_MAX = int(os.environ.get("MESH_WORKER_CACHE_MB", "32")) << 20
_lock = threading.Lock()
_depth = 0
# set by mesh.program.runtime once a call here made tasks: what ends a call (``call_done``)
after_call = None
# set by mesh.agent.worker: answer the running call with this exception and end the
# worker (a task past its time_out that does not give the interpreter back)
abort = None
# while a task's function runs here (``mesh.program.taskexec._execute``): how many are
# running (nested inline calls included), and whether the tasks it calls run inline
# (PyCOMPSs' classic mode: mesh.compat.pycompss) rather than as tasks of the mesh
task_depth = 0
inline_nested = False


def call_done() -> BaseException | None:
    """The running call's function returned or raised (the worker asks before it sends
    the result): wait for the tasks it called and did not wait for
    (``mesh.program.runtime.finish_call``). An exception: the call fails with it."""
    hook = after_call
    return None if hook is None else hook()


@contextlib.contextmanager
def lent():
    """Lend this worker's slot for the duration of the block (re-entrant)."""
    global _depth
    if channel is None or call_id is None:
        yield
        return
    with _lock:
        _depth += 1
        first = _depth == 1
        if first:
            if inbox is not None:  # the calls waiting behind this one go back first
                inbox.hold(True)
            channel.send(cbor2.dumps(["lend", call_id, True]))
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if inbox is not None:
                    inbox.hold(False)
                channel.send(cbor2.dumps(["lend", call_id, False]))


def progress(total: int, done: int, failed: int) -> None:
    """Tell the agent how the task graph run by this worker's call is going (``mesh
    run`` shows it). Does nothing outside a worker."""
    chan, cid = channel, call_id
    if chan is None or cid is None:
        return
    with _lock:
        chan.send(cbor2.dumps(["progress", cid, total, done, failed]))


def put(data: bytes) -> str | None:
    """Keep a task output's pickled bytes in our agent's object store; its id, or None
    when it must travel inline (not in a worker, or the store has no room for it)."""
    global put_room
    chan, cid = channel, call_id
    if chan is None or cid is None or len(data) > put_room:
        return None
    from mesh.sched.objects import new_oid

    oid = new_oid()
    with _lock:
        chan.send(cbor2.dumps(["put", cid, oid, data]))
    put_room -= len(data)
    _remember(oid, data)
    return oid


def _remember(oid: str, data: bytes) -> None:
    global _recent_bytes
    if len(data) > RECENT_MAX // 2:
        return
    _recent[oid] = data
    _recent_bytes += len(data)
    while _recent_bytes > RECENT_MAX:
        _, old = _recent.popitem(last=False)
        _recent_bytes -= len(old)


def get(oid: str, holder: str) -> bytes:
    """The pickled bytes of the object ``oid`` held by the agent ``holder``, through our
    agent (which may have it, or fetches it from the holder). Raises ``ObjectLost``.
    The answer comes through the worker's inbox (its thread reads the channel)."""
    from mesh.sched.objects import ObjectLost

    chan, cid = channel, call_id
    if chan is None or cid is None:
        raise ObjectLost(oid, "ObjectLost: not in a worker: no agent to fetch it from")
    data = _recent.get(oid)
    if data is not None:
        _recent.move_to_end(oid)
        with _lock:  # (counted by the agent: objects.worker_hits)
            chan.send(cbor2.dumps(["hit", cid, oid]))
        return data
    with _lock:
        chan.send(cbor2.dumps(["get", cid, oid, holder]))
    frame = inbox.next_obj()  # (a worker sets ``inbox`` with ``channel``)
    if not isinstance(frame, list) or len(frame) != 4 or frame[0] != "obj" or frame[1] != oid:
        raise RuntimeError(f"unexpected answer from the agent to a fetch: {frame!r:.200}")
    _, _, data, error = frame
    if data is None:
        raise ObjectLost(oid, error or "ObjectLost")
    _remember(oid, data)
    return data
