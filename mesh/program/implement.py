"""Alternative implementations of a task (``@implement``, as PyCOMPSs'): one task, several
functions, each with its own ``@constraint``; the mesh places a call where one of them
fits, and the agent it lands on runs the one that fits it.

Theory of operation
-------------------
``register(target, alternative)`` records that ``alternative`` (a ``Task``) implements
the task ``target`` names: a ``(module, function)`` pair, PyCOMPSs' ``source_class`` and
``method``. ``of(task)`` finds them again when the task is called: an alternative names
its target by the module it lives in (``fn.__module__``), by its script's file name
without ``.py`` (a script run by ``mesh run`` is a module of another name), or as
``__main__``.

A call of a task with alternatives sends ``Implementations``, the functions and their
constraints, main one first, as the function to run, and is placed as follows
(``placement``): when one of them has no constraint, anywhere (needs None); otherwise
with the needs of the first one that a live agent of the mesh fits (asked of the
program's agent: its status and its peers, ``capabilities``, cached ``CACHE_S``), or of
the main one if none does (the call then fails with ``NoSuitableAgent`` as usual).

On the worker, ``Implementations`` runs the first constrained implementation that fits
its agent (asked of the agent: its slots, memory and labels), else the first one with
no constraint: the constrained ones are the specialised ones. Fitting is the
dispatcher's own rule (``mesh.sched.placement``).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from mesh.sched.placement import describe
from mesh.sched.records import fits as _fits  # the dispatcher's rule: one rule, placement and here

CACHE_S = 2.0  # s an answer about the mesh's agents is reused

_registry: dict[tuple[str, str], dict[str, Any]] = {}  # (module, function) -> qualname -> Task
_lock = threading.Lock()


def register(target: tuple[str, str], alternative: Any) -> None:
    """``alternative`` (a ``Task``) implements the task named ``target``."""
    key = (str(target[0]), str(target[1]))
    name = f"{alternative.fn.__module__}.{alternative.fn.__qualname__}"
    with _lock:
        _registry.setdefault(key, {})[name] = alternative


def of(task: Any) -> list:
    """The alternatives registered for ``task`` (a ``Task``), in registration order."""
    fn = task.fn
    names = {fn.__module__, "__main__"}
    code = getattr(fn, "__code__", None)
    if code is not None:
        names.add(os.path.splitext(os.path.basename(code.co_filename))[0])
    with _lock:
        if not _registry:
            return []
        found: list = []
        for (module, method), alts in _registry.items():
            if method == fn.__name__ and module in names:
                found.extend(a for a in alts.values() if a is not task)
        return found


class Implementations:
    """What runs for a task with alternatives: ``impls`` are (function, ``Needs`` or
    None), the task's own first. Called on the worker (see the module docstring)."""

    def __init__(self, impls: list) -> None:
        self.impls = impls
        self.__name__ = getattr(impls[0][0], "__name__", "task")

    def choose(self, caps: tuple | None):
        """The function to run on an agent with ``caps`` = (slots, memory, labels); None:
        not known (outside a worker): the task's own."""
        if caps is None:
            return self.impls[0][0]
        cpus, memory, labels = caps
        for fn, needs in self.impls:
            if needs is not None and _fits(needs, cpus, memory, labels):
                return fn
        for fn, needs in self.impls:
            if needs is None:
                return fn
        wanted = "; ".join("nothing" if n is None else describe(n) for _, n in self.impls)
        raise RuntimeError(f"no implementation of {self.__name__} fits this agent "
                           f"({cpus} slot(s), labels {sorted(labels)}): they need {wanted}")

    def __call__(self, *args, **kwargs):
        return self.choose(_own_agent())(*args, **kwargs)


def placement(impls: list, client: Any) -> Any:
    """The needs a call of ``impls`` is placed with (see the module docstring)."""
    if any(needs is None for _, needs in impls):
        return None
    agents = capabilities(client)
    for _, needs in impls:
        if any(_fits(needs, *caps) for caps in agents):
            return needs
    return impls[0][1]


_caps: dict[int, tuple[float, list]] = {}  # id(client) -> (when, [(cpus, memory, labels)])


def capabilities(client: Any) -> list:
    """(slots, memory, labels) of the program's agent and its live peers."""
    now = time.monotonic()
    cached = _caps.get(id(client))
    if cached is not None and now - cached[0] < CACHE_S:
        return cached[1]
    status = client.query("status")
    found = [(status["cpus"]["total"], status["memory"] or 0, frozenset(status["labels"]))]
    for p in client.query("peers"):
        if p["state"] == "alive":
            found.append((p["cpus"], p["memory"] or 0, frozenset(p["labels"])))
    _caps.clear()
    _caps[id(client)] = (now, found)
    return found


_own: list = [0.0, None, None]  # [when asked, caps, client]


def _own_agent() -> tuple | None:
    """This worker's agent's (slots, memory, labels); None outside a worker."""
    from mesh.program import slot

    if slot.channel is None:
        return None
    now = time.monotonic()
    if _own[1] is not None and now - _own[0] < CACHE_S:
        return _own[1]
    if _own[2] is None:
        from mesh.program.runtime import _worker_client

        _own[2] = _worker_client()
        if _own[2] is None:
            return None
    status = _own[2].query("status")
    _own[0], _own[1] = now, (status["cpus"]["total"], status["memory"] or 0,
                             frozenset(status["labels"]))
    return _own[1]
