"""``pycompss.api.compss``: @compss (a task that is a COMPSs application) is refused with ``Unsupported`` when a task
declares it (call the application's main from a task)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

compss = refused_decorator('@compss (a task that is a COMPSs application)', "call the application's main from a task")
COMPSs = compss
