"""``pycompss.api.opencl``: @opencl (an OpenCL kernel task) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions only)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

opencl = refused_decorator('@opencl (an OpenCL kernel task)', 'the mesh runs Python functions only')
OpenCL = opencl
