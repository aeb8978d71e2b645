"""``pycompss.api.software``: @software (a task described by a JSON file) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions only)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

software = refused_decorator('@software (a task described by a JSON file)', 'the mesh runs Python functions only')
Software = software
