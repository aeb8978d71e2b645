"""``pycompss.api.api``: synchronisation, deletion and task groups, on the mesh
(``mesh.program.api``).

* ``compss_wait_on(*objs, mode=...)``: ``wait_on`` (futures and INOUT/OUT objects, also
  inside lists and dicts; ``mode`` "r"/"rw" changes nothing here: the program always
  gets a new object, the runtime keeps its own version);
* ``compss_wait_on_file(*files)`` (True each), ``compss_open(file, mode)``,
  ``compss_file_exists(*files)`` (on disk, or a file a task will write);
* ``compss_barrier(no_more_tasks=False)``, ``compss_barrier_group(name)``,
  ``compss_cancel_group(name)``, ``TaskGroup(name, implicit_barrier=True)`` (a task's
  ``COMPSsException`` cancels its group and is raised where the program leaves it or
  synchronises it);
* ``compss_delete_object(*objs)``, ``compss_delete_file(*files)``;
* ``compss_start``, ``compss_stop``: the mesh is connected by ``mesh run --pycompss``
  (or ``mesh.connect``): start does nothing, stop waits for every task (a barrier);
* ``compss_get_number_of_resources()``: the live agents of the mesh (1 without one);
* refused with ``Unsupported``: ``compss_wait_on_directory`` (no directory parameters),
  ``compss_request_resources``/``compss_free_resources`` (the mesh's agents join and
  leave by themselves), ``compss_set_wall_clock``, ``compss_snapshot``.
"""

from __future__ import annotations

import os
from typing import Any

from mesh.compat.pycompss._layer import refuse
from mesh.program import api as _mesh
from mesh.program import runtime as _rt


def compss_start(log_level: str = "off", tracing: bool = False, interactive: bool = False,
                 disable_external: bool = False) -> None:
    """Nothing to start: the program's mesh connection is made by ``mesh run``."""


def compss_stop(code: int = 0, _hard_stop: bool = False) -> None:
    """Wait for every task the program called (PyCOMPSs stops its runtime after them)."""
    _mesh.barrier()


def compss_file_exists(*file_name: str) -> bool | list[bool]:
    rt = _rt.current(create=False)
    found = [os.path.exists(f) or (rt is not None and rt.known("file:" + os.path.abspath(f)))
             for f in file_name]
    return found[0] if len(found) == 1 else found


def compss_open(file_name: str, mode: str = "r"):
    return _mesh.open_file(file_name, mode)


def compss_delete_file(*file_name: str) -> bool | list[bool]:
    return _mesh.delete_file(*file_name)


def compss_wait_on_file(*file_name: str) -> bool | list[bool]:
    _mesh.wait_on_file(*file_name)
    return True if len(file_name) == 1 else [True] * len(file_name)


def compss_wait_on_directory(*directory_name: str):
    raise refuse("compss_wait_on_directory", "directory parameters are not offered")


def compss_delete_object(*obj: Any) -> bool | list[bool]:
    """True for each object a task wrote (the runtime tracked it), as PyCOMPSs."""
    return _mesh.delete_object(*obj)


def compss_barrier(no_more_tasks: bool = False) -> None:
    _mesh.barrier(no_more_tasks)


def compss_barrier_group(group_name: str) -> None:
    _mesh.barrier_group(group_name)


def compss_cancel_group(group_name: str) -> None:
    rt = _rt.current(create=False)
    if rt is not None and not rt.cancel_group(group_name):
        raise ValueError(f"no task group named {group_name!r} is waiting to be synchronised")


def compss_snapshot() -> None:
    raise refuse("compss_snapshot", "the mesh keeps no checkpoint of a program")


def compss_wait_on(*args: Any, **kwargs: Any) -> Any:
    mode = kwargs.pop("mode", "rw")
    if kwargs:
        raise TypeError(f"compss_wait_on: unknown keyword(s) {sorted(kwargs)}")
    if mode not in ("r", "rw", "w"):
        raise ValueError(f"compss_wait_on: mode {mode!r} (r, rw)")
    return _mesh.wait_on(*args)


def compss_get_number_of_resources() -> int:
    rt = _rt.current(create=False)
    if rt is None:
        return 1
    return 1 + sum(1 for p in rt.client.query("peers") if p["state"] == "alive")


def compss_request_resources(num_resources: int, group_name: str) -> None:
    raise refuse("compss_request_resources", "agents join and leave the mesh by themselves")


def compss_free_resources(num_resources: int, group_name: str) -> None:
    raise refuse("compss_free_resources", "agents join and leave the mesh by themselves")


def compss_set_wall_clock(wall_clock_limit: int) -> None:
    raise refuse("compss_set_wall_clock", "a mesh program has no wall clock limit")


class TaskGroup(_mesh.TaskGroup):
    """``with TaskGroup(name, implicit_barrier=True):`` (see ``mesh.program.api``)."""
