"""``pycompss.api.implement``: ``@implement(source_class="module", method="name")`` (also
``@Implement``) above ``@constraint`` and ``@task``: another implementation of the task
``method`` of module ``source_class`` (``mesh.program.implement``: the call is placed
where one implementation fits, and the agent it lands on runs the one that fits it).
``source_class`` may also be the script's file name (without ``.py``) or ``__main__``
for a task of the program's own script."""

from __future__ import annotations

from mesh.program import api as _mesh


def implement(source_class: str, method: str):
    return _mesh.implement(source_class, method)


Implement = implement
