"""The values of ``mesh.api`` tasks: ``TaskFuture``, the task errors, and what runs on
the worker.

``_execute`` is what the program-side runtime (``mesh.runtime``) sends with
``client.submit``: it calls the user's function with the argument values bound on the
program side, puts FILE_* parameters in a temporary directory (their bytes travel with
the call) and sends back the return value, the INOUT/OUT objects as the function left
them and the bytes of the files it wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any


class TaskFailed(Exception):
    """A task failed and no better exception is known (or the graph failed: ``barrier``
    raises this with the failing task's own exception as ``__cause__``)."""


class TaskCancelled(TaskFailed):
    """The task never ran (to its end): a predecessor failed or the graph failed."""


class TaskTimedOut(TaskFailed):
    """The task ran longer than its ``time_out`` (on its last attempt)."""


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


@dataclass
class _FileArg:
    """A FILE_* parameter on its way to the worker: the file's bytes (None for FILE_OUT)."""

    name: str
    data: bytes | None
    writes: bool
    path: str = ""


def _execute(fn, args: tuple, kwargs: dict, outs: list, files: list, returns: int):
    """Runs on the worker: call ``fn`` and send back (value, mutated INOUT/OUT objects,
    bytes of written files, the agent's name). The objects in ``outs`` and ``files`` are the very ones in
    ``args``/``kwargs`` (one pickle keeps identity), so in-place changes are seen."""
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
        value = fn(*args, **kwargs)
        if returns == 0:
            value = None
        elif returns > 1:
            value = tuple(value)
            if len(value) != returns:
                raise ValueError(f"{getattr(fn, '__name__', fn)} returned {len(value)} values, "
                                 f"its @task declares returns={returns}")
        written = []
        for f in files:
            if not f.writes:
                written.append(None)
                continue
            if not os.path.exists(f.path):
                raise FileNotFoundError(f"the task did not write its output file {f.name!r}")
            with open(f.path, "rb") as fh:
                written.append(fh.read())
        return value, outs, written, os.environ.get("MESH_AGENT_NAME", "?")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
