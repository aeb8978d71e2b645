"""``pycompss.api.IO``: @IO (an I/O task on its own resources) is refused with ``Unsupported`` when a task
declares it (the mesh has no I/O resources of its own)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

IO = refused_decorator('@IO (an I/O task on its own resources)', 'the mesh has no I/O resources of its own')
io = IO
