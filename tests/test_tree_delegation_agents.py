"""Delegation along the latency tree with real agents: beyond ``MESH_TREE_DELEGATION_MIN``
live members an agent delegates only to its tree neighbours (parent and children), and
a graph still spreads over the mesh and completes (calls pass from neighbour to
neighbour)."""

from __future__ import annotations

import os
import time

import pytest

import mesh
from mesh.client.client import Client
from mesh.program.api import task, wait_on
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]

TREE = {"MESH_TREE_DELEGATION_MIN": "2"}  # a 5-agent mesh counts as big here


@task(returns=1)
def work(i: int):
    time.sleep(0.05)  # (the work)
    return i, os.environ.get("MESH_AGENT_NAME")


def status(agent) -> dict:
    with Client(agent.comm) as c:
        return c.query("status")


def test_a_graph_spreads_over_tree_neighbours_and_completes(agents):
    a0 = agents.start("t0", cpus=0, env=TREE)
    others = [agents.start(f"t{i}", "--peer", a0.comm, cpus=1, env=TREE) for i in range(1, 5)]
    everyone = [a0, *others]
    wait_for(lambda: all(status(a)["peers_alive"] == 4 for a in everyone), 20, "a full mesh")
    wait_for(lambda: all("tree neighbour" in status(a)["delegates_to"] for a in everyone), 20,
             "every agent to delegate along the tree")
    with mesh.connect(a0.comm):
        results = wait_on([work(i) for i in range(60)])
    assert [i for i, _ in results] == list(range(60))
    ran = {name for _, name in results}
    assert len(ran) >= 2, ran  # spread, not all on one neighbour
    assert sum(status(a)["done"] for a in others) >= 60
