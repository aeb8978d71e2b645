"""Programs in the shape of the PyCOMPSs tutorials on real agents, checked against the
values PyCOMPSs gives them (issue 16): each test pins one semantic PyCOMPSs users rely on."""

from __future__ import annotations

import json
import re
import threading

import pytest

import mesh
from mesh.program.api import TaskFailed, barrier, wait_on, wait_on_file
from tests.compss_helpers import b64, element, param, start
from tests.conftest import run_cli, wait_for
from tests.pycompss_tasks import (
    append_or_fail,
    copy_or_report,
    fires_a_failing_task,
    multiply,
    nested_inc,
    waits_then_fires_0,
    waits_then_fires_1,
)
from tests.test_compss_rest import http

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


def block(seed: int, n: int) -> list:
    return [[float((seed * 7 + i * n + j) % 11) for j in range(n)] for i in range(n)]


def matmul_expected(A, B, blocks: int, n: int) -> list:
    C = [[[[0.0] * n for _ in range(n)] for _ in range(blocks)] for _ in range(blocks)]
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                a, b, c = A[i][k], B[k][j], C[i][j]
                for x in range(n):
                    for y in range(n):
                        c[x][y] += sum(a[x][z] * b[z][y] for z in range(n))
    return C


@pytest.fixture
def two_agents(agents):
    a = agents.start("sem0", cpus=2)
    agents.start("sem1", "--peer", a.comm, cpus=2)
    client = mesh.connect(a.comm)
    wait_for(lambda: any(p["name"] == "sem1" and p["state"] == "alive"
                         for p in client.query("peers")), 15, "sem0 to see sem1")
    yield a
    client.close()


def test_wait_on_a_nested_list_of_inout_blocks_returns_their_latest_versions(two_agents):
    """The tutorial's blocked matmul: C[i][j] INOUT, updated by tasks; ``C = wait_on(C)``
    synchronises every block, as PyCOMPSs does (not only futures)."""
    blocks, n = 3, 4
    A = [[block(i * blocks + j, n) for j in range(blocks)] for i in range(blocks)]
    B = [[block(100 + i * blocks + j, n) for j in range(blocks)] for i in range(blocks)]
    expected = matmul_expected(A, B, blocks, n)
    C = [[[[0.0] * n for _ in range(n)] for _ in range(blocks)] for _ in range(blocks)]
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                multiply(A[i][k], B[k][j], C[i][j])
    # inside tuples and dicts too, mixed with plain values
    got = wait_on({"c": (C[0][0], [C[2][2]]), "k": 5})
    assert got == {"c": (expected[0][0], [expected[2][2]]), "k": 5}
    one = wait_on(C[1][2])  # one block on its own
    assert one == expected[1][2]
    C = wait_on(C)
    assert C == expected


@pytest.mark.timeout(240)  # (each run starts a worker process: slow on a loaded machine)
def test_fire_and_forget_tasks_of_a_task_are_never_lost_on_one_slot_agents(agents, tmp_path):
    """A task waits on one task (lending its only slot: the agent starts a stand-in
    worker), calls two more without waiting and returns; its worker may be stopped
    once its call is over. Its call ends when those tasks have ended, so they are never
    lost. 200 runs on two one-slot agents (two lanes, one per agent, at once); each
    run's tasks are distinct. (Each run costs a worker start: the agent retires the
    worker that ran the task, as it has a stand-in too, which is what lost them.)"""
    a = agents.start("ff0", "--label", "lane0", cpus=1)
    agents.start("ff1", "--peer", a.comm, "--label", "lane1", cpus=1)
    path = str(tmp_path / "fired")
    runs = 200
    with mesh.connect(a.comm) as client:
        wait_for(lambda: any(p["name"] == "ff1" and p["state"] == "alive"
                             for p in client.query("peers")), 15, "ff0 to see ff1")
        errors: list = []

        def lane(i: int, fn) -> None:
            try:
                for x in range(i, runs, 2):
                    assert wait_on(fn(1000 * x, path)) == 1000 * x + 1
            except BaseException as exc:  # (reported by the test's thread)
                errors.append(exc)

        threads = [threading.Thread(target=lane, args=(i, fn), daemon=True)
                   for i, fn in enumerate((waits_then_fires_0, waits_then_fires_1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(220)
        assert not any(t.is_alive() for t in threads), "the runs did not end"
        assert not errors, errors
    expected = {f"now-{1000 * x}" for x in range(runs)} | {str(1000 * x + 1) for x in range(runs)}
    with open(path) as f:
        fired = set(f.read().split())
    # each call of waits_then_fires ended after its two fires: none may be missing now
    assert fired == expected, f"lost: {sorted(expected - fired)[:20]}"


def test_a_task_whose_unwaited_task_fails_the_graph_fails_and_its_worker_starts_anew(agents):
    """A task called and not waited for that fails the graph (FAIL) fails the call that
    called it (as a barrier at its end would); the worker's next call, of any program,
    starts with a new graph, not one failed for good."""
    a = agents.start("fail0", cpus=2)  # (an idle agent gives a call to its first worker)
    with mesh.connect(a.comm):
        with pytest.raises(TaskFailed, match="bad 7"):
            wait_on(fires_a_failing_task(7))
    with mesh.connect(a.comm):
        assert wait_on(nested_inc(1)) == 3


TASK_MAIN_SCRIPT = '''
from mesh import task, wait_on

@task(returns=1)
def square(x):
    return x * x

@task(returns=1)
def main(n):
    return sum(wait_on([square(i) for i in range(int(n))]))
'''


def test_a_task_decorated_main_runs_as_the_main_program(agents, tmp_path, mesh_key):
    """COMPSs runs the method named by startApplication as the application's main, even
    when it is a @task: so do ``mesh call``, ``mesh run`` and startApplication (before,
    ``main`` became one nested task: 'a TaskFuture cannot be pickled')."""
    a = agents.start("main0", "--rest-port", "0", cpus=2)
    expected = sum(i * i for i in range(6))
    res = run_cli("call", "--agent", a.comm, "tests.pycompss_tasks:main", "6", timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(expected)

    script = tmp_path / "app.py"
    script.write_text(TASK_MAIN_SCRIPT)
    graph = tmp_path / "graph.dot"
    res = run_cli("run", "--agent", a.comm, "--graph", str(graph), str(script), "6", timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(expected)
    names = re.findall(r'tooltip="(\w+) on', graph.read_text())
    assert names == ["square"] * 6  # main ran as the program, not as a task of it

    rest, token = a.state["rest"], mesh_key.rest_token()
    body = start(param("STRING_64_T", element(b64("6"))), class_name="tests.pycompss_tasks",
                 method="main")
    code, call_id = http(rest, token, "PUT", "/COMPSs/startApplication", body)
    assert code == 200

    def finished():
        doc = json.loads(http(rest, token, "GET", f"/v1/calls/{call_id.decode()}")[1])
        return doc if doc["state"] in ("done", "failed") else None

    doc = wait_for(finished, 30, "the application to end")
    assert doc["state"] == "done" and doc["result"] == expected, doc


def test_ignore_on_a_chained_file_inout_goes_on_with_the_next_task(two_agents, tmp_path):
    """IGNORE on a FILE_INOUT in a chain: the next task runs and barrier returns (the
    next task gets an empty file, the graph's stand-in for a failed version; COMPSs
    would keep what the failed task wrote). Before: KeyError(DataVersion) in _submit,
    the next task never sent, barrier blocked for ever."""
    path = tmp_path / "log.txt"
    path.write_text("start\n")
    append_or_fail(str(path), "one")
    append_or_fail(str(path), "bad")  # fails, ignored
    append_or_fail(str(path), "two")
    append_or_fail(str(path), "three")
    barrier()
    assert wait_on_file(str(path)) == str(path)
    assert path.read_text().endswith("two\nthree\n")  # (what came before: see the docstring)


def test_a_file_parameter_given_none_reaches_the_task_as_none(two_agents, tmp_path):
    """As PyCOMPSs (a None FILE parameter is a null parameter): no dependency, nothing
    read or written back. Anything else that is not a path is refused at the call."""
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("data")
    assert wait_on(copy_or_report(None, str(dst))) == "src=None dst=a file"
    assert wait_on_file(str(dst)) and dst.read_text() == "none"
    assert wait_on(copy_or_report(str(src), None)) == "src=a file dst=None"
    assert wait_on(copy_or_report(str(src), str(dst))) == "src=a file dst=a file"
    assert wait_on_file(str(dst)) and dst.read_text() == "data"
    with pytest.raises(TypeError, match="'src' is FILE_IN: a path .* or None, not int"):
        copy_or_report(42, None)
