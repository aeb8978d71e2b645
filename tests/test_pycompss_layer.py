"""The PyCOMPSs compatibility layer without agents: the import alias never shadows a real
PyCOMPSs, the mapping of parameters and constraints, and what is refused (issue 16)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mesh.compat.pycompss._layer import Unsupported
from mesh.compat.pycompss.api import parameter as p
from mesh.compat.pycompss.api.constraint import needs
from mesh.faces.compss.answers import labels_of, parse_resources
from mesh.program import api as mesh_api
from tests.compss_helpers import ADD_RESOURCES_SELF
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def run_python(code: str, tmp_path, env: dict | None = None) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=50, cwd=str(tmp_path), env=dict(__import__("os").environ, PYTHONPATH=ROOT,
                                                                   **(env or {})))
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_pycompss_is_the_layer_only_where_no_real_one_is_installed(tmp_path):
    fake = tmp_path / "site" / "pycompss" / "api"
    fake.mkdir(parents=True)
    (tmp_path / "site" / "pycompss" / "__init__.py").write_text("REAL = True\n")
    (fake / "__init__.py").write_text("")
    (fake / "task.py").write_text("def task(**kw):\n    return 'real'\n")
    out = run_python("""
        import sys
        from mesh.compat import importer
        importer.install()
        import pycompss.api.task as t
        import mesh.compat.pycompss.api.task as layer
        print("alone", t is layer, t.task is layer.task)
        try:
            import pycompss.streams
        except ModuleNotFoundError as exc:
            print("missing", "compatibility layer offers" in str(exc))
        for k in [k for k in sys.modules if k.startswith("pycompss")]:
            del sys.modules[k]
        sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "site")
        import pycompss.api.task as real
        print("real", getattr(sys.modules["pycompss"], "REAL", False), real.task() == "real")
        with importer.prefer():
            import pycompss.api.task as t2
            print("preferred", t2 is layer, "pycompss.api.task" in sys.modules)
        import pycompss
        print("after", getattr(pycompss, "REAL", False), sys.modules["pycompss.api.task"] is real)
    """, tmp_path)
    assert out.split("\n")[:5] == ["alone True True", "missing True", "real True True",
                                   "preferred True True", "after True True"]


@pytest.mark.parametrize("declared, mesh", [
    (p.IN, mesh_api.IN), (p.IN_DELETE, mesh_api.IN), (p.OUT, mesh_api.OUT), (p.INOUT, mesh_api.INOUT),
    (p.CONCURRENT, mesh_api.INOUT), (p.COMMUTATIVE, mesh_api.INOUT), (p.FILE, mesh_api.FILE_IN),
    (p.FILE_IN, mesh_api.FILE_IN), (p.FILE_OUT, mesh_api.FILE_OUT), (p.FILE_INOUT, mesh_api.FILE_INOUT),
    (p.FILE_CONCURRENT, mesh_api.FILE_INOUT), (p.FILE_COMMUTATIVE, mesh_api.FILE_INOUT),
    (p.COLLECTION_IN, mesh_api.Collection(mesh_api.IN, 1)),
    (p.COLLECTION_INOUT, mesh_api.Collection(mesh_api.INOUT, 1)),
    (p.COLLECTION_OUT, mesh_api.Collection(mesh_api.OUT, 1)),
    ({p.Type: p.COLLECTION_INOUT, p.Depth: 3}, mesh_api.Collection(mesh_api.INOUT, 3)),
    ({p.Type: p.FILE_IN, p.Weight: "1.0", p.Keep_rename: True}, mesh_api.FILE_IN),
])
def test_parameters_map_onto_the_mesh(declared, mesh):
    assert p.to_mesh("x", declared) == mesh


@pytest.mark.parametrize("declared, named", [
    (p.DIRECTORY_IN, "DIRECTORY_IN"), (p.COLLECTION_FILE_IN, "COLLECTION_FILE_IN"),
    (p.DICT_COLLECTION_INOUT, "DICT_COLLECTION_INOUT"), (p.STREAM_OUT, "STREAM_OUT"),
    (p.STDOUT, "STDOUT"), (p.FILE_OUT_STDERR, "FILE_OUT_STDERR"),
    ({p.Type: p.FILE_IN, p.Weight: 3}, "weight=3"), ({p.Type: p.FILE_IN, p.Keep_rename: False}, "keep_rename"),
])
def test_parameters_the_mesh_does_not_offer_are_refused_by_name(declared, named):
    with pytest.raises(Unsupported, match=named):
        p.to_mesh("x", declared)


def test_constraints_become_slots_memory_and_labels_as_add_resources_names_them():
    c, local = needs(computing_units="2", memory_size=3, processor_architecture="arm64",
                     operating_system_type="Linux", app_software="numpy, scipy",
                     processors=[{"processorType": "GPU", "computingUnits": "1"}])
    assert (c.cpus, c.memory, local) == (2, 3 << 30, False)
    assert set(c.labels) == {"processor_architecture=arm64", "operating_system_type=Linux",
                             "app_software=numpy", "app_software=scipy", "processor_type=GPU"}
    described = (ADD_RESOURCES_SELF.replace(b"<operatingSystemType>[unassigned]", b"<operatingSystemType>Linux")
                 .replace(b"<architecture>[unassigned]", b"<architecture>arm64"))
    assert {"processor_architecture=arm64", "operating_system_type=Linux"} <= set(labels_of(parse_resources(described)))
    assert needs(processors=[{"processorType": "CPU", "computingUnits": "4"}])[0].cpus == 4
    assert needs(is_local=True)[1] is True


def test_constraints_read_the_environment_and_refuse_globals(monkeypatch):
    monkeypatch.setenv("UNITS", "3")
    assert needs(computing_units="${UNITS}")[0].cpus == 3
    assert needs(computing_units="$UNITS")[0].cpus == 3
    with pytest.raises(Unsupported, match="dynamic constraint"):
        needs(memory_size="MS")


def test_what_the_mesh_cannot_honour_is_refused_when_declared():
    from mesh.compat.pycompss.api.api import compss_set_wall_clock, compss_wait_on_directory
    from mesh.compat.pycompss.api.binary import binary
    from mesh.compat.pycompss.api.container import container
    from mesh.compat.pycompss.api.mpi import mpi
    from mesh.compat.pycompss.api.task import task

    with pytest.raises(Unsupported, match="@binary"):
        binary(binary="ls")
    with pytest.raises(Unsupported, match="@container.*containers are not built yet"):
        container(engine="DOCKER", image="x")
    with pytest.raises(Unsupported, match="@mpi"):
        mpi(runner="mpirun")
    with pytest.raises(Unsupported, match="is_replicated"):
        task(is_replicated=True)(lambda: None)
    with pytest.raises(Unsupported, match="numba"):
        task(numba=True)(lambda: None)
    with pytest.raises(Unsupported, match="compss_wait_on_directory"):
        compss_wait_on_directory("d")
    with pytest.raises(Unsupported, match="compss_set_wall_clock"):
        compss_set_wall_clock(10)
    with pytest.raises(TypeError, match="not a PyCOMPSs parameter type"):
        task(x=42)(lambda x: x)


def test_without_a_mesh_a_pycompss_program_runs_sequentially():
    """As PyCOMPSs without its runtime (its dummy API): tasks are calls, wait_on the
    identity, and a COMPSsException comes out of the group's block at once."""
    from mesh.compat.pycompss.api.api import TaskGroup, compss_barrier, compss_wait_on
    from mesh.compat.pycompss.api.exceptions import COMPSsException
    from mesh.compat.pycompss.api.parameter import INOUT
    from mesh.compat.pycompss.api.task import task

    @task(returns=2)
    def pair(x):
        return x, x + 1

    @task(lst=INOUT)
    def grow(lst):
        lst.append(len(lst))

    @task()
    def stop():
        raise COMPSsException("stop")

    assert compss_wait_on(pair(1)) == (1, 2)
    lst: list = []
    grow(lst)
    compss_barrier()
    assert lst == [0]
    with pytest.raises(COMPSsException), TaskGroup("g"):
        stop()


def test_every_api_function_and_decorator_of_the_layer_is_in_the_table():
    """docs/pycompss.md has a row for each compss_* function of pycompss.api.api and each
    decorator module of pycompss.api, so a new one cannot go without saying what it does."""
    import pkgutil

    from mesh.compat.pycompss import api as layer_api
    from mesh.compat.pycompss.api import api as sync_api

    with open(f"{ROOT}/docs/pycompss.md") as fh:
        table = fh.read()
    names = [f"`{n}" for n in vars(sync_api) if n.startswith("compss_")] + ["`TaskGroup"]
    plain = {"api", "parameter", "exceptions"}
    names += [f"`@{m.name}`" for m in pkgutil.iter_modules(layer_api.__path__) if m.name not in plain]
    missing = [n for n in names if n not in table]
    assert not missing, f"not in docs/pycompss.md: {missing}"


def test_a_star_import_of_parameter_gives_the_types_and_keys_only():
    """``from pycompss.api.parameter import *`` (every PyCOMPSs program) brings PyCOMPSs'
    names, none of the layer's helpers over the program's own."""
    names: dict = {}
    exec("from mesh.compat.pycompss.api.parameter import *", names)
    names.pop("__builtins__")
    assert {"IN", "FILE_INOUT", "COLLECTION_OUT", "Type", "Depth", "Direction"} <= set(names)
    assert all(isinstance(v, str) for v in names.values()), sorted(names)
