"""``pycompss.api.julia``: @julia (a Julia task) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions only)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

julia = refused_decorator('@julia (a Julia task)', 'the mesh runs Python functions only')
Julia = julia
