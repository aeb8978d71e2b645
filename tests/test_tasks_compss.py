"""Task graphs on real agents, mirroring the COMPSs agents' test suite: slot limits,
parallel slots, many tasks, several callers sharing one busy agent."""

from __future__ import annotations

import os
import threading
import time

import pytest

import mesh
from mesh import barrier, task, wait_on
from mesh.client.client import Client
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


@task(returns=1)
def span(i, seconds):
    """Busy for ``seconds``; returns (agent, start, end) in the host's clock."""
    start = time.time()
    while time.time() - start < seconds:
        pass
    return os.environ.get("MESH_AGENT_NAME"), start, time.time()


@task(returns=1)
def inc(x):
    return x + 1


def overlaps(spans) -> int:
    """How many pairs of (start, end) intervals overlap."""
    spans = sorted((s, e) for _, s, e in spans)
    return sum(1 for i in range(len(spans)) for j in range(i + 1, len(spans)) if spans[j][0] < spans[i][1])


def test_one_slot_agent_never_runs_two_tasks_at_once(agents):
    a = agents.start("one", cpus=1)
    with mesh.connect(a.comm):
        spans = wait_on([span(i, 0.15) for i in range(6)])
    assert {name for name, _, _ in spans} == {"one"}
    assert overlaps(spans) == 0, spans


def test_two_slot_agent_runs_two_tasks_in_parallel(agents):
    a = agents.start("two", cpus=2)
    with mesh.connect(a.comm):
        spans = wait_on([span(i, 0.5) for i in range(2)])
    assert overlaps(spans) == 1, spans


def test_ten_thousand_tasks_on_one_agent(agents):
    a = agents.start("many", cpus=2)
    with mesh.connect(a.comm):
        t0 = time.monotonic()
        futures = [inc(i) for i in range(10_000)]
        barrier()
        values = wait_on(futures)
        took = time.monotonic() - t0
    assert values == [i + 1 for i in range(10_000)]
    print(f"10,000 tasks in {took:.2f} s ({10_000 / took:.0f} tasks/s)")


def test_four_callers_on_different_agents_share_one_busy_agent(agents):
    worker = agents.start("shared", cpus=2)
    fronts = [agents.start(f"front{i}", "--peer", worker.comm, cpus=0) for i in range(4)]
    for f in fronts:
        with Client(f.comm) as c:
            wait_for(lambda c=c: any(p["name"] == "shared" and p["state"] == "alive"
                                     for p in c.query("peers")), 10, "the front to see the worker")
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def caller(i: int, address: str) -> None:
        try:
            with Client(address) as c:
                futs = [c.call("mesh.demo_tasks:where", (i * 100 + k, 0.05)) for k in range(10)]
                results[i] = [f.result(60) for f in futs]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i, f.comm)) for i, f in enumerate(fronts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    for i in range(4):
        assert [r["square"] for r in results[i]] == [(i * 100 + k) ** 2 for k in range(10)]
        assert {r["agent"] for r in results[i]} == {"shared"}
