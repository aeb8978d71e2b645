"""``pycompss.api.data_transformation``: @data_transformation is refused with ``Unsupported`` when a task
declares it (transform the data in a task)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

data_transformation = refused_decorator('@data_transformation', 'transform the data in a task')
dt = data_transformation
DataTransformation = data_transformation
