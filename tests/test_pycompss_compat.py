"""Unmodified PyCOMPSs programs (tests/pycompss_apps/, only ``pycompss`` imports) run on
real agents through the compatibility layer (``mesh run --pycompss``), each checked
against a sequential computation or the values PyCOMPSs documents; and a PyCOMPSs
application started over COMPSs' REST. Three agents are shared by the module's tests:
c0 (the programs' agent, 2 slots), c1 (2 slots, Linux on arm64) and c2 (1 slot, a
GPU), their capabilities as PyCOMPSs' constraint keys (``key=value`` labels)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest

import mesh
from tests.compss_helpers import b64, element, param, start
from tests.conftest import ROOT, AgentFactory, run_cli, wait_for
from tests.test_compss_rest import curl

pytestmark = [pytest.mark.agents, pytest.mark.timeout(180)]

APPS = os.path.join(ROOT, "tests", "pycompss_apps")


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory):
    factory = AgentFactory(tmp_path_factory.mktemp("compat"))
    c0 = factory.start("c0", cpus=2)
    factory.start("c1", "--peer", c0.comm, "--label", "operating_system_type=Linux",
                  "--label", "processor_architecture=arm64", cpus=2)
    factory.start("c2", "--peer", c0.comm, "--label", "processor_type=GPU", cpus=1)
    with mesh.connect(c0.comm) as client:
        wait_for(lambda: sum(p["state"] == "alive" for p in client.query("peers")) == 2, 20,
                 "c0 to see c1 and c2")
    yield c0
    factory.stop_all()


def run_app(agent, app: str, *args: str, nesting: bool = False, exit: int = 0) -> dict:
    """``mesh run --pycompss APP ARGS``: the program's RESULT, checked that it exited
    with ``exit``."""
    extra = ["--nesting"] if nesting else []
    res = run_cli("run", "--pycompss", *extra, "--agent", agent.comm, os.path.join(APPS, app), *args,
                  timeout=150)
    assert res.returncode == exit, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, res.stdout + res.stderr
    return json.loads(lines[0][len("RESULT "):])


# ------------------------------------------------------------------ the tutorials' programs


def generate_block(size, seed):  # (as tests/pycompss_apps/matmul.py)
    return [[float((seed * 7 + i * size + j) % 11) for j in range(size)] for i in range(size)]


def test_blocked_matmul_with_inout_blocks(mesh3):
    blocks, size, seed = 3, 4, 5
    A = [[generate_block(size, seed + i * blocks + j) for j in range(blocks)] for i in range(blocks)]
    B = [[generate_block(size, seed + 100 + i * blocks + j) for j in range(blocks)] for i in range(blocks)]
    C = [[[[0.0] * size for _ in range(size)] for _ in range(blocks)] for _ in range(blocks)]
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                for x in range(size):
                    for y in range(size):
                        C[i][j][x][y] += sum(A[i][k][x][z] * B[k][j][z][y] for z in range(size))
    assert run_app(mesh3, "matmul.py", str(blocks), str(size), str(seed)) == C


def test_wordcount_with_reductions(mesh3, tmp_path):
    rng = random.Random(3)
    words = ["mesh", "task", "agent", "graph", "slot", "edge", "pi"]
    expected: Counter = Counter()
    for i in range(7):
        text = [rng.choice(words) for _ in range(200 + i)]
        expected.update(text)
        (tmp_path / f"part{i}.txt").write_text(" ".join(text))
    got = run_app(mesh3, "wordcount.py", str(tmp_path))
    assert got == {"tree": dict(expected), "fold": dict(expected)}


def kmeans(points: int, fragments: int, k: int, iterations: int, seed: int) -> list:
    """The same algorithm, sequentially (tests/pycompss_apps/kmeans.py)."""
    frags = []
    for i in range(fragments):
        rng = random.Random(seed + i)
        frags.append([[rng.uniform(0, 10), rng.uniform(0, 10)] for _ in range(points // fragments)])
    centres = [list(p) for p in frags[0][:k]]
    for _ in range(iterations):
        sums: dict = {}
        for frag in frags:
            for p in frag:
                best = min(range(k), key=lambda c: (p[0] - centres[c][0]) ** 2 + (p[1] - centres[c][1]) ** 2)
                s = sums.setdefault(best, [0.0, 0.0, 0])
                s[0] += p[0]
                s[1] += p[1]
                s[2] += 1
        centres = [[sums[c][0] / sums[c][2], sums[c][1] / sums[c][2]] if c in sums else centres[c]
                   for c in range(k)]
    return [[round(x, 9) for x in c] for c in centres]


def test_kmeans(mesh3):
    got = run_app(mesh3, "kmeans.py", "600", "6", "3", "4", "11")
    expected = kmeans(600, 6, 3, 4, 11)
    assert len(got) == 3
    for g, e in zip(got, expected, strict=True):  # (the same sums in another order)
        assert g == pytest.approx(e, abs=1e-6)


# ------------------------------------------------------------------ nested tasks


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_nested_tasks_run_inline_in_pycompss_classic_mode(mesh3, tmp_path):
    """A task called inside a task runs inline and returns its value (fib adds its
    children's results directly); a fired-and-forgotten task ran by the barrier."""
    got = run_app(mesh3, "nested.py", str(tmp_path / "log"), "6")
    assert got == {"kinds": ["int", "int"], "fib": fib(6), "returned": list(range(6)),
                   "fired": sorted(f"fired-{i}" for i in range(6))}


def test_nested_tasks_are_tasks_of_the_mesh_with_nesting(mesh3, tmp_path):
    """With --nesting a task called inside a task returns a future (compss_wait_on it),
    and tasks fired and forgotten by tasks are never lost."""
    got = run_app(mesh3, "nested.py", str(tmp_path / "log"), "6", "nesting", nesting=True)
    assert got == {"kinds": ["TaskFuture", "TaskFuture"], "fib": fib(6), "returned": list(range(6)),
                   "fired": sorted(f"fired-{i}" for i in range(6))}


# ------------------------------------------------------------------ collections, groups, failures


def test_collections_in_and_out_with_depth(mesh3):
    n = 4
    out = [[10 + i, 11 + i] for i in range(n)]
    rows = [[[20, 40], [60]], [[80], [100, 120]]]
    assert run_app(mesh3, "collections_app.py", str(n)) == {
        "out": out, "singles": [sum(b) for b in out], "grand": sum(map(sum, out)),
        "rows": rows, "row_total": 80 + 100 + 120,
        "flat": [v for i in range(n) for v in (i, i * i)]}


def test_task_groups_with_compss_exception(mesh3, tmp_path):
    log = tmp_path / "log"
    log.write_text("")
    assert run_app(mesh3, "groups.py", str(log)) == {
        "caught": "2 found!", "unwaited": True, "later": ["ok", "11 found!"],
        "cancelled": "TaskCancelled", "outside": 42, "after": 100, "starts": 1}


@pytest.mark.parametrize("policy, expected, exit", [
    ("RETRY", {"value": 2, "file": "start\nattempt-2\n"}, 0),  # a retry starts from the same input
    ("CANCEL_SUCCESSORS", {"after": "TaskCancelled", "file": "start\npartial\n"}, 0),
    ("IGNORE", {"value": -1, "file": "start\npartial\nnext\n"}, 0),
    ("FAIL", {"barrier": "TaskFailed", "file": "start\npartial\n"}, 1),  # the application failed
])
def test_each_on_failure_policy_with_files(mesh3, tmp_path, policy, expected, exit):
    assert run_app(mesh3, "failures.py", str(tmp_path), policy, exit=exit) == dict(expected, policy=policy)


def test_class_methods_with_inout_self(mesh3):
    assert run_app(mesh3, "methods.py") == {"a": [45, [10, 20, 30, -15]], "b": [120, [20, 40, 60]],
                                            "left": 45, "seen": "a:4"}


def test_constraints_routed_by_labels_over_three_agents(mesh3):
    got = run_app(mesh3, "constraints.py", "3")
    assert got["arm"] == ["c1"] * 3
    assert got["gpu"] == ["c2"] * 3
    assert set(got["two"]) <= {"c0", "c1"}
    for impl, agent in got["impl"]:  # the implementation that fits where it landed
        assert impl == ("gpu" if agent == "c2" else "generic"), got["impl"]


def test_a_program_that_fails_exits_with_its_traceback(mesh3, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import sys\nfrom pycompss.api.task import task\n\n@task(returns=1)\n"
                      "def boom(x):\n    raise KeyError(x)\n\nfrom pycompss.api.api import compss_wait_on\n"
                      "print('before')\ncompss_wait_on(boom(sys.argv[1]))\n")
    res = run_cli("run", "--pycompss", "--agent", mesh3.comm, str(script), "7", timeout=120)
    assert res.returncode == 1
    assert res.stdout.startswith("before\n")
    assert "KeyError: '7'" in res.stderr  # (the argument arrived as the string '7')
    script.write_text("from pycompss.api.binary import binary\n\n@binary(binary='ls')\n"
                      "def f():\n    pass\n")
    res = run_cli("run", "--pycompss", "--agent", mesh3.comm, str(script), timeout=120)
    assert res.returncode == 1 and "Unsupported: PyCOMPSs' @binary" in res.stderr


# ------------------------------------------------------------------ over COMPSs' REST


@pytest.mark.timeout(120)
def test_start_application_of_a_task_main_then_stop_forwarded(agents):
    """compss_agent_call_operation --lang=PYTHON --method_name=main --stop
    --forward_to=... on agents started with --rest-open: the @task main runs as the
    application (its argument a string), then every agent stops."""
    a = agents.start("r0", "--rest-port", "0", "--rest-open", cpus=2)
    b = agents.start("r1", "--rest-port", "0", "--rest-open", "--peer", a.comm, cpus=1)
    rest = a.state["rest"]
    with mesh.connect(a.comm) as client:
        wait_for(lambda: any(p["name"] == "r1" and p["state"] == "alive" for p in client.query("peers")),
                 15, "r0 to see r1")
    action = (f"<action><actionName>stop</actionName><forwardTo><agent>http://{b.state['rest']}</agent>"
              f"</forwardTo></action>")
    body = start(param("STRING_64_T", element(b64("6"))), class_name="tests.pycompss_apps.agent_app",
                 method="main", extra=action)
    code, _, app_id = curl(rest, "PUT", "/COMPSs/startApplication", body)
    assert code == 200 and app_id.decode().isdigit()
    assert a.proc.wait(60) == 0 and b.proc.wait(30) == 0
    assert "asked this agent to stop" in a.log()
    # the application's outcome, as its main printed it (a worker's output is its agent's)
    assert "agent_app main(6) = 55" in a.log() + b.log()
    assert "left the mesh" in a.log() and "left the mesh" in b.log()
