"""An agent never dies of its own accord (issue 17): a worker that writes garbage, a system
that will not start a worker (out of descriptors), a core that raises, or the same fault
in every turn of the loop cost calls, counted in ``mesh status`` under ``errors``, never
the agent (which leaves gracefully when a fault repeats in a tight loop)."""

from __future__ import annotations

import resource
import subprocess
import threading
import time

import cbor2
import psutil
import pytest

import mesh
from mesh.agent.agent import Agent, AgentConfig
from mesh.client.client import Client
from mesh.errors import RemoteError
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]

GARBAGE = {  # what a broken worker might write on its channel to the agent
    "a short notice": cbor2.dumps(["progress"]),
    "a notice of another shape": cbor2.dumps(["lend", {"x": 1}, True]),
    "not a list": cbor2.dumps({"a": 1}),
    "a result of wrong types": cbor2.dumps([1, 2, 3, 4, 5, 6, 7, 8]),
    "not CBOR": b"\x1c\xff\x00",
}


def garble(kind: str) -> None:
    """Runs in a worker: write ``kind`` of garbage to the agent, then wait to be stopped."""
    from mesh.program import slot

    with slot._lock:
        slot.channel.send(GARBAGE[kind])
    time.sleep(60)


def test_a_worker_that_writes_garbage_costs_its_call_and_not_the_agent(agents):
    a = agents.start("garbled")
    with mesh.connect(a.comm) as client:
        for n, kind in enumerate(GARBAGE, 1):
            exc = client.call("tests.test_agent_faults:garble", (kind,)).exception(30)
            assert isinstance(exc, RemoteError) and exc.type_name == "WorkerDied", (kind, exc)
            assert "malformed frame" in exc.message, (kind, exc.message)
            assert client.call("operator:add", (n, 1)).result(30) == n + 1  # the next call runs
            assert a.alive(), a.log()
        status = client.query("status")
    assert status["worker_crashes"] == len(GARBAGE) and status["workers"] == 1


def test_out_of_descriptors_fails_the_calls_that_need_a_worker_and_the_agent_carries_on(agents):
    """RLIMIT_NOFILE lowered under the running agent (prlimit): the worker it must replace
    cannot start, the next call fails with WorkerUnavailable naming the cause, and once
    descriptors are back a worker starts again."""
    a = agents.start("nofd")
    agent = psutil.Process(a.proc.pid)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with mesh.connect(a.comm) as client:  # (connected before: the agent accepts nothing new)
        assert client.call("operator:add", (1, 2)).result(30) == 3
        [worker] = agent.children()
        limit = agent.num_fds() - 2  # no new descriptor, even after the worker's is closed
        subprocess.run(["prlimit", f"--pid={agent.pid}", f"--nofile={limit}:{hard}"], check=True)
        worker.kill()
        wait_for(lambda: client.query("status")["worker_crashes"] == 1, 15, "the worker's death")
        exc = client.call("operator:add", (1, 2)).exception(30)
        assert isinstance(exc, RemoteError) and exc.type_name == "WorkerUnavailable", exc
        assert "out of file descriptors" in exc.message, exc.message
        assert a.alive(), a.log()
        subprocess.run(["prlimit", f"--pid={agent.pid}", f"--nofile={hard}:{hard}"], check=True)
        assert client.call("operator:add", (2, 2)).result(30) == 4
        status = client.query("status")
    assert status["worker_pool"]["spawn_failures"] >= 2 and status["workers"] == 1
    assert "cannot start a worker process" in a.log()


@pytest.fixture
def inprocess(mesh_key):
    """An agent in this process (its cores can be patched), its loop in a thread."""
    agent = Agent(AgentConfig(name="inproc", comm_port=0, mdns=False, cpus=1, key=mesh_key,
                              leave_grace=1.0))
    agent.start()
    loop = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    loop.start()
    yield agent, loop
    agent.request_leave()
    loop.join(15)


def test_a_core_that_raises_costs_the_message_that_made_it_raise(inprocess, mesh_key):
    agent, loop = inprocess
    submit = agent.dispatcher.submit

    def broken(msg, *args):
        if msg.function == "operator:truediv":
            raise IndexError("the backlog's invariant broke")
        return submit(msg, *args)

    agent.dispatcher.submit = broken
    with Client(agent.address, key=mesh_key) as client:
        exc = client.call("operator:truediv", (1, 2)).exception(30)
        assert isinstance(exc, RemoteError) and exc.type_name == "AgentFault", exc
        assert "IndexError: the backlog's invariant broke" in exc.message
        assert client.call("operator:add", (1, 2)).result(30) == 3
        agent.tree.tick = lambda now: [][1]  # a timer that raises: the others go on
        wait_for(lambda: client.query("status")["errors"].get("tick:tree", 0) >= 2, 15,
                 "the tree's tick to fail (twice)")
        assert client.call("operator:add", (2, 2)).result(30) == 4
        errors = client.query("status")["errors"]
    assert errors["input:Call"] == 1 and loop.is_alive()


def test_the_same_fault_in_every_turn_makes_the_agent_leave_instead_of_spinning(inprocess):
    agent, loop = inprocess
    agent.outbox.flush = lambda: {}["broken"]  # fails in every turn of the loop
    t0 = time.monotonic()
    loop.join(30)
    assert not loop.is_alive(), "the agent spins on a fault that repeats"
    print(f"left after {time.monotonic() - t0:.1f} s: {agent.faults.storm}")
    assert agent.faults.storm is not None and "KeyError" in agent.faults.storm
    assert agent.faults.counts["loop"] >= 100 and agent.stopped
