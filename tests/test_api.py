"""The PyCOMPSs-style API (mesh.program.api): sequential without a mesh, on real agents with one."""

from __future__ import annotations

import os
import threading
import time

import pytest

import mesh
import mesh.client.client
from mesh.client.client import Client
from mesh.program import api
from mesh.program import runtime as rt_mod
from mesh.program.api import (
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    INOUT,
    TaskCancelled,
    TaskFailed,
    TaskFuture,
    TaskGroup,
    barrier,
    constraint,
    task,
    wait_on,
    wait_on_file,
)
from tests.conftest import wait_for

# the sequential tests start no agent; they carry the marker so the file runs as one unit
pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


@task(returns=1)
def inc(x):
    return x + 1


@task(returns=1)
def square(x):
    return x * x


@task(returns=1)
def total(values):
    return sum(values)


@task(returns=1)
def add_all(items, table):
    return sum(items) + sum(table.values())


@task(lst=INOUT, returns=0)
def append_to(lst, x):
    lst.append(x)


@task(returns=2)
def divmod_task(a, b):
    return divmod(a, b)


@task(src=FILE_IN, dst=FILE_OUT, returns=1)
def upper_file(src, dst):
    with open(src) as f:
        text = f.read()
    with open(dst, "w") as f:
        f.write(text.upper())
    return len(text)


@task(path=FILE_INOUT, returns=0)
def append_line(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


@task(returns=1)
def fail_always(x):
    raise KeyError(f"missing {x}")


@task(returns=1, on_failure="CANCEL_SUCCESSORS")
def fail_cancel(x):
    raise ValueError(f"bad {x}")


@task(returns=1, on_failure="FAIL")
def fail_graph(x):
    raise RuntimeError(f"fatal {x}")


@task(returns=1, on_failure="IGNORE")
def fail_ignore(x):
    raise ValueError(f"ignored {x}")


@task(returns=1)
def is_none(x):
    return x is None


@task(returns=1, on_failure="IGNORE", time_out=0.3)
def slow(seconds):
    time.sleep(seconds)
    return "late"


@constraint(cpus=2, memory=1 << 20, labels=["gpu"])
@task(returns=1)
def constrained(x):
    return x


@task(returns=1)
def outer(n):
    return wait_on([inc(i) for i in range(n)])  # nested: the inner tasks go to the mesh too


@task(returns=1)
def fib(n):
    if n < 2:
        return n
    a, b = fib(n - 1), fib(n - 2)  # nested tasks; the caller lends its slot while it waits
    return wait_on(a) + wait_on(b)


@pytest.fixture
def connected(agents):
    """Two agents, connected to the first; closes the client afterwards."""
    a = agents.start("api0", cpus=2)
    b = agents.start("api1", "--peer", a.comm, cpus=2)
    client = mesh.connect(a.comm)
    wait_for(lambda: any(p["name"] == "api1" and p["state"] == "alive"
                         for p in client.query("peers")), 10, "a to see b")
    yield client
    client.close()
    assert b.alive()


def test_sequential_without_mesh(monkeypatch):
    monkeypatch.setattr(mesh.client.client, "_default", None)  # no mesh connected
    assert inc(1) == 2
    assert wait_on(inc(inc(1))) == 3
    lst: list = []
    for i in range(3):
        append_to(lst, i)
    assert wait_on(lst) == [0, 1, 2] and lst == [0, 1, 2]
    assert divmod_task(7, 2) == (3, 1)
    assert add_all([1, 2], {"a": 3}) == 6
    barrier()
    with TaskGroup("g"):
        assert inc(0) == 1
    with pytest.raises(KeyError):
        fail_always(1)
    assert outer(3) == [1, 2, 3]
    assert constrained.constraints == api.Constraints(2, 1 << 20, ("gpu",))
    assert mesh.task is task and mesh.INOUT is INOUT


def test_sequential_files(tmp_path, monkeypatch):
    monkeypatch.setattr(mesh.client.client, "_default", None)
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("hello")
    assert upper_file(str(src), str(dst)) == 5
    assert dst.read_text() == "HELLO"


@pytest.mark.timeout(90)
def test_chain_fan_out_fan_in_and_containers(connected):
    f = inc(0)
    assert isinstance(f, TaskFuture)
    for _ in range(9):
        f = inc(f)
    assert wait_on(f) == 10
    squares = [square(i) for i in range(50)]
    assert wait_on(total(squares)) == sum(i * i for i in range(50))
    assert wait_on(squares[:3]) == [0, 1, 4]
    nested = add_all([inc(1), 5, inc(2)], {"x": square(3), "y": 1})
    assert wait_on(nested) == 2 + 5 + 3 + 9 + 1
    assert wait_on({"a": [inc(1), (inc(2), 7)], "b": 3}) == {"a": [2, (3, 7)], "b": 3}
    q, r = divmod_task(inc(6), 2)
    assert wait_on(q, r) == [3, 1]
    # (constraints are enforced: tests/test_constraints.py)
    # nested: inner task calls go to the mesh from the worker
    assert wait_on(outer(3)) == [1, 2, 3]
    barrier()


@pytest.mark.timeout(90)
def test_inout_object_chain(connected):
    lst: list = []
    for i in range(5):
        append_to(lst, i)
    assert lst == []  # the program sees the new version only through wait_on
    lst = wait_on(lst)
    assert lst == [0, 1, 2, 3, 4]
    # a plain (IN) use of an INOUT object reads its latest version
    lst2: list = [10]
    append_to(lst2, 11)
    assert wait_on(total(lst2)) == 21


@pytest.mark.timeout(90)
def test_file_in_out_round_trip(connected, tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("hello mesh")
    n = upper_file(str(src), str(dst))
    assert wait_on(n) == 10
    assert wait_on_file(str(dst)) == str(dst)
    assert dst.read_text() == "HELLO MESH"
    log = tmp_path / "log.txt"
    log.write_text("start\n")
    for i in range(3):
        append_line(str(log), f"line {i}")
    wait_on_file(str(log))
    assert log.read_text() == "start\nline 0\nline 1\nline 2\n"
    with pytest.raises(FileNotFoundError):
        upper_file(str(tmp_path / "missing.txt"), str(dst))


@pytest.mark.timeout(90)
def test_retry_then_original_exception_with_remote_traceback(connected):
    fut = fail_always("k")
    with pytest.raises(KeyError) as info:
        wait_on(fut)
    assert "Traceback on agent" in str(info.value.__cause__)
    assert "fail_always" in str(info.value.__cause__)
    graph = rt_mod.current().graph
    assert graph.counters["retried"] == 1 and graph.counters["failed"] == 1
    with pytest.raises(TaskFailed) as binfo:  # RETRY used up acts as FAIL
        barrier()
    assert isinstance(binfo.value.__cause__, KeyError)


@pytest.mark.timeout(90)
def test_cancel_successors_and_ignore(connected):
    bad = fail_cancel(1)
    child = inc(bad)
    grandchild = inc(child)
    other = inc(41)
    with pytest.raises(ValueError, match="bad 1"):
        wait_on(bad)
    for f in (child, grandchild):
        with pytest.raises(TaskCancelled, match="cancelled"):
            wait_on(f)
    assert wait_on(other) == 42
    ignored = fail_ignore(2)
    assert wait_on(is_none(ignored)) is True  # successors run with None
    with pytest.raises(ValueError, match="ignored 2"):
        wait_on(ignored)
    with TaskGroup("group") as g:
        a = inc(1)
    assert g.name == "group" and a.done()
    with pytest.raises(TaskFailed, match="bad") as ginfo, TaskGroup("bad"):
        fail_ignore(3)
    assert isinstance(ginfo.value.__cause__, ValueError)
    barrier()  # the graph did not fail


@pytest.mark.timeout(90)
def test_fail_makes_barrier_raise_and_cancels_the_rest(connected):
    bad = fail_graph(1)
    after = inc(bad)
    with pytest.raises(TaskFailed, match="fatal 1") as info:
        barrier()
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(TaskCancelled):
        wait_on(after)
    with pytest.raises(TaskCancelled):  # the graph stays failed
        wait_on(inc(1))


@pytest.mark.timeout(90)
def test_time_out_cancels_the_attempt_where_it_runs(connected, agents):
    fut = slow(30.0)
    with pytest.raises(api.TaskTimedOut):
        wait_on(fut)
    assert wait_on(inc(1)) == 2

    def running(a) -> int:
        with mesh.client.client.Client(a.comm) as c:
            return c.query("status")["running"]

    def crashes(a) -> int:
        with mesh.client.client.Client(a.comm) as c:
            return c.query("status")["worker_crashes"]

    # stopped where it ran, from within (mesh.program.timeout): no slot stays busy for
    # 30 s, and its worker lives on
    wait_for(lambda: all(running(a) == 0 for a in agents.agents), 15, "the attempt to be stopped")
    assert sum(crashes(a) for a in agents.agents) == 0
    assert rt_mod.current().stale_results == 0
    with pytest.raises(api.TaskTimedOut):  # and the task stays timed out
        wait_on(fut)


@task(returns=1, on_failure="RETRY")
def fails_on(agent):
    here = os.environ.get("MESH_AGENT_NAME")
    if here == agent:
        raise RuntimeError(f"{here} cannot do this")
    return here


@pytest.mark.timeout(90)
def test_a_retry_runs_on_another_agent(connected):
    # the first attempt runs where the program is connected (api0, free slots) and
    # fails; retried there it would fail every time
    assert wait_on(fails_on("api0")) == "api1"


@pytest.mark.timeout(90)
def test_tasks_called_from_several_threads(connected):
    results: dict[int, int] = {}

    def chain(k: int) -> None:
        f = inc(k)
        for _ in range(19):
            f = inc(f)
        results[k] = wait_on(f)

    threads = [threading.Thread(target=chain, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {k * 100: k * 100 + 20 for k in range(4)}
    barrier()


@pytest.mark.timeout(120)
def test_thousand_tiny_tasks(connected, capsys):
    t0 = time.perf_counter()
    futures = [inc(i) for i in range(1000)]
    values = wait_on(futures)
    elapsed = time.perf_counter() - t0
    assert values == [i + 1 for i in range(1000)]
    assert isinstance(futures[0], TaskFuture)
    barrier()
    graph = rt_mod.current().graph
    assert graph.counters["done"] >= 1000
    with capsys.disabled():
        print(f"\n1000 tiny tasks in {elapsed:.2f} s: {1000 / elapsed:.0f} tasks/s")
    del futures, values
    runtime = rt_mod.current()
    wait_for(lambda: graph.task_count < 50 and len(runtime._values) < 50, 10,
             "the runtime to release finished tasks and their values")


@pytest.mark.timeout(120)
def test_recursive_nested_tasks_across_a_chain_of_four_one_slot_agents(agents):
    """COMPSs' nested test: a recursive computation over a chain of 4 agents with one
    slot each. Without slot lending the first blocked fib() would hold the only slot
    of its agent and the mesh would deadlock."""
    chain = [agents.start("fib0", cpus=1)]
    for i in range(1, 4):
        chain.append(agents.start(f"fib{i}", "--peer", chain[-1].comm, cpus=1))
    with mesh.connect(chain[0].comm) as client:
        wait_for(lambda: sum(p["state"] == "alive" for p in client.query("peers")) == 3, 15,
                 "the chain to know each other")
        assert wait_on(fib(7)) == 13
        body = client.query("status")
    statuses = [body]
    for a in chain[1:]:
        with Client(a.comm) as other:
            statuses.append(other.query("status"))
    ran = {s["name"]: s["done"] for s in statuses}
    print("calls done per agent:", ran)
    assert sum(ran.values()) >= 41  # fib(7) makes 41 calls; delegated ones count on both
    assert body["forwarded"] > 0  # the graph spread beyond the first agent
