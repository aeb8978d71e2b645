"""Internal errors in the program-side runtime end in an error for whoever waits, never
in a hang (mesh.program.runtime: ``_event_failed``, ``_break``). Failures are injected
into a runtime connected to a real agent."""

from __future__ import annotations

import threading

import pytest

import mesh
from mesh.program import runtime as rt_mod
from mesh.program.api import INOUT, GraphBroken, TaskFailed, TaskGroup, barrier, task, wait_on
from mesh.program.lineage import Lineage
from mesh.program.runtime import FATE_SWEEP
from mesh.sched.objects import Ref
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(60)]


@task(returns=1, on_failure="CANCEL_SUCCESSORS")
def inc(x):
    return x + 1


def within(seconds: float, fn):
    """Run ``fn`` in a thread; its value or exception, or an AssertionError if it hangs."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # (handed to the test's thread)
            out["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s: a hang"
    if "exc" in out:
        raise out["exc"]
    return out["value"]


@pytest.fixture
def runtime(agents):
    a = agents.start("rf0", cpus=2)
    with mesh.connect(a.comm):
        yield rt_mod.current()


def test_a_result_that_cannot_be_handled_fails_its_task_not_the_program(runtime, monkeypatch):
    done = runtime.graph.done
    injected = []

    def refuse_once(task_id, attempt, outcome, now):
        if task_id.startswith("inc-") and outcome.ok and not injected:
            injected.append(task_id)
            raise RuntimeError("injected")
        return done(task_id, attempt, outcome, now)

    monkeypatch.setattr(runtime.graph, "done", refuse_once)
    first = inc(1)
    with pytest.raises(TaskFailed, match="could not be handled: RuntimeError: injected"):
        within(10, lambda: wait_on(first))
    assert within(10, lambda: wait_on(inc(2))) == 3  # the program goes on
    within(10, barrier)


def test_an_action_that_fails_breaks_the_graph_and_every_waiter_hears_it(runtime, monkeypatch):
    """A Finished whose bookkeeping raises: the Resolved after it in the same list
    was lost with it, so the graph is broken; before, this was logged and wait_on on
    that task hung for ever."""
    terminal = runtime._terminal

    def raise_once(task_id, failed):
        monkeypatch.setattr(runtime, "_terminal", terminal)
        raise RuntimeError("injected")

    slow = inc(0)
    within(10, lambda: wait_on(slow))
    monkeypatch.setattr(runtime, "_terminal", raise_once)
    f = inc(10)
    with pytest.raises(GraphBroken, match="carrying out Finished: RuntimeError: injected"):
        within(10, lambda: wait_on(f))
    with pytest.raises(GraphBroken):
        within(10, barrier)
    with pytest.raises(GraphBroken):
        inc(3)  # later calls raise at once
    with pytest.raises(GraphBroken), TaskGroup("after"):
        pass


@task(b=INOUT, returns=0, on_failure="IGNORE")
def fail_bump(b):
    raise ValueError("no")


@task(returns=1, on_failure="CANCEL_SUCCESSORS")
def boom(x):
    raise ValueError(f"boom {x}")


def test_the_runtime_s_tables_shrink_when_their_tasks_are_done(runtime):
    """Many tasks, failed, cancelled and done: what the runtime keeps per task goes
    once the task is over and nobody can wait on it (before: a failed task's fate
    stayed for good once its outputs were released later)."""
    obj = [0]
    for _ in range(300):
        fail_bump(obj)  # each fails, ignored; the next one releases its version
    for i in range(100):
        inc(boom(i))  # fails, its successor is cancelled; both futures dropped at once
    within(30, barrier)
    futures = [inc(i) for i in range(200)]
    assert within(30, lambda fs=futures: wait_on(fs)) == [i + 1 for i in range(200)]
    del futures

    def sizes():
        with runtime.lock:
            tables = {name: getattr(runtime, name) for name in (
                "_fate", "_failed_on", "_last_exc", "_running", "_call_id", "_sent", "_waiters",
                "_groups")}
            tables.update(calls=runtime.calls.by_task, last_writer=runtime.calls.last_writer)
            return {name: len(table) for name, table in tables.items()}

    # (dropped futures reach the runtime's thread as events: wait for them); the fates
    # of tasks let go are swept in bulk, so up to FATE_SWEEP of them may remain
    wait_for(lambda: max(sizes().values()) <= FATE_SWEEP, 10, "the tables to shrink",
             explain=lambda: sizes())


def test_lineage_stays_bounded_however_many_outputs_are_lost_and_made_again():
    """Every producer's output lost and made again, 20 times the entries kept: the
    renamings go with their producer's entry (before, ``renamed`` never shrank)."""
    lin = Lineage(max_entries=10)
    for i in range(200):
        old = Ref(f"{i:032x}", "holder", 10)
        lin.record(f"t{i}", "ready", "call", ("f", (), {}, [], [], 1, None), [("v", old)])
        assert lin.recover(old.oid, ("wait", None)) == "started"
        lin.rerun_done(f"t{i}", [("v", Ref(f"{i + 1000:032x}", "other", 10))])
    assert len(lin.entries) == 10 and len(lin.made) == 10 and len(lin.renamed) == 10
