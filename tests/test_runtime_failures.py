"""Internal errors in the program-side runtime end in an error for whoever waits, never
in a hang (mesh.program.events: ``_event_failed``, ``_break``). Failures are injected
into a runtime connected to a real agent."""

from __future__ import annotations

import threading

import pytest

import mesh
from mesh.program import runtime as rt_mod
from mesh.program.api import GraphBroken, TaskFailed, TaskGroup, barrier, task, wait_on

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
