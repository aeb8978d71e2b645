"""``pycompss.api.container``: @container (a task run in a container image) is refused with ``Unsupported`` when a task
declares it (containers are not built yet)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

container = refused_decorator('@container (a task run in a container image)', 'containers are not built yet')
Container = container
