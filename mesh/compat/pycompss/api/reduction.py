"""``pycompss.api.reduction``: @reduction (a task split into a tree of partial reductions) is refused with ``Unsupported`` when a task
declares it (write the tree of tasks in the program (the wordcount example of the README))."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

reduction = refused_decorator('@reduction (a task split into a tree of partial reductions)', 'write the tree of tasks in the program (the wordcount example of the README)')
Reduction = reduction
