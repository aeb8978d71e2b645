"""``pycompss.api.constraint``: ``@constraint`` (also ``@Constraint``) above ``@task``.

On the mesh (``needs``):

* ``computing_units`` -> slots (``cpus``): the task takes that many slots of one agent;
* ``memory_size`` (GB, as PyCOMPSs) -> ``memory`` (GiB: ``join --memory 2G`` fits
  ``memory_size=2``);
* ``processors=[{"processorType": "CPU", "computingUnits": "2", ...}]``: the CPUs'
  computing units add up to slots; another processor type, and every other key of a
  processor, become labels as below;
* ``is_local=True``: the task runs where it is called (the program's process), once its
  inputs exist (COMPSs agents: on the agent that received the operation);
* every other key (``processor_architecture``, ``processor_type``, ``processor_name``,
  ``processor_speed``, ``operating_system_type``, ``operating_system_distribution``,
  ``operating_system_version``, ``memory_type``, ``storage_size``, ``storage_type``,
  ``storage_bw``, ``app_software``, ``host_queues``, ``wall_clock_limit``, ...) becomes a
  label ``key=value`` an agent must offer (``join --label
  operating_system_type=Linux``; COMPSs' ``addResources`` gives them too). A
  comma-separated ``app_software`` is one label per software.

Values may be numbers or strings, ``"$VAR"``/``"${VAR}"`` read from the environment when
the decorator runs. A value that names a global variable (PyCOMPSs' dynamic
constraints) is refused: the mesh reads constraints once, when the task is declared.
"""

from __future__ import annotations

import os
import re
from typing import Any

from mesh.compat.pycompss._layer import refuse
from mesh.program import api as _mesh

_ENV = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")
_PROCESSOR_KEYS = {"processorType": "processor_type", "processorName": "processor_name",
                   "processorSpeed": "processor_speed", "processorArchitecture": "processor_architecture",
                   "processorPropertyName": "processor_property_name",
                   "processorPropertyValue": "processor_property_value",
                   "processorInternalMemorySize": "processor_internal_memory_size"}
GIB = 1 << 30


def _value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    m = _ENV.match(text)
    if m:
        if m.group(1) not in os.environ:
            raise ValueError(f"@constraint({key}={value!r}): the environment has no {m.group(1)}")
        text = os.environ[m.group(1)].strip()
    return text


def _number(key: str, value: Any) -> float:
    text = _value(key, value)
    try:
        return float(text)
    except ValueError:
        if text.isidentifier():
            raise refuse(f"dynamic constraint {key}={value!r} (a global variable)",
                         "constraints are read once, when the task is declared") from None
        raise ValueError(f"@constraint({key}={value!r}): not a number") from None


def needs(**constraints: Any) -> tuple[_mesh.Constraints, bool]:
    """The mesh's ``Constraints`` for PyCOMPSs' constraint keys, and ``is_local``."""
    cpus, memory, labels, is_local = 1, None, [], False
    units = None
    for key, value in constraints.items():
        if key == "computing_units":
            units = int(_number(key, value))
        elif key == "memory_size":
            memory = int(_number(key, value) * GIB)
        elif key == "is_local":
            is_local = _value(key, value) in ("true", "True", "1")
        elif key == "processors":
            for p in value or ():
                if str(p.get("processorType", "CPU")).upper() == "CPU":
                    units = (units or 0) + int(_number("computingUnits", p.get("computingUnits", 1)))
                else:
                    labels.append(f"processor_type={_value('processorType', p['processorType'])}")
                for k, v in p.items():
                    if k not in ("processorType", "computingUnits") and v not in (None, "[unassigned]"):
                        labels.append(f"{_PROCESSOR_KEYS.get(k, k)}={_value(k, v)}")
        elif key == "app_software":
            labels += [f"app_software={s.strip()}" for s in _value(key, value).split(",") if s.strip()]
        elif value is not None and value != "[unassigned]":
            labels.append(f"{key}={_value(key, value)}")
    if units is not None:
        if units < 1:
            raise ValueError(f"@constraint: computing units must be >= 1, not {units}")
        cpus = units
    return _mesh.Constraints(cpus, memory, tuple(dict.fromkeys(labels))), is_local


def constraint(**constraints: Any):
    """``@constraint(computing_units="2", operating_system_type="Linux", ...)``: see the
    module docstring."""
    c, is_local = needs(**constraints)

    def deco(fn):
        fn.__mesh_constraints__ = c
        if isinstance(fn, _mesh.Task):
            fn.fn.__mesh_constraints__ = c
            if is_local:
                fn.is_local = True
        elif is_local:
            raise TypeError("@constraint(is_local=True) goes above @task")
        return fn

    return deco


Constraint = constraint
