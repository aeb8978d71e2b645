"""Task constraints (``@constraint(cpus=..., memory=..., labels=[...])``): the
dispatcher places a call only on an agent that offers what it needs (pure tests), and
real agents started with ``--label``/``--memory``/``--cpus`` run each task where it fits."""

from __future__ import annotations

import os

import pytest

import mesh
from mesh.cli import _size
from mesh.client.client import Client
from mesh.errors import EncodeError
from mesh.program.api import barrier, constraint, task, wait_on
from mesh.program.runtime import needs_of
from mesh.sched.dispatch import Deliver, Dispatcher, Forward, RunLocal, SendTo
from mesh.wire.messages import MAX_LIST, Call, Needs, Reclaim, Result
from tests.conftest import run_cli, wait_for

ME, GPU, BIG = "a" * 32, "b" * 32, "c" * 32


def mesh_view() -> Dispatcher:
    d = Dispatcher("me", 2, ME, prefetch=1, memory=1 << 30, labels=frozenset({"arm"}))
    d.peer_load(GPU, "gpu-box", 1, 1, 0.001, memory=8 << 30, labels=("gpu", "x86"))
    d.peer_load(BIG, "big", 4, 4, 0.001, memory=64 << 30, labels=("x86",))
    return d


@pytest.mark.timeout(10)
def test_a_call_runs_only_where_its_labels_memory_and_cores_are():
    d = mesh_view()
    [act] = d.submit(Call("c1", "", b"p", needs=Needs(labels=["gpu"])), b"client")
    assert isinstance(act, Forward) and act.peer_id == GPU
    [act] = d.submit(Call("c2", "", b"p", needs=Needs(memory=32 << 30)), b"client")
    assert isinstance(act, Forward) and act.peer_id == BIG
    [act] = d.submit(Call("c3", "", b"p", needs=Needs(cpus=3)), b"client")
    assert isinstance(act, Forward) and act.peer_id == BIG  # 3 slots: only big has them
    [act] = d.submit(Call("c4", "", b"p", needs=Needs(labels=["arm"], cpus=2)), b"client")
    assert isinstance(act, RunLocal) and d.free == 0  # it takes both of our slots


@pytest.mark.timeout(10)
def test_a_call_that_does_not_fit_here_queues_where_it_fits_or_waits_without_blocking():
    d = mesh_view()
    d.peers.slots[GPU].free = 0  # busy: the gpu call still goes there, to wait in its queue
    [act] = d.submit(Call("g1", "", b"p", needs=Needs(labels=["gpu"])), b"client")
    assert isinstance(act, Forward) and act.peer_id == GPU
    # a call nobody known can run waits here, and plain calls behind it still run
    assert d.submit(Call("t1", "", b"p", needs=Needs(labels=["tpu"])), b"client") == []
    [act] = d.submit(Call("p1", "", b"p"), b"client")
    assert isinstance(act, RunLocal) and list(d.backlog) == ["t1"]
    # an agent with a tpu joins: the waiting call goes there
    acts = d.peer_load("d" * 32, "tpu-box", 1, 1, 0.001, labels=("tpu",))
    assert [a.peer_id for a in acts if isinstance(a, Forward)] == ["d" * 32]


@pytest.mark.timeout(10)
def test_a_call_nobody_can_run_fails_after_a_grace_period_with_a_clear_error():
    d = mesh_view()
    assert d.submit(Call("t1", "", b"p", needs=Needs(labels=["tpu"])), b"client", now=100.0) == []
    assert d.expire_unfit(110.0) == []  # an agent with a tpu may still join
    [act] = d.expire_unfit(100.0 + d.unfit_grace + 1)
    assert isinstance(act, Deliver) and not act.result.ok
    assert act.result.error_type == "NoSuitableAgent" and "tpu" in act.result.error
    assert not d.pending


@pytest.mark.timeout(10)
def test_a_multi_core_call_gives_back_all_its_slots():
    d = Dispatcher("me", 4, ME)
    [act] = d.submit(Call("m1", "", b"p", needs=Needs(cpus=3)), b"client")
    assert isinstance(act, RunLocal) and d.free == 1
    assert d.submit(Call("m2", "", b"p", needs=Needs(cpus=2)), b"client2") == []
    assert d.free == 1 and list(d.backlog) == ["m2"]  # 2 slots are not free, and no peer
    from mesh.wire.messages import Result

    acts = d.local_done(Result("m1", True, b"", "me"))
    assert any(isinstance(a, RunLocal) and a.call.call_id == "m2" for a in acts) and d.free == 2


def test_sizes_and_needs_from_constraints():
    assert _size("512M", "--memory") == 512 << 20 and _size("2G", "--memory") == 2 << 30
    assert _size("1.5GB", "--memory") == 1_500_000_000 and _size("1000", "--memory") == 1000
    for bad in ("", "-1G", "lots", "2X"):
        with pytest.raises(Exception, match="expected a size"):
            _size(bad, "--memory")

    @constraint(cpus=2, memory=1 << 20, labels=["gpu"])
    def f():
        pass

    @constraint()
    def g():
        pass

    assert needs_of(f) == Needs(2, 1 << 20, ["gpu"]) and needs_of(g) is None


# ------------------------------------------------------------------ real agents


@constraint(labels=["gpu"])
@task(returns=1)
def on_gpu(i: int):
    return os.environ.get("MESH_AGENT_NAME")


@constraint(memory=4 << 30)
@task(returns=1)
def needs_memory(i: int):
    return os.environ.get("MESH_AGENT_NAME")


@constraint(cpus=2)
@task(returns=1)
def two_cores(i: int):
    return os.environ.get("MESH_AGENT_NAME")


@task(returns=1)
def anywhere(i: int):
    return os.environ.get("MESH_AGENT_NAME")


@constraint(labels=[f"l{i}" for i in range(MAX_LIST + 1)])
@task(returns=1)
def too_many_labels(i: int):
    return os.environ.get("MESH_AGENT_NAME")


def sees(agent, name: str) -> bool:
    with Client(agent.comm) as c:
        return any(p["name"] == name and p["state"] == "alive" for p in c.query("peers"))


@pytest.mark.agents
@pytest.mark.timeout(90)
def test_tasks_run_on_agents_that_offer_what_they_need(agents):
    small = agents.start("small", "--memory", "1G", cpus=1)
    gpu = agents.start("gpu", "--peer", small.comm, "--label", "gpu", "--memory", "1G", cpus=1)
    big = agents.start("big", "--peer", small.comm, "--memory", "16G", cpus=2)
    for x in (small, gpu, big):
        for y in (small, gpu, big):
            if x is not y:
                wait_for(lambda x=x, y=y: sees(x, y.name), 15, f"{x.name} to see {y.name}")
    with mesh.connect(small.comm):
        gpus = [on_gpu(i) for i in range(6)]
        mems = [needs_memory(i) for i in range(4)]
        wide = [two_cores(i) for i in range(3)]
        plain = [anywhere(i) for i in range(6)]
        assert set(wait_on(gpus)) == {"gpu"}
        assert set(wait_on(mems)) == {"big"}
        assert set(wait_on(wide)) == {"big"}
        assert len(wait_on(plain)) == 6
        barrier()
    out = run_cli("status", "--agent", gpu.comm, "--json")
    assert out.returncode == 0 and '"gpu"' in out.stdout
    out = run_cli("peers", "--agent", small.comm)  # what each peer offers, as heartbeats said
    assert out.returncode == 0 and "LABELS" in out.stdout
    assert any(line.startswith("gpu ") and line.rstrip().endswith("gpu") for line in out.stdout.splitlines())
    with Client(small.comm) as c:
        big_view = next(p for p in c.query("peers") if p["name"] == "big")
    assert big_view["memory"] == 16 << 30 and big_view["labels"] == []


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_a_task_no_agent_can_run_fails_clearly(agents):
    a = agents.start("a", cpus=1, env={"MESH_UNFIT_GRACE": "1.5"})
    with mesh.connect(a.comm):
        fut = on_gpu(0)
        with pytest.raises(Exception, match="NoSuitableAgent: no agent in the mesh offers .*gpu"):
            wait_on(fut)
    with mesh.connect(a.comm):  # (that failure failed the graph: FAIL is the default policy)
        assert wait_on(anywhere(1)) == "a"  # and the agent carries on


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_a_task_whose_constraints_cannot_travel_fails_at_once_with_a_clear_error(agents):
    """More labels than a frame's list may hold (``MAX_LIST``): encode refuses the call
    before anything is sent (issue 17: the agent dropped it as undecodable and the
    caller waited), and the client keeps no future for it."""
    a = agents.start("a", cpus=1)
    with mesh.connect(a.comm) as client:
        with pytest.raises(EncodeError, match=rf"Needs\.labels: {MAX_LIST + 1} items"):
            wait_on(too_many_labels(0))
        assert client.requests.calls == {}
    with mesh.connect(a.comm):
        assert wait_on(anywhere(1)) == "a"


@pytest.mark.timeout(10)
def test_an_idle_agent_does_not_steal_back_a_call_it_cannot_run():
    """A (1 slot, no label) gave a plain call and two gpu calls to B (gpu), where they
    wait; A, idle, asks back only the call it can run (issue 16: it took back
    label-bound calls and forwarded them again)."""
    a = Dispatcher("a", cpus=1, node_id=ME, prefetch=1)
    a.peer_load(GPU, "gpu-box", 2, 2, 0.001, labels=("gpu",))
    needs = Needs(labels=["gpu"])
    acts = a.submit(Call("p", "", b"p"), b"client")  # runs here
    for call in (Call("q", "", b"p"), Call("g0", "", b"p", needs=needs),
                 Call("g1", "", b"p", needs=needs)):
        acts += a.submit(call, b"client")
    assert [x.peer_id for x in acts if isinstance(x, Forward)] == [GPU] * 3
    a.peer_load(GPU, "gpu-box", 2, 0, 0.001, queued=3, labels=("gpu",))  # all three wait there
    acts = a.local_done(Result("p", True, b"", "a"))  # idle now
    asked = [x.message.call_ids for x in acts if isinstance(x, SendTo)
             and isinstance(x.message, Reclaim)]
    assert asked == [["q"]]  # not g1 (the newest), nor g0
