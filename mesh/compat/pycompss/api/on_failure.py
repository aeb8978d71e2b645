"""``pycompss.api.on_failure``: ``@on_failure(management=..., returns=..., name=...)`` (also
``@OnFailure``) above ``@task``: the task's failure policy (``RETRY``, the default,
``CANCEL_SUCCESSORS``, ``FAIL``, ``IGNORE``) and the values its outputs take if it
fails: ``returns=`` for its return values, a parameter's name for that INOUT/OUT
object, or for a FILE_OUT/FILE_INOUT the path of a file whose contents the file then
holds. The tasks that go on (IGNORE) read them, and so does ``compss_wait_on``."""

from __future__ import annotations

from typing import Any

from mesh.program import api as _mesh
from mesh.sched.taskspec import OnFailure as _Policy


def on_failure(management: str = "RETRY", **defaults: Any):
    policy = _Policy(str(management).upper())

    def deco(task):
        if not isinstance(task, _mesh.Task):
            raise TypeError("@on_failure goes above @task")
        names = set(task.signature.parameters) | {"returns"}
        unknown = set(defaults) - names
        if unknown:
            raise TypeError(f"@on_failure on {task.fn.__name__}: no parameter named {sorted(unknown)}")
        task.on_failure = policy
        task.failure_values = dict(defaults) or None
        return task

    return deco


OnFailure = on_failure
