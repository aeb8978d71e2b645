"""Shared drivers for the task-graph tests (``tests/test_graph*.py``).

Builders for task specs and parameters, filters for returned actions, and ``Runner``,
which plays the shell: it submits, keeps the ready tasks and reports them done.
"""

from __future__ import annotations

from mesh.sched.graph import (
    IN,
    Cancelled,
    Finished,
    Kill,
    Outcome,
    Param,
    Ready,
    TaskGraph,
    TaskSpec,
    return_id,
)

OK = Outcome.OK


def spec(task_id: str, *params: Param, returns: int = 0, **kw) -> TaskSpec:
    return TaskSpec(task_id, f"fn_{task_id}", list(params), returns, **kw)


def ref(data_id: str, direction=IN) -> Param:
    return Param(direction, data_id)


def ret(task_id: str, i: int = 0) -> Param:
    return Param(IN, return_id(task_id, i))


def of(acts, cls) -> list:
    return [a for a in acts if isinstance(a, cls)]


def ready_ids(acts) -> list[str]:
    return [a.task_id for a in acts if isinstance(a, Ready)]


def fail(text: str = "boom") -> Outcome:
    return Outcome.failed(text)


class Runner:
    """Plays the shell: submits, keeps the ready tasks, reports them done."""

    def __init__(self) -> None:
        self.g = TaskGraph()
        self.ready: dict[str, Ready] = {}
        self.actions: list = []

    def take(self, acts) -> list:
        self.actions += acts
        for a in acts:
            if isinstance(a, Ready):
                self.ready[a.task_id] = a
            elif isinstance(a, (Kill, Cancelled, Finished)):
                self.ready.pop(a.task_id, None)
        return acts

    def submit(self, s: TaskSpec, now: float = 0.0) -> list:
        return self.take(self.g.submit(s, now))

    def done(self, task_id: str, outcome: Outcome = OK, now: float = 0.0) -> list:
        r = self.ready[task_id]
        return self.take(self.g.done(task_id, r.attempt, outcome, now))

    def run_all(self) -> list[str]:
        """Report every ready task done, FIFO, until none is left; the order run."""
        order = []
        while self.ready:
            task_id = next(iter(self.ready))
            order.append(task_id)
            self.done(task_id)
        return order
