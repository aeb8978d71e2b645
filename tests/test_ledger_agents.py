"""The call ledger with real agents: a delegation chain whose middle agent dies, and a
graceful leave that hands queued calls back."""

from __future__ import annotations

import re
import signal

import pytest

import mesh
from mesh.client.client import Client
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


def status(agent) -> dict:
    with Client(agent.comm) as c:
        return c.query("status")


def sees(agent, name: str, cpus: int | None = None) -> bool:
    with Client(agent.comm) as c:
        for p in c.query("peers"):
            if p["name"] == name and p["state"] == "alive":
                return cpus is None or p.get("cpus") == cpus
    return False


@pytest.mark.chaos
def test_the_far_end_of_a_chain_answers_once_when_the_middle_agent_dies(agents):
    a = agents.start("a", cpus=0)  # origin: no slots, delegates everything
    b = agents.start("b", "--peer", a.comm, cpus=1)
    c = agents.start("c", "--peer", a.comm, cpus=0)
    for x, y in ((a, "b"), (a, "c"), (b, "c"), (c, "b")):
        wait_for(lambda x=x, y=y: sees(x, y), 10, f"{x.name} to see {y}")
    with mesh.connect(b.comm) as on_b, mesh.connect(a.comm) as on_a:
        on_b.call("mesh.demo_tasks:where", (0, 60.0))  # keeps b's only slot busy
        wait_for(lambda: status(b)["running"] == 1, 10, "b's slot to be busy")
        fut = on_a.call("mesh.demo_tasks:where", (5, 3.0))
        wait_for(lambda: status(b)["queued"] == 1, 10, "a to hand the call to b, which queues it")
        # c gets a slot: b's next heartbeat from c makes b pass the call on: a -> b -> c
        assert run_cli("resources", "add", "--agent", c.comm, "--cpus", "1").returncode == 0
        wait_for(lambda: status(c)["running"] == 1, 10, "the call to reach c through b")
        b.stop(signal.SIGKILL)
        result = fut.result(30)
        assert result["square"] == 25 and result["agent"] == "c"
        assert on_a.late_results == 0
    # c ran it once: it kept it for a (a's new request joined it, or c answered a directly)
    st = status(c)
    assert st["done"] == 1 and st["ledger"]["joined"] + st["ledger"]["redirected"] >= 1, st
    assert status(a)["done"] == 1


def test_a_leaving_agent_hands_its_queued_calls_back(agents):
    a = agents.start("a", cpus=1)
    b = agents.start("b", "--peer", a.comm, cpus=1)
    wait_for(lambda: sees(a, "b", cpus=1), 10, "a to see b")
    with mesh.connect(a.comm) as client:
        futs = [client.call("mesh.demo_tasks:where", (i, 1.5)) for i in range(4)]
        # a runs one, b gets one to run and one (or, with a heartbeat crossing the
        # calls, two) to queue (prefetch); the rest wait at a
        wait_for(lambda: status(b)["queued"] >= 1, 10, "b to queue a call",
                 explain=lambda: f"a: {status(a)}\n--- a's log\n{a.log()[-6000:]}\n"
                                 f"--- b's log\n{b.log()[-6000:]}")
        b.proc.send_signal(signal.SIGTERM)
        results = [f.result(60) for f in futs]
        assert [r["square"] for r in results] == [i * i for i in range(4)]
        assert client.late_results == 0
    assert b.proc.wait(30) == 0
    assert re.search(r"leaving: handed [12] queued call\(s\) back", b.log())
    st = status(a)
    assert st["done"] == 4 and st["failed"] == 0 and st["ledger"]["reassigned"] >= 1, st
    assert {r["agent"] for r in results} == {"a", "b"}
