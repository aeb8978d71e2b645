"""The layout's rules, read from the sources with ``ast`` (the package's ``__init__``
files say what each part may import):

* every module under ``mesh/`` imports;
* no import cycle among mesh's modules;
* the pure cores (``mesh.discovery`` but ``mdns``, ``mesh.tree``, ``mesh.sched``,
  ``mesh.sim``) reach no socket, thread, clock or event loop (``zmq``, ``zeroconf``,
  ``socket``, ``threading``, ``asyncio``, ``time``) and nothing above them
  (``mesh.agent``, ``mesh.client``, ``mesh.program``, ``mesh.faces``, ``mesh.cli``),
  directly or through the mesh modules they import (a core that imports another core
  is not charged with the other's imports of I/O: that one is checked itself);
* the wire imports no core (the records the cores send are the wire's), only
  ``mesh.errors`` and ``mesh.keys``;
* the agent imports only the wire, the cores (``mesh.discovery.mdns`` included: the
  shell's adapter), ``mesh.keys`` and ``mesh.errors``: no face, not the CLI, and the
  program side (``mesh.program``, and ``mesh.compat``, PyCOMPSs' API over it) only in
  the worker process (``mesh.agent.worker`` runs task bodies);
* the client imports no agent, and only the wire, ``mesh.keys``, ``mesh.errors`` and
  what ``mesh/client/__init__`` names: the rules it shares with agents
  (``mesh.sched.leases``, its side of the leases on calls; ``mesh.sched.objects`` for
  ``ObjectLost``) and ``mesh.program.taskexec`` (a call run in the program itself).

What counts as an import. An edge A -> B is an ``import B`` or ``from B import x`` in A
(relative ones resolved), or ``from P import B`` where ``P.B`` is a module; importing
``P.B`` is not counted as importing the package ``P``'s ``__init__``.

* Cycles: module-level imports only, those under ``if TYPE_CHECKING:`` included (two
  modules that name each other's types are one idea in two files). Imports inside a
  function or a method are left out: they run after both modules are loaded, so they
  can close no cycle at import time (they are how a module defers an expensive or
  optional import).
* The other rules: every import, in a function too, since a dependency is a
  dependency wherever it is written, and, for the cores, everything they reach.

A check that fails today because of a restructuring under way elsewhere is marked
``xfail(strict=True)`` with the reason: it turns into a failure (XPASS) the day the
reason is gone, and the mark must go then.
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
CORES = ("mesh.discovery", "mesh.tree", "mesh.sched", "mesh.sim")
NOT_CORES = ("mesh.discovery.mdns",)  # the shell's mDNS adapter lives beside its core
IO = ("zmq", "zeroconf", "socket", "threading", "asyncio", "time")
ABOVE_CORES = ("mesh.agent", "mesh.client", "mesh.program", "mesh.faces", "mesh.cli")
CLIENT_MAY = ("mesh.client", "mesh.wire", "mesh.keys", "mesh.errors", "mesh.sched.leases",
              "mesh.sched.objects", "mesh.program.taskexec")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted((ROOT / "mesh").rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@functools.cache
def imports(name: str, module_level: bool) -> frozenset[str]:
    """What ``name`` imports (module names, mesh's or not): at module level (``if``,
    ``try`` and ``TYPE_CHECKING`` blocks included), or anywhere."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in child.names
                             if f"{target}.{alias.name}" in MODULES)
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return frozenset(found)


def mesh_imports(name: str, module_level: bool) -> set[str]:
    return {m for m in imports(name, module_level) if m in MODULES}


@functools.cache
def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(mesh_imports(v, module_level=True)):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            connect(v)
    return out


def reach(name: str) -> set[str]:
    """Every mesh module ``name`` imports, directly or through others (any level)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for m in mesh_imports(todo.pop(), module_level=False):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def marked(names, reasons: dict[str, str]) -> list:
    """``names`` as parameters, those in ``reasons`` marked xfail(strict) with it."""
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=reasons[n]))
            if n in reasons else n for n in names]


# ----------------------------------------------------------------------------- every module


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_reader_sees_every_import_of_a_known_module():
    """The parser is right on a module whose imports are known by heart."""
    assert mesh_imports("mesh.discovery.membership", module_level=True) >= {
        "mesh.discovery.actions", "mesh.discovery.members", "mesh.wire.messages"}
    assert "mesh.discovery.mdns" in mesh_imports("mesh.agent.agent", module_level=False)
    assert "mesh.discovery.mdns" not in mesh_imports("mesh.agent.agent", module_level=True)


# ----------------------------------------------------------------------------- cycles

LEDGER_CYCLE = ("ledger_model's Program names LedgerSim (under TYPE_CHECKING: a program takes "
                "its randomness, clock and link from the simulator), which imports every ledger_* "
                "module: mesh/sim/ledger_* is being restructured")
IN_CYCLES_TODAY = dict.fromkeys(("mesh.sim.ledger_sim", "mesh.sim.ledger_model", "mesh.sim.ledger_membership",
                                 "mesh.sim.ledger_workers"), LEDGER_CYCLE)


@pytest.mark.parametrize("name", marked(sorted(MODULES), IN_CYCLES_TODAY))
def test_no_import_cycle_goes_through(name):
    assert [c for c in cycles() if name in c] == []


# ----------------------------------------------------------------------------- layers

CORE_MODULES = [n for n in sorted(MODULES) if within(n, *CORES) and n not in NOT_CORES]
CORES_TODAY = {"mesh.sim.ledger_sim": "its command-line main times the run with time.perf_counter: "
                                      "mesh/sim/ledger_* is being restructured"}


@pytest.mark.parametrize("name", marked(CORE_MODULES, CORES_TODAY))
def test_a_core_reaches_no_io_and_nothing_above_it(name):
    reached = reach(name)
    assert sorted(m for m in reached if within(m, *ABOVE_CORES)) == []
    assert sorted(m for m in reached if m in NOT_CORES) == []
    # its own imports and those of what it reaches outside the cores (each core is checked
    # itself: one core's fault is not charged to every core that imports it)
    mine = {name} | {m for m in reached if m not in CORE_MODULES}
    io = {(m, i) for m in mine for i in imports(m, module_level=False) if i.split(".")[0] in IO}
    assert sorted(io) == []


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if within(n, "mesh.wire")])
def test_the_wire_imports_no_core(name):
    assert sorted(m for m in mesh_imports(name, module_level=False)
                  if not within(m, "mesh.wire", "mesh.errors", "mesh.keys")) == []


AGENT_MAY = ("mesh.agent", "mesh.wire", *CORES, "mesh.keys", "mesh.errors")


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if within(n, "mesh.agent")])
def test_the_agent_imports_no_face_and_the_program_only_in_the_worker(name):
    may = AGENT_MAY + (("mesh.program", "mesh.compat") if name == "mesh.agent.worker" else ())
    assert sorted(m for m in mesh_imports(name, module_level=False)
                  if not within(m, *may) and m != "mesh") == []


CLIENT = [n for n in sorted(MODULES) if within(n, "mesh.client")]


@pytest.mark.parametrize("name", CLIENT)
def test_the_client_imports_no_agent(name):
    assert sorted(m for m in reach(name) if within(m, "mesh.agent")) == []


@pytest.mark.parametrize("name", CLIENT)
def test_the_client_imports_only_what_its_init_names(name):
    assert sorted(m for m in mesh_imports(name, module_level=False)
                  if not within(m, *CLIENT_MAY) and m != "mesh") == []
