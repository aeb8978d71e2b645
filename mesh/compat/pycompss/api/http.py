"""``pycompss.api.http``: @http (a task that is an HTTP request) is refused with ``Unsupported`` when a task
declares it (call the service from a Python task)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

http = refused_decorator('@http (a task that is an HTTP request)', 'call the service from a Python task')
HTTP = http
