"""``pycompss.api.decaf``: @decaf (a Decaf workflow task) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions only)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

decaf = refused_decorator('@decaf (a Decaf workflow task)', 'the mesh runs Python functions only')
Decaf = decaf
