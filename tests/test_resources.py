"""COMPSs-style live resource changes with real agents: add and reduce slots, link a
neighbour, declare a member lost."""

from __future__ import annotations

import json

import pytest

import mesh
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


def status(agent) -> dict:
    res = run_cli("status", "--agent", agent.comm, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_add_slots_then_reduce_lazily(agents):
    a = agents.start("res", cpus=1)
    res = run_cli("resources", "add", "--agent", a.comm, "--cpus", "2")
    assert res.returncode == 0 and "3 slot(s)" in res.stdout, res.stderr
    with mesh.connect(a.comm) as client:
        futures = [client.call("mesh.demo_tasks:where", (i, 3.0)) for i in range(3)]
        wait_for(lambda: status(a)["running"] == 3, 15, "three calls at once on the grown agent")
        res = run_cli("resources", "reduce", "--agent", a.comm, "--cpus", "2")
        assert res.returncode == 0, res.stderr
        body = status(a)
        assert body["cpus"]["total"] == 1 and body["running"] == 3  # running calls finish
        assert [f.result(30)["square"] for f in futures] == [0, 1, 4]
    wait_for(lambda: status(a)["workers"] == 1, 10, "the extra workers to retire")
    assert run_cli("resources", "reduce", "--agent", a.comm, "--cpus", "5").returncode == 1
    assert run_cli("resources", "add", "--agent", a.comm).returncode == 2


def test_add_a_peer_links_two_agents(agents):
    a = agents.start("la")
    b = agents.start("lb")
    res = run_cli("resources", "add", "--agent", a.comm, "--peer", b.comm)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: status(a)["peers_alive"] == 1 and status(b)["peers_alive"] == 1, 10,
             "the agents to know each other")


def test_lost_drops_a_peer_at_once_and_reassigns_its_calls(agents):
    front = agents.start("front", cpus=0)
    busy = agents.start("busy", "--peer", front.comm, cpus=1)
    wait_for(lambda: status(front)["peers_alive"] == 1, 10, "front to know busy")
    with mesh.connect(front.comm) as client:
        fut = client.call("mesh.demo_tasks:where", (7, 6.0))  # still running at the verdict
        wait_for(lambda: status(busy)["running"] == 1, 10, "the call to run on busy")
        spare = agents.start("spare", "--peer", front.comm, cpus=1)
        wait_for(lambda: status(front)["peers_alive"] == 2, 10, "front to know spare")
        res = run_cli("resources", "lost", "--agent", front.comm, "busy")
        assert res.returncode == 0, res.stderr
        # the call is placed again at once, on spare
        wait_for(lambda: "peer busy lost: re-placed 1 call(s)" in front.log(), 10, "front to re-place it")
        assert "actions: cancel busy, to spare" in front.log()
        result = fut.result(30)
        assert result["square"] == 49 and result["agent"] in ("busy", "spare")
    # busy was alive all along: it refutes and comes back; the copy that did not finish
    # first is stopped (front cancels it) or its late result dropped: one result
    wait_for(lambda: status(front)["peers_alive"] == 2, 15, "busy to refute and come back")
    wait_for(lambda: "nobody wants its result" in spare.log() + busy.log()
             or status(front)["dropped"]["duplicate_results"] == 1, 15, "the second copy to be stopped")
    assert status(front)["done"] == 1
    assert run_cli("resources", "lost", "--agent", front.comm, "nobody").returncode == 1
    assert spare.alive()
