"""Slot lending: a task blocked waiting for other tasks gives its slot back.

In a worker process, ``mesh.worker`` sets ``channel`` to its socket to the agent. When
the program-side runtime (``mesh.runtime``) is about to block in ``wait_on``,
``barrier`` or a ``TaskGroup`` inside a task, it wraps the wait in ``lent()``: the
agent is told the slot is free while the task waits (so the tasks it waits for can
run even on a one-slot agent: recursive graphs cannot deadlock the mesh), and taken
again when it resumes. Outside a worker this does nothing.
"""

from __future__ import annotations

import contextlib
import threading

import cbor2

channel = None  # mesh.framing.FrameSocket to the agent, in a worker process
call_id: str | None = None  # the call the worker runs now
_lock = threading.Lock()
_depth = 0


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
            channel.send(cbor2.dumps(["lend", call_id, True]))
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                channel.send(cbor2.dumps(["lend", call_id, False]))


def progress(total: int, done: int, failed: int) -> None:
    """Tell the agent how the task graph run by this worker's call is going (``mesh
    run`` shows it). Does nothing outside a worker."""
    chan, cid = channel, call_id
    if chan is None or cid is None:
        return
    with _lock:
        chan.send(cbor2.dumps(["progress", cid, total, done, failed]))
