"""Stand-in workers are capped (issue 17): a deep recursive graph of nested tasks on a
one-slot agent completes without starting a worker per blocked call (calls that find no
idle worker wait, newest first), and a recursion deeper than the cap still completes:
past the cap, a worker starts only when every worker waits for nested calls."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

import mesh
from mesh import task, wait_on
from mesh.client.client import Client
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


@task(returns=1)
def fib(n):
    if n < 2:
        return n
    a, b = fib(n - 1), fib(n - 2)  # nested: the caller lends its slot while it waits
    return wait_on(a) + wait_on(b)


def run_counting_workers(agent, n: int, cap: int | None, deadline: float = 90) -> tuple[int, list, dict]:
    """fib(n) on ``agent``; the number of its workers, sampled through its status while
    the graph runs (failing at once if it passes ``cap``), and its last status."""
    got: dict = {}

    def program():
        try:
            with mesh.connect(agent.comm):
                got["value"] = wait_on(fib(n))
        except Exception as exc:  # (reported below)
            got["error"] = exc

    runner = threading.Thread(target=program, daemon=True)
    runner.start()
    samples = []
    t_end = time.monotonic() + deadline
    with Client(agent.comm) as watcher:
        while runner.is_alive():
            assert time.monotonic() < t_end, f"fib({n}) did not complete (workers: {samples[-5:]})"
            samples.append(watcher.query("status")["workers"])
            assert cap is None or samples[-1] <= cap, f"{samples[-1]} workers, cap {cap}"
            time.sleep(0.05)
        status = watcher.query("status")
    assert "error" not in got, got.get("error")
    return got["value"], samples, status


def test_a_deep_recursion_on_one_slot_stays_under_the_cap(agents):
    """fib(10) makes 177 calls, 88 of which block on their two nested calls. Started in
    the order they arrive, they took ~70 workers at once; depth first they take ~12."""
    a = agents.start("fib-cap", cpus=1, env={"MESH_MAX_WORKERS": "20"})
    value, samples, status = run_counting_workers(a, 10, cap=20)
    print(f"fib(10): workers sampled {len(samples)} times, at most {max(samples)}; "
          f"pool {status['worker_pool']}")
    assert value == 55 and status["done"] >= 177
    pool = status["worker_pool"]
    assert pool["cap"] == 20 and pool["peak"] <= 20 and pool["over_cap"] == 0, pool


def test_a_recursion_deeper_than_the_cap_still_completes(agents):
    """A cap of 3 for fib(8), whose recursion is 8 deep: waiting alone would deadlock (all
    three workers blocked on calls that wait for a worker), so the pool starts workers
    past the cap, but only then, and about as many as the recursion needs."""
    a = agents.start("fib-deep", cpus=1, env={"MESH_MAX_WORKERS": "3"})
    value, samples, status = run_counting_workers(a, 8, cap=None)
    pool = status["worker_pool"]
    print(f"fib(8) with a cap of 3: at most {max(samples)} workers sampled; pool {pool}")
    assert value == 21 and pool["over_cap"] > 0 and pool["waiting"] == 0
    assert pool["peak"] < 30  # (started in arrival order, fib(8) took 30 workers at once)
    assert "past the cap of 3" in a.log()


@task(returns=1)
def inner(i):
    time.sleep(1.0)
    return i


@task(returns=1)
def outer(i):
    """Waits for a nested call (its worker lends its slot); says which agent ran it."""
    return os.environ.get("MESH_AGENT_ID"), wait_on(inner(i))


def test_calls_waiting_behind_a_blocked_call_stay_placeable_on_peers(agents):
    """A one-slot agent with a cap of 2 workers gets 8 calls that each wait for a nested
    one. Once the first blocks, its slot goes to the call it waits for; the others wait in
    the agent's backlog, so a peer that comes then takes a share of them (they went to the
    pool's waiting list instead, where no peer would ever see them: all ran here)."""
    a = agents.start("burst-a", cpus=1, env={"MESH_MAX_WORKERS": "2"})
    with mesh.connect(a.comm) as client:
        futures = [outer(i) for i in range(8)]
        wait_for(lambda: client.query("status")["done"] >= 1, 30, "the first nested call to end")
        b = agents.start("burst-b", "--peer", a.comm, cpus=2)
        ran = [wait_on(f) for f in futures]
        status = client.query("status")
    assert [value for _, value in ran] == list(range(8))
    where = Counter(agent_id for agent_id, _ in ran)
    print(f"outer calls per agent: a {where[a.state['id']]}, b {where[b.state['id']]}; "
          f"a's pool {status['worker_pool']}")
    assert where[b.state["id"]] >= 1 and where[a.state["id"]] + where[b.state["id"]] == 8
