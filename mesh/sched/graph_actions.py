"""What the task graph tells the shell: states, data versions and actions.

The shell carries out the actions of one call in the order given. Within one call
the order is: kills and terminal reports (``Kill``, ``Finished``, ``Cancelled``,
``GraphFailed``), ``Snapshot`` and ``Resolved``, then ``Ready`` (priority tasks first,
then in submission order), then ``Release``. So a value is always stored before a
task may read it, and fetched for ``wait_on`` before it may be freed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mesh.sched.taskspec import Direction, TaskSpec


class TaskState(str, Enum):
    PENDING = "pending"  # waiting for inputs
    READY = "ready"  # inputs exist; Ready emitted for the current attempt
    RUNNING = "running"  # the shell reported that the attempt started
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


class DataState(str, Enum):
    PENDING = "pending"  # its writer has not finished
    AVAILABLE = "available"  # produced (by a task, or the program's own value)
    FAILED = "failed"  # its writer failed under IGNORE: readers get an empty value
    CANCELLED = "cancelled"  # never produced: readers are cancelled


@dataclass(frozen=True, order=True)
class DataVersion:
    """One version of a datum. ``version`` numbers come from one counter per graph, so
    a (data_id, version) pair is never reused, and the versions of one datum increase
    in the order they are written. The shell stores each version under its own name
    (a file version under a renamed path): this renaming is what lets writers run
    without waiting for readers of older versions."""

    data_id: str
    version: int

    def __str__(self) -> str:
        return f"{self.data_id}@v{self.version}"


@dataclass(frozen=True)
class Access:
    """How one parameter of a ready task is bound: the version to read (None for a
    literal or an OUT), the version to write (None for an IN), and whether the version
    read is a failed value (the shell passes an empty value, None, as COMPSs does)."""

    direction: Direction
    read: DataVersion | None = None
    write: DataVersion | None = None
    read_failed: bool = False


# ---------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Ready:
    """Run ``attempt`` of a task: ``params`` are bound one to one with
    ``spec.params``; ``returns`` are the versions its return values become."""

    task_id: str
    attempt: int
    spec: TaskSpec
    params: tuple[Access, ...]
    returns: tuple[DataVersion, ...]


@dataclass(frozen=True)
class Kill:
    """Stop this attempt if it runs (timed out, or the graph failed); any result it
    still sends is ignored."""

    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class Finished:
    """A task ran to its end: ``state`` is DONE or FAILED (after its last attempt)."""

    task_id: str
    attempt: int
    state: TaskState
    error: str = ""


@dataclass(frozen=True)
class Cancelled:
    """A task will never run (again): a predecessor failed, or the graph failed."""

    task_id: str
    reason: str


@dataclass(frozen=True)
class GraphFailed:
    """A task failed under FAIL (or RETRY ran out): everything pending was cancelled and
    later submissions are cancelled at once."""

    task_id: str
    error: str


@dataclass(frozen=True)
class Snapshot:
    """Take the program's current value of ``version.data_id`` (an object, or the file
    at that path) as ``version``: tasks will read it under that name."""

    version: DataVersion


@dataclass(frozen=True)
class Resolved:
    """A datum someone waits on (``wait_on``) is resolved: ``ok`` False means wait_on
    must raise with ``error``."""

    version: DataVersion
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Release:
    """No task nor the program needs this version any more: free it everywhere."""

    version: DataVersion


Action = Ready | Kill | Finished | Cancelled | GraphFailed | Snapshot | Resolved | Release


@dataclass(frozen=True)
class DataStatus:
    """Answer of ``TaskGraph.data_state``: the datum's latest version and its state."""

    version: DataVersion
    state: DataState
    error: str = ""


@dataclass(frozen=True)
class Transition:
    """One entry of the graph's bounded log: why a task changed state."""

    now: float
    task_id: str
    attempt: int
    old: TaskState | None
    new: TaskState
    cause: str
