"""``pycompss.api.mpmd_mpi``: @mpmd_mpi (an MPMD MPI task) is refused with ``Unsupported`` when a task
declares it (the mesh runs Python functions, not MPI jobs)."""

from __future__ import annotations

from mesh.compat.pycompss._layer import refused_decorator

mpmd_mpi = refused_decorator('@mpmd_mpi (an MPMD MPI task)', 'the mesh runs Python functions, not MPI jobs')
MPMDMPI = mpmd_mpi
MpmdMPI = mpmd_mpi
