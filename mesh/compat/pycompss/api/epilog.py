"""``pycompss.api.epilog``: @epilog (a command run after a task) is refused with ``Unsupported`` when a task
declares it (run it at the end of the task)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

epilog = refused_decorator('@epilog (a command run after a task)', 'run it at the end of the task')
Epilog = epilog
