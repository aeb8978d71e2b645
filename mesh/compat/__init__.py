"""Compatibility layers: programs written for another programming model run on the mesh
unchanged. ``pycompss``: PyCOMPSs programs (``mesh run --pycompss app.py``), made
importable as ``pycompss.api.*`` by ``importer``.

Why here and not under ``mesh.program``: a layer is a face of the programming model
(as ``mesh.faces`` are faces of the agent), built on ``mesh.program.api`` only, and
nothing in the runtime depends on it; its package tree mirrors the one it stands in
for (``mesh.compat.pycompss.api.task`` is ``pycompss.api.task``), so the import alias is a
plain prefix.

May import: ``mesh.program``, ``mesh.sched``, ``mesh.errors``. Imported by the CLI (``mesh run
--pycompss``) and, ``importer`` only (it imports nothing of the mesh), by workers."""
