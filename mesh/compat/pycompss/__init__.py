"""PyCOMPSs programs on the mesh, unchanged: this package stands in for ``pycompss``
(``mesh.compat.importer`` makes it importable under that name; ``mesh run --pycompss``
does so for the run). ``pycompss.api.*`` map onto ``mesh.program.api``: the mapping,
what differs and what is refused, are in each module and in the README ("Coming from
PyCOMPSs"). What the layer cannot honour raises ``Unsupported`` naming the feature,
when the program declares it (a decorator, a parameter type) or calls it; nothing is
silently dropped.

Nested tasks follow the mode the program runs in (``_layer.nesting``): PyCOMPSs' classic
runtime runs a task called inside a task inline, in the worker, and returns its value
(the default); with nesting on (``mesh run --pycompss --nesting``, or
``MESH_PYCOMPSS_NESTING=1``, as COMPSs agents do) it is a task of the mesh and returns a
future to synchronise with ``compss_wait_on``.
"""
