"""``pycompss.api.binary``: @binary (a task that runs an executable) is refused with ``Unsupported`` when a task
declares it (binary tasks are not built yet: write the task in Python and call the executable with subprocess)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

binary = refused_decorator('@binary (a task that runs an executable)', 'binary tasks are not built yet: write the task in Python and call the executable with subprocess')
Binary = binary
