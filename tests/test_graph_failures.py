"""Tests for mesh.sched.graph: failure policies, retries, time-outs, late or duplicate
reports and misuse (which raises and changes nothing).

Builders and ``Runner`` (which plays the shell): ``tests/graph_helpers.py``.
"""

from __future__ import annotations

import pytest

from mesh.errors import LocalProtocolError
from mesh.sched.deadlines import Deadlines
from mesh.sched.graph import (
    FILE_IN,
    IN,
    INOUT,
    OUT,
    Cancelled,
    DataState,
    Finished,
    GraphFailed,
    Kill,
    OnFailure,
    Outcome,
    Param,
    Ready,
    Resolved,
    TaskGraph,
    TaskSpec,
    TaskState,
    return_id,
)
from tests.graph_helpers import (
    OK,
    Runner,
    fail,
    of,
    ready_ids,
    ref,
    ret,
    spec,
)

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------- failures


def test_retry_then_fail():
    r = Runner()
    r.submit(spec("t", returns=1, on_failure="RETRY", max_attempts=3))
    r.submit(spec("other", returns=1))
    r.submit(spec("succ", ret("t")))
    for attempt in (1, 2):
        acts = r.done("t", fail(f"err{attempt}"))
        assert [(a.task_id, a.attempt) for a in of(acts, Ready)] == [("t", attempt + 1)]
        assert of(acts, Finished) == []
    acts = r.done("t", fail("err3"))
    assert of(acts, Finished) == [Finished("t", 3, TaskState.FAILED, "err3")]
    assert of(acts, GraphFailed) == [GraphFailed("t", "err3")]
    assert {a.task_id for a in of(acts, Cancelled)} == {"other", "succ"}
    assert of(acts, Kill) == [Kill("other", 1, of(acts, Cancelled)[0].reason)]  # it was ready
    assert r.g.barrier() and r.g.failure == ("t", "err3")
    assert r.g.counters["retried"] == 2


def test_retry_succeeds_on_second_attempt():
    r = Runner()
    r.submit(spec("t", returns=1))  # RETRY is the default, two attempts
    r.submit(spec("succ", ret("t")))
    r.done("t", fail())
    acts = r.done("t")
    assert of(acts, Finished) == [Finished("t", 2, TaskState.DONE)]
    assert ready_ids(acts) == ["succ"]


def test_fail_policy_cancels_everything_and_later_submissions():
    r = Runner()
    r.submit(spec("a", returns=1, on_failure=OnFailure.FAIL))
    r.submit(spec("b", returns=1))
    r.g.started("b", 1, 0.0)
    r.submit(spec("c", ret("a"), returns=1))
    (res,) = r.g.wait_on(return_id("c", 0)) or [None]
    assert res is None
    acts = r.done("a", fail("bad input"))
    assert of(acts, GraphFailed) == [GraphFailed("a", "bad input")]
    assert {a.task_id for a in of(acts, Cancelled)} == {"b", "c"}
    assert [k.task_id for k in of(acts, Kill)] == ["b"]
    (resolved,) = of(acts, Resolved)
    assert not resolved.ok and "bad input" in resolved.error
    acts = r.submit(spec("d"))
    assert [a.task_id for a in of(acts, Cancelled)] == ["d"] and ready_ids(acts) == []
    assert r.g.done("b", 1, OK, 1.0) == []  # the killed attempt's late result
    assert r.g.counters["stale_results"] == 1
    (res,) = r.g.wait_on(return_id("a", 0))
    assert not res.ok and "bad input" in res.error


def test_cancel_successors_cancels_transitively_and_others_go_on():
    r = Runner()
    r.submit(spec("a", returns=1, on_failure="CANCEL_SUCCESSORS"))
    r.submit(spec("b", ret("a"), returns=1))
    r.submit(spec("c", ret("b"), ref("obj", INOUT)))
    r.submit(spec("d", ref("obj")))  # reads c's version of obj: a successor too
    r.submit(spec("indep", returns=1))
    acts = r.done("a", fail("nope"))
    assert of(acts, Finished) == [Finished("a", 1, TaskState.FAILED, "nope")]
    assert sorted(a.task_id for a in of(acts, Cancelled)) == ["b", "c", "d"]
    assert of(acts, GraphFailed) == [] and r.g.failure is None
    assert r.g.task_state("indep") is TaskState.READY
    r.done("indep")
    assert r.g.barrier()
    (res,) = r.g.wait_on(return_id("b", 0))
    assert not res.ok and "a failed: nope" in res.error
    acts = r.submit(spec("e", ref("obj")))  # later readers of a cancelled version: cancelled
    assert [a.task_id for a in of(acts, Cancelled)] == ["e"]


def test_ignore_lets_successors_run_with_a_failed_value():
    r = Runner()
    r.submit(spec("a", ref("obj", INOUT), returns=1, on_failure=OnFailure.IGNORE))
    r.submit(spec("user", ret("a"), returns=1))
    r.submit(spec("nonuser", Param.literal(), returns=1))
    acts = r.done("a", fail("oops"))
    assert of(acts, Finished) == [Finished("a", 1, TaskState.FAILED, "oops")]
    assert of(acts, Cancelled) == [] and of(acts, GraphFailed) == []
    (user,) = of(acts, Ready)
    assert user.params[0].read_failed
    assert not r.ready["nonuser"].params[0].read_failed
    r.run_all()
    assert r.g.task_state("user") is TaskState.DONE
    res = {x.version.data_id: x for x in r.g.wait_on([return_id("a", 0), "obj", return_id("user", 0)])}
    assert not res[return_id("a", 0)].ok and "oops" in res[return_id("a", 0)].error
    assert not res["obj"].ok
    assert res[return_id("user", 0)].ok
    assert r.g.data_state("obj").state is DataState.FAILED


# --------------------------------------------------------------------- time-outs


def test_tick_kills_a_running_attempt_after_its_time_out_and_retries():
    r = Runner()
    r.submit(spec("t", time_out=5.0, returns=1))
    assert r.g.next_deadline() is None  # not started yet
    r.g.started("t", 1, 10.0)
    assert r.g.next_deadline() == 15.0
    assert r.g.tick(14.9) == []
    acts = r.take(r.g.tick(15.0))
    assert [type(a) for a in acts] == [Kill, Ready]
    assert acts[0].task_id == "t" and acts[0].attempt == 1 and "TimedOut" in acts[0].reason
    assert acts[1].attempt == 2
    assert r.g.next_deadline() is None
    assert r.g.done("t", 1, OK, 16.0) == []  # the killed attempt answers late: ignored
    assert r.g.counters["stale_results"] == 1
    r.g.started("t", 2, 20.0)
    acts = r.take(r.g.tick(26.0))
    assert of(acts, Finished)[0].state is TaskState.FAILED and of(acts, GraphFailed)
    assert r.g.counters["timed_out"] == 2


def test_timed_out_from_the_shell():
    r = Runner()
    r.submit(spec("t", on_failure="IGNORE", returns=1))
    acts = r.g.timed_out("t", 1, 3.0)
    assert of(acts, Kill) == [Kill("t", 1, of(acts, Kill)[0].reason)]
    assert of(acts, Finished)[0].state is TaskState.FAILED
    assert r.g.timed_out("t", 1, 4.0) == []  # a second report: ignored


def test_done_before_deadline_disarms_it():
    r = Runner()
    r.submit(spec("t", time_out=1.0))
    r.g.started("t", 1, 0.0)
    r.done("t", now=0.5)
    assert r.g.tick(5.0) == [] and r.g.next_deadline() is None


def test_deadlines_heap_stays_bounded():
    d = Deadlines()
    for i in range(10_000):
        d.arm(i, float(i))
        d.disarm(i)
    assert len(d) == 0 and len(d._heap) <= 130
    d.arm("a", 3.0)
    d.arm("a", 5.0)  # moved
    assert d.expired(4.0) == [] and d.next() == 5.0 and d.expired(5.0) == ["a"]


# --------------------------------------------------------------------- reports


def test_duplicate_and_late_results_are_ignored_and_counted():
    r = Runner()
    r.submit(spec("t", returns=1))
    r.submit(spec("u", ret("t")))
    assert ready_ids(r.g.done("t", 1, OK, 0.0)) == ["u"]
    assert r.g.done("t", 1, OK, 0.0) == []
    assert r.g.done("t", 1, fail(), 0.0) == []
    assert r.g.counters["stale_results"] == 2
    assert r.g.done("nobody", 1, OK, 0.0) == []
    assert r.g.counters["unknown_results"] == 1


def test_misuse_raises_and_changes_nothing():
    r = Runner()
    r.submit(spec("t", returns=1))
    r.submit(spec("u", ret("t")))
    with pytest.raises(LocalProtocolError):
        r.submit(spec("t"))  # id in use
    with pytest.raises(LocalProtocolError):
        r.g.done("t", 2, OK, 0.0)  # attempt never emitted
    with pytest.raises(LocalProtocolError):
        r.g.done("u", 1, OK, 0.0)  # not ready
    with pytest.raises(LocalProtocolError):
        r.g.started("u", 1, 0.0)
    with pytest.raises(LocalProtocolError):
        r.g.done("t", 1, "ok", 0.0)  # not an Outcome
    with pytest.raises(LocalProtocolError):
        r.g.wait_on(["nope"])
    with pytest.raises(LocalProtocolError):
        r.g.data_state("nope")
    with pytest.raises(LocalProtocolError):
        r.submit(spec("v", ref("f", FILE_IN), ref("f", IN)))  # file and object at once
    with pytest.raises(LocalProtocolError):
        r.g.host_write(return_id("t", 0), file=True)
    assert r.g.task_state("t") is TaskState.READY and r.g.task_state("u") is TaskState.PENDING
    assert r.g.task_state("v") is None and "f" not in r.g._versions
    r.run_all()
    assert r.g.barrier()


@pytest.mark.parametrize("bad", [
    lambda: Param(OUT),  # a literal can only be IN
    lambda: Param(FILE_IN),
    lambda: Param("SIDEWAYS", "x"),
    lambda: Param(IN, ""),
    lambda: TaskSpec("t", params=[ref("x", OUT), ref("x", INOUT)]),  # two writes
    lambda: TaskSpec("t", on_failure="SHRUG"),
    lambda: TaskSpec("t", max_attempts=0),
    lambda: TaskSpec("t", returns=-1),
    lambda: TaskSpec("t", time_out=0),
    lambda: TaskSpec(""),
    lambda: TaskSpec("t", params=["x"]),
])
def test_bad_specs_raise(bad):
    with pytest.raises(LocalProtocolError):
        bad()


def test_return_id_collision_raises():
    r = Runner()
    r.submit(spec("t", returns=1))
    r.done("t")
    with pytest.raises(LocalProtocolError):
        r.submit(spec("t", returns=1))  # t's future is still held, t is kept with it
    r.take(r.g.forget(return_id("t", 0)))
    r.submit(spec("t", returns=1))  # now the id is free again


def test_transition_log_is_bounded_and_says_why():
    g = TaskGraph(log_size=5)
    for i in range(10):
        g.submit(spec(f"t{i}"), float(i))
    assert len(g.log) == 5
    last = g.log[-1]
    assert (last.task_id, last.new, last.cause, last.now) == (
        "t9", TaskState.READY, "inputs available", 9.0)


# --------------------------------------------------------------------- signalled failures


def test_an_outcome_may_name_the_policy_instead_of_the_tasks_own():
    """A failure the program signals on purpose (PyCOMPSs' COMPSsException) is not
    retried: the outcome's policy replaces the task's RETRY."""
    r = Runner()
    r.submit(spec("t", returns=1))  # RETRY
    r.submit(spec("succ", ret("t")))
    r.submit(spec("other", returns=1))
    acts = r.done("t", Outcome.failed("stop", OnFailure.CANCEL_SUCCESSORS))
    assert of(acts, Finished) == [Finished("t", 1, TaskState.FAILED, "stop")]
    assert [a.task_id for a in of(acts, Cancelled)] == ["succ"]
    assert of(acts, GraphFailed) == [] and r.g.counters["retried"] == 0
    assert ready_ids(r.done("other")) == []


def test_cancel_stops_the_named_tasks_and_their_successors_only():
    r = Runner()
    r.submit(spec("a", returns=1))
    r.submit(spec("b", ret("a"), returns=1))  # ready once a is done: killed
    r.submit(spec("c", returns=1))  # ready: killed
    r.submit(spec("d", ret("c"), returns=1))  # reads c: cancelled too
    r.submit(spec("e", returns=1))  # not named: goes on
    r.submit(spec("p", ret("e"), returns=1))  # pending: cancelled when named
    r.done("a")
    acts = r.take(r.g.cancel(["b", "c", "p", "zzz", "a"], "group stopped", 1.0))  # a: done, zzz: unknown
    assert sorted(a.task_id for a in of(acts, Cancelled)) == ["b", "c", "d", "p"]
    assert sorted(of(acts, Kill), key=lambda k: k.task_id) == [Kill("b", 1, "group stopped"),
                                                             Kill("c", 1, "group stopped")]
    assert r.g.task_state("e") is TaskState.READY and r.g.task_state("a") is TaskState.DONE
    assert r.g.failure is None
    assert r.take(r.g.cancel(["b"], "again", 2.0)) == []  # finished tasks are left alone
