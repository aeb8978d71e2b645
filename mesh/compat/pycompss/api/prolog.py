"""``pycompss.api.prolog``: @prolog (a command run before a task) is refused with ``Unsupported`` when a task
declares it (run it at the start of the task)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

prolog = refused_decorator('@prolog (a command run before a task)', 'run it at the start of the task')
Prolog = prolog
