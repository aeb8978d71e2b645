"""Work stealing with real agents on 127.0.0.1: an agent that runs out of work takes
back a call it had queued at a busy peer (``Reclaim`` -> ``Handback``) and runs it
itself, while the peer is still busy; each call is answered once."""

from __future__ import annotations

import pytest

import mesh
from mesh.client.client import Client
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


def status(agent) -> dict:
    with Client(agent.comm) as c:
        return c.query("status")


def sees(agent, name: str, cpus: int) -> bool:
    with Client(agent.comm) as c:
        return any(p["name"] == name and p["state"] == "alive" and p.get("cpus") == cpus
                   for p in c.query("peers"))


def test_an_idle_agent_takes_back_a_call_queued_at_a_busy_peer(agents):
    a = agents.start("a", cpus=1)
    b = agents.start("b", "--peer", a.comm, cpus=1)
    wait_for(lambda: sees(a, "b", 1) and sees(b, "a", 1), 15, "a and b to see each other")
    with mesh.connect(a.comm) as client:
        # c0 runs at a, c1 keeps b's slot busy, c2 waits at b (prefetch), c3 waits at a
        seconds = [1.0, 8.0, 0.3, 0.3]
        futs = [client.call("mesh.demo_tasks:where", (i, s)) for i, s in enumerate(seconds)]
        wait_for(lambda: status(b)["queued"] >= 1, 10, "b to queue a call of a's")
        # a runs c0, then c3, then is idle while c2 still waits behind c1 at b: a asks for
        # it back and runs it, long before b's slot frees
        stolen = futs[2].result(30)
        assert stolen["agent"] == "a" and stolen["square"] == 4
        assert not futs[1].done()  # b is still busy with c1
        results = [f.result(60) for f in futs]
        assert [r["square"] for r in results] == [0, 1, 4, 9]
        assert [r["agent"] for r in results] == ["a", "b", "a", "a"]
        assert client.late_results == 0
    sa, sb = status(a), status(b)
    assert sa["done"] == 4 and sa["failed"] == 0, sa
    assert sa["ledger"]["reassigned"] == 0, sa  # taken back, not lost
    # b ran c1 only and gave back what waited (c2; c3 too when a's news of b was stale)
    assert sb["ledger"]["handed_back"] >= 1 and sb["done"] == 1, (sb["ledger"], sb["done"])
    assert sa["dropped"].get("unexpected", 0) == 0 and sb["dropped"].get("unexpected", 0) == 0
    assert sa["dropped"]["duplicate_results"] == 0
