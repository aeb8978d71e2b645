"""What the PyCOMPSs layer shares: the error for what it cannot honour, and the mode
nested tasks run in."""

from __future__ import annotations

import os


class Unsupported(NotImplementedError):
    """A PyCOMPSs feature the mesh does not offer (named in the message, with why)."""


def refuse(feature: str, why: str = "") -> Unsupported:
    return Unsupported(f"PyCOMPSs' {feature} is not supported by mesh" + (f": {why}" if why else ""))


class Mode:
    """``nesting``: tasks called inside tasks are tasks of the mesh (futures), as with
    COMPSs agents or PyCOMPSs' nesting; off (PyCOMPSs' classic runtime, the default),
    they run inline in the worker and return their values. Set by ``mesh run
    --pycompss [--nesting]`` for the run, or ``MESH_PYCOMPSS_NESTING=1``."""

    def __init__(self) -> None:
        self.nesting = os.environ.get("MESH_PYCOMPSS_NESTING", "") not in ("", "0")


mode = Mode()


def refused_decorator(feature: str, why: str):
    """A PyCOMPSs decorator the mesh does not offer: using it raises ``Unsupported``
    naming it (when the program declares the task, never later)."""
    def decorator(*args, **kwargs):
        raise refuse(feature, why)

    decorator.__doc__ = f"PyCOMPSs' {feature}: refused by mesh ({why})."
    return decorator
