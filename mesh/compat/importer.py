"""Making ``mesh.compat.pycompss`` importable as ``pycompss``, without ever shadowing a
real PyCOMPSs.

Theory of operation
-------------------
``install(prefer)`` puts one ``PyCOMPSsFinder`` at the front of ``sys.meta_path``. For
``pycompss`` itself it answers with an alias of ``mesh.compat.pycompss`` (the very
module object, so ``pycompss.api.task.task is mesh.compat.pycompss.api.task.task``):

* ``prefer=False`` (every worker of every agent: ``mesh.agent.worker``): only when no
  other finder on ``sys.meta_path`` finds a ``pycompss``, i.e. when no real PyCOMPSs
  is installed. Modules a worker imports by name (a COMPSs application started over
  REST, the modules its tasks come from) then get the layer; a machine with PyCOMPSs
  installed keeps its own;
* ``prefer=True`` (``mesh run --pycompss``, for the length of the run: ``prefer``
  below): always, a real PyCOMPSs imported before is set aside (its ``sys.modules``
  entries) and put back afterwards. The user asked to run the program on the mesh.

A submodule ``pycompss.x.y`` is answered from ``mesh.compat.pycompss.x.y`` exactly when
``sys.modules["pycompss"]`` is the layer (submodules must come from their package: the
path finder would otherwise load a second copy of the layer's modules); one the layer
does not have raises ``ModuleNotFoundError`` naming it and what the layer offers.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import threading

PREFIX = "mesh.compat."
OFFERED = ("pycompss.api.task, .parameter, .api, .constraint, .on_failure, .implement, "
           ".exceptions, .local (and the decorators mesh refuses with an error naming them: "
           ".binary, .mpi, .container, ...)")
_lock = threading.Lock()


class _Alias(importlib.abc.Loader):
    """Loads ``pycompss...`` as the layer's module of the same path (the same object)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass  # (the layer's module ran when it was imported under its own name)


class PyCOMPSsFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.prefer = 0  # runs that asked the layer to take precedence (``prefer``)

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != "pycompss" and not fullname.startswith("pycompss."):
            return None
        if fullname == "pycompss":
            if not self.prefer and self._real_one():
                return None
        elif not _is_layer(sys.modules.get("pycompss")):
            return None  # (a real PyCOMPSs's own submodule)
        name = PREFIX + fullname
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            raise ModuleNotFoundError(f"No module named {fullname!r}: mesh's PyCOMPSs compatibility "
                                      f"layer offers {OFFERED}", name=fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(name),
                                               is_package=found.submodule_search_locations is not None)

    def _real_one(self) -> bool:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            try:
                if finder.find_spec("pycompss", None) is not None:
                    return True
            except Exception:  # (a broken finder is not a PyCOMPSs)
                continue
        return False


def _is_layer(module) -> bool:
    return module is not None and getattr(module, "__name__", "") == PREFIX + "pycompss"


_finder: PyCOMPSsFinder | None = None


def install() -> PyCOMPSsFinder:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    global _finder
    with _lock:
        if _finder is None:
            _finder = PyCOMPSsFinder()
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        return _finder


@contextlib.contextmanager
def prefer():
    """For the block, ``import pycompss...`` gives the layer even where a real PyCOMPSs
    is installed (``mesh run --pycompss``); a real one imported before is set aside and
    put back afterwards, and so are the layer's entries it made."""
    finder = install()
    with _lock:
        finder.prefer += 1
        saved = _take_entries()
    try:
        yield
    finally:
        with _lock:
            finder.prefer -= 1
            _take_entries()  # (the layer's aliases made during the run)
            sys.modules.update(saved)


def _take_entries() -> dict:
    taken = {k: v for k, v in sys.modules.items() if k == "pycompss" or k.startswith("pycompss.")}
    for k in taken:
        del sys.modules[k]
    return taken
