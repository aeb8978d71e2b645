"""``pycompss.api.ompss``: @ompss (an OmpSs task) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions only)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

ompss = refused_decorator('@ompss (an OmpSs task)', 'the mesh runs Python functions only')
OmpSs = ompss
