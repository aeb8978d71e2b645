"""``pycompss.api.multinode``: @multinode (a task spanning several nodes) is refused with ``Unsupported`` when a task
declares it (a mesh task runs on one agent (@constraint(computing_units=...) takes several of its slots))."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

multinode = refused_decorator('@multinode (a task spanning several nodes)', 'a mesh task runs on one agent (@constraint(computing_units=...) takes several of its slots)')
MultiNode = multinode
Multinode = multinode
