"""``pycompss.api``: the PyCOMPSs API (decorators and synchronisation) on the mesh."""
