"""What the program tells the task graph: task specs, parameters and outcomes.

These are the inputs of ``mesh.sched.graph.TaskGraph``. They carry ids only, never
values: the shell keeps the function, the argument values and the results, keyed by
task id and data version, and the graph decides order.

A ``Param`` is either a literal (``data_id`` None: a value the shell passes as is,
copied at call time, so it never creates a dependency) or a reference to a datum: an
object id or a file path, chosen by the shell. A datum's kind is fixed by its first
use: the ``FILE_*`` directions name files, the others objects; using one id as both
is a ``LocalProtocolError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from mesh.errors import LocalProtocolError


class Direction(str, Enum):
    """How a task uses a parameter (COMPSs directions)."""

    IN = "IN"  # reads the latest version (the default)
    OUT = "OUT"  # writes a new version without reading
    INOUT = "INOUT"  # reads the latest version and writes a new one
    FILE_IN = "FILE_IN"
    FILE_OUT = "FILE_OUT"
    FILE_INOUT = "FILE_INOUT"

    @property
    def reads(self) -> bool:
        return self in _READS

    @property
    def writes(self) -> bool:
        return self in _WRITES

    @property
    def is_file(self) -> bool:
        return self in _FILES


_READS = frozenset({Direction.IN, Direction.INOUT, Direction.FILE_IN, Direction.FILE_INOUT})
_WRITES = frozenset({Direction.OUT, Direction.INOUT, Direction.FILE_OUT, Direction.FILE_INOUT})
_FILES = frozenset({Direction.FILE_IN, Direction.FILE_OUT, Direction.FILE_INOUT})

IN, OUT, INOUT = Direction.IN, Direction.OUT, Direction.INOUT
FILE_IN, FILE_OUT, FILE_INOUT = Direction.FILE_IN, Direction.FILE_OUT, Direction.FILE_INOUT


class OnFailure(str, Enum):
    """What the graph does when a task fails (COMPSs ``on_failure``)."""

    RETRY = "RETRY"  # run again, up to max_attempts, then as FAIL
    CANCEL_SUCCESSORS = "CANCEL_SUCCESSORS"  # cancel the tasks that depend on it
    FAIL = "FAIL"  # the whole graph fails
    IGNORE = "IGNORE"  # outputs become failed values; successors still run


@dataclass(frozen=True)
class Param:
    """One parameter: a literal (``data_id`` None) or a reference to a datum."""

    direction: Direction = Direction.IN
    data_id: str | None = None

    @classmethod
    def literal(cls) -> Param:
        return cls(Direction.IN, None)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "direction", Direction(self.direction))
        except ValueError:
            raise LocalProtocolError(f"unknown direction {self.direction!r}") from None
        if self.data_id is None:
            if self.direction is not Direction.IN:
                raise LocalProtocolError(
                    f"a literal parameter can only be IN, not {self.direction.value}")
        elif not isinstance(self.data_id, str) or not self.data_id:
            raise LocalProtocolError(f"data_id must be a non-empty string, not {self.data_id!r}")


def return_id(task_id: str, index: int) -> str:
    """The data id of a task's ``index``-th return value (its future)."""
    return f"{task_id}#r{index}"


@dataclass(frozen=True)
class TaskSpec:
    """One task call. ``params`` may be given as a list; it is kept as a tuple.

    Raises ``LocalProtocolError`` for an unknown policy, a negative ``returns``, a
    ``max_attempts`` below 1, a ``time_out`` that is not positive, or a datum written
    by two parameters of the same task."""

    task_id: str
    name: str = ""
    params: Sequence[Param] = field(default_factory=tuple)
    returns: int = 0
    priority: bool = False
    on_failure: OnFailure = OnFailure.RETRY
    time_out: float | None = None
    max_attempts: int = 2  # COMPSs retries a failed task once

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise LocalProtocolError(f"task_id must be a non-empty string, not {self.task_id!r}")
        object.__setattr__(self, "params", tuple(self.params))
        try:
            object.__setattr__(self, "on_failure", OnFailure(self.on_failure))
        except ValueError:
            raise LocalProtocolError(f"unknown on_failure policy {self.on_failure!r}") from None
        if not all(isinstance(p, Param) for p in self.params):
            raise LocalProtocolError("params must be Param instances")
        if not isinstance(self.returns, int) or self.returns < 0:
            raise LocalProtocolError(f"returns must be an int >= 0, not {self.returns!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise LocalProtocolError(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        if self.time_out is not None and not self.time_out > 0:
            raise LocalProtocolError(f"time_out must be positive or None, not {self.time_out!r}")
        written = [p.data_id for p in self.params if p.direction.writes]
        if len(written) != len(set(written)):
            raise LocalProtocolError(f"task {self.task_id}: a datum is written by two parameters")


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ``Outcome.OK`` or ``Outcome.failed("error text")``.
    ``policy``, for a failure: the policy to apply to it instead of the task's own (a
    failure the program signals on purpose, e.g. PyCOMPSs' ``COMPSsException``, is not
    retried)."""

    ok: bool
    error: str = ""
    policy: OnFailure | None = None

    @classmethod
    def failed(cls, error: str, policy: OnFailure | None = None) -> Outcome:
        return cls(False, error, None if policy is None else OnFailure(policy))


Outcome.OK = Outcome(True)  # type: ignore[attr-defined]
