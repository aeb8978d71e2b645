"""``pycompss.api.exceptions``: ``COMPSsException``, the mesh's own
(``mesh.program.taskexec``): raised by a task in a ``TaskGroup``, it cancels the group's
other tasks and reaches the program where it leaves the group or at
``compss_barrier_group``; never retried."""

from __future__ import annotations

from mesh.program.taskexec import COMPSsException

__all__ = ["COMPSsException"]
