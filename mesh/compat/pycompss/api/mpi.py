"""``pycompss.api.mpi``: @mpi (an MPI task) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions, not MPI jobs)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

mpi = refused_decorator('@mpi (an MPI task)', 'the mesh runs Python functions, not MPI jobs')
Mpi = mpi
MPI = mpi
