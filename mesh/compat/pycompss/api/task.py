"""``pycompss.api.task``: ``@task`` (also ``@Task``) on the mesh.

Options, as PyCOMPSs: ``returns`` (an int, a type or a tuple of types, ``"3"``, a
parameter's name, or a collection type: one value), ``priority``, ``on_failure``,
``time_out`` (counted from when the task starts running), ``target_direction``
(``self`` of a method is INOUT unless it says IN, as PyCOMPSs), and parameters by name
(``pycompss.api.parameter``). Refused with ``Unsupported``: ``is_replicated=True``
(run on every worker), ``is_distributed=True`` (round-robin placement), ``numba``,
``cache_returns=True``, ``varargs_type`` other than IN; an unknown option is a
TypeError.

Calling a task: outside a task, it is a task of the mesh (a future). Inside a task (the
function runs in a worker), PyCOMPSs' classic runtime runs it inline and returns its
value: so does the layer by default; with nesting on (``_layer.mode``) it is a task of
the mesh too. The mode travels with each task the program calls, so the tasks its
tasks call follow it at every depth.
"""

from __future__ import annotations

import inspect
from typing import Any

from mesh.compat.pycompss._layer import mode, refuse
from mesh.compat.pycompss.api import parameter as _param
from mesh.program import api as _mesh
from mesh.program import slot

_OPTIONS = {"returns", "priority", "on_failure", "time_out", "target_direction", "is_replicated",
            "is_distributed", "numba", "numba_signature", "numba_declaration", "cache_returns",
            "varargs_type", "computing_nodes"}


class CompssTask(_mesh.Task):
    """A PyCOMPSs task on the mesh (see the module docstring)."""

    is_local = False  # @constraint(is_local=True): runs in the program's process

    def _inline(self) -> bool:
        if slot.task_depth > 0:
            return slot.inline_nested
        return not mode.nesting

    def __call__(self, *args, **kwargs):
        if (slot.task_depth > 0 and slot.inline_nested) or self.is_local:
            # PyCOMPSs' classic runtime: a task called in a task runs inline (and a local
            # task runs where it was called, once its inputs exist)
            args, kwargs = _mesh.wait_on(list(args)), _mesh.wait_on(kwargs)
            return self.fn(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def _returns(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return len(value)
    if isinstance(value, str) and (_param.is_parameter(value) or value.isdigit()):
        return 1 if not value.isdigit() else int(value)
    if isinstance(value, dict):  # {Type: COLLECTION_OUT, Depth: ...}: one value
        return 1
    return value


def task(*args, **kwargs):
    """``@task(...)`` or ``@task``: see the module docstring."""
    if args and callable(args[0]) and len(args) == 1 and not kwargs:
        return task()(args[0])
    if args:
        raise TypeError("@task takes keyword arguments only")

    def deco(fn):
        options = {k: v for k, v in kwargs.items() if k in _OPTIONS}
        directions = {k: _param.to_mesh(k, v) for k, v in kwargs.items() if k not in options}
        for flag in ("is_replicated", "is_distributed", "cache_returns"):
            if options.get(flag):
                raise refuse(f"@task({flag}=True)", "placement and caching are the mesh's")
        for flag in ("numba", "numba_signature", "numba_declaration", "computing_nodes"):
            if flag in options:
                raise refuse(f"@task({flag}=...)")
        if options.get("varargs_type", _param.IN) not in (_param.IN, _param.IN_DELETE):
            raise refuse(f"@task(varargs_type={options['varargs_type']})", "*args are inputs")
        params = list(inspect.signature(fn).parameters)
        target = options.get("target_direction")
        if params and params[0] == "self" and "self" not in directions:
            target = _param.to_mesh("self", target if target is not None else _param.INOUT)
        elif target is not None:
            raise TypeError(f"@task on {fn.__name__}: target_direction is for methods (self)")
        else:
            target = None
        return CompssTask(fn, _returns(options.get("returns", 1)), bool(options.get("priority", False)),
                    str(options.get("on_failure", "RETRY")), options.get("time_out") or None,
                    directions, target)

    return deco


Task = task  # PyCOMPSs' camel-case name of the decorator
