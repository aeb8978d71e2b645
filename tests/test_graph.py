"""Tests for mesh.sched.graph: the task graph of a COMPSs-style program.

The graph is a pure state machine: tests submit task specs, report attempts as done,
failed or timed out, and assert on the returned actions. A small ``Runner`` plays the
shell. Two hypothesis properties drive random programs with a random scheduler: one
with failures under every policy (invariants of states, readiness and release), one
without failures, comparing every value with a sequential run of the same program.
"""

from __future__ import annotations

import random
import time
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import LocalProtocolError
from mesh.sched.deadlines import Deadlines
from mesh.sched.graph import (
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    IN,
    INOUT,
    OUT,
    Cancelled,
    DataState,
    DataVersion,
    Finished,
    GraphFailed,
    Kill,
    OnFailure,
    Outcome,
    Param,
    Ready,
    Release,
    Resolved,
    Snapshot,
    TaskGraph,
    TaskSpec,
    TaskState,
    return_id,
)

pytestmark = pytest.mark.timeout(60)

OK = Outcome.OK


def spec(task_id: str, *params: Param, returns: int = 0, **kw) -> TaskSpec:
    return TaskSpec(task_id, f"fn_{task_id}", list(params), returns, **kw)


def ref(data_id: str, direction=IN) -> Param:
    return Param(direction, data_id)


def ret(task_id: str, i: int = 0) -> Param:
    return Param(IN, return_id(task_id, i))


def of(acts, cls) -> list:
    return [a for a in acts if isinstance(a, cls)]


def ready_ids(acts) -> list[str]:
    return [a.task_id for a in acts if isinstance(a, Ready)]


def fail(text: str = "boom") -> Outcome:
    return Outcome.failed(text)


class Runner:
    """Plays the shell: submits, keeps the ready tasks, reports them done."""

    def __init__(self) -> None:
        self.g = TaskGraph()
        self.ready: dict[str, Ready] = {}
        self.actions: list = []

    def take(self, acts) -> list:
        self.actions += acts
        for a in acts:
            if isinstance(a, Ready):
                self.ready[a.task_id] = a
            elif isinstance(a, (Kill, Cancelled, Finished)):
                self.ready.pop(a.task_id, None)
        return acts

    def submit(self, s: TaskSpec, now: float = 0.0) -> list:
        return self.take(self.g.submit(s, now))

    def done(self, task_id: str, outcome: Outcome = OK, now: float = 0.0) -> list:
        r = self.ready[task_id]
        return self.take(self.g.done(task_id, r.attempt, outcome, now))

    def run_all(self) -> list[str]:
        """Report every ready task done, FIFO, until none is left; the order run."""
        order = []
        while self.ready:
            task_id = next(iter(self.ready))
            order.append(task_id)
            self.done(task_id)
        return order


# --------------------------------------------------------------------- shapes


def test_chain_runs_in_order():
    r = Runner()
    assert ready_ids(r.submit(spec("a", returns=1))) == ["a"]
    assert r.submit(spec("b", ret("a"), returns=1)) == []
    assert r.submit(spec("c", ret("b"))) == []
    acts = r.done("a")
    assert of(acts, Finished) == [Finished("a", 1, TaskState.DONE)]
    (b,) = of(acts, Ready)
    assert b.task_id == "b" and b.params[0].read == r.ready["b"].params[0].read
    assert b.params[0].read.data_id == return_id("a", 0)
    assert r.run_all() == ["b", "c"]
    assert r.g.barrier()


def test_fan_out_fan_in():
    r = Runner()
    r.submit(spec("src", returns=1))
    for i in range(5):
        assert r.submit(spec(f"w{i}", ret("src"), returns=1)) == []
    r.submit(spec("sink", *[ret(f"w{i}") for i in range(5)], returns=1))
    assert ready_ids(r.done("src")) == [f"w{i}" for i in range(5)]
    for i in range(4):
        assert ready_ids(r.done(f"w{i}")) == []
    assert ready_ids(r.done("w4")) == ["sink"]
    assert not r.g.barrier()
    r.done("sink")
    assert r.g.barrier()


def test_diamond():
    r = Runner()
    r.submit(spec("a", returns=1))
    r.submit(spec("b", ret("a"), returns=1))
    r.submit(spec("c", ret("a"), returns=1))
    r.submit(spec("d", ret("b"), ret("c"), returns=1))
    assert ready_ids(r.done("a")) == ["b", "c"]
    assert ready_ids(r.done("c")) == []
    acts = r.done("b")
    (d,) = of(acts, Ready)
    assert [p.read.data_id for p in d.params] == [return_id("b", 0), return_id("c", 0)]


def test_ten_thousand_tasks_are_fast():
    n = 10_000
    t0 = time.perf_counter()
    r = Runner()
    r.submit(spec("t0", returns=1))
    for i in range(1, n):
        r.submit(spec(f"t{i}", ret(f"t{i - 1}"), ret(f"t{i // 2}"), returns=1))
    order = r.run_all()
    r.take(r.g.forget([return_id(f"t{i}", 0) for i in range(n)]))
    elapsed = time.perf_counter() - t0
    assert order == [f"t{i}" for i in range(n)]
    assert r.g.barrier() and r.g.task_count == 0 and r.g.data_count == 0
    assert len(of(r.actions, Release)) == n
    assert elapsed < 2.0, f"10,000 tasks took {elapsed:.2f} s"


def test_ten_thousand_independent_tasks_then_fan_in_is_fast():
    n = 10_000
    t0 = time.perf_counter()
    r = Runner()
    for i in range(n):
        r.submit(spec(f"t{i}", Param.literal(), returns=1))
    r.submit(spec("sum", *[ret(f"t{i}") for i in range(n)], returns=1))
    r.run_all()
    elapsed = time.perf_counter() - t0
    assert r.g.task_state("sum") is TaskState.DONE
    assert elapsed < 2.0, f"took {elapsed:.2f} s"


# --------------------------------------------------------------------- directions


def test_inout_chain_reads_and_writes_versions_in_order():
    r = Runner()
    acts = r.submit(spec("m0", ref("obj", INOUT)))
    (snap,) = of(acts, Snapshot)  # the program's own value becomes the first version
    assert snap.version.data_id == "obj"
    for i in range(1, 5):
        assert r.submit(spec(f"m{i}", ref("obj", INOUT))) == []
    versions = [snap.version]
    for i in range(5):
        assert list(r.ready) == [f"m{i}"]  # one at a time: each reads the previous write
        access = r.ready[f"m{i}"].params[0]
        assert access.read == versions[-1]
        assert access.write is not None and access.write > access.read
        versions.append(access.write)
        r.done(f"m{i}")
    assert [v.version for v in versions] == sorted(v.version for v in versions)
    (res,) = r.g.wait_on("obj")
    assert res == Resolved(versions[-1], True)
    # every superseded version was released, the latest is kept for the program
    assert [a.version for a in of(r.actions, Release)] == versions[:-1]


def test_out_then_in():
    r = Runner()
    acts = r.submit(spec("w", ref("x", OUT)))
    assert of(acts, Snapshot) == []  # an OUT does not need the program's value
    w = r.ready["w"].params[0]
    assert w.read is None and w.write is not None
    assert r.submit(spec("rd", ref("x"))) == []
    (rd,) = of(r.done("w"), Ready)
    assert rd.params[0].read == w.write


def test_in_and_inout_of_one_datum_in_one_task_read_the_same_version():
    r = Runner()
    r.submit(spec("t", ref("x"), ref("x", INOUT)))
    a, b = r.ready["t"].params
    assert a.read == b.read and b.write is not None and a.write is None


def test_file_dependencies():
    r = Runner()
    r.submit(spec("make", ref("/d/a.txt", FILE_OUT)))
    r.submit(spec("edit", ref("/d/a.txt", FILE_INOUT)))
    r.submit(spec("use", ref("/d/a.txt", FILE_IN), returns=1))
    assert list(r.ready) == ["make"]
    made = r.ready["make"].params[0].write
    (edit,) = of(r.done("make"), Ready)
    assert edit.params[0].read == made
    (use,) = of(r.done("edit"), Ready)
    assert use.params[0].read == edit.params[0].write
    assert use.params[0].direction is FILE_IN
    with pytest.raises(LocalProtocolError):
        r.submit(spec("bad", ref("/d/a.txt", IN)))  # a file used as an object
    assert r.g.task_state("bad") is None


def test_war_is_renamed_away():
    """A writer never waits for readers of the older version."""
    r = Runner()
    r.submit(spec("slow", returns=1))
    r.submit(spec("reader", ref("x"), ret("slow")))  # reads x v1, waits for slow
    (snap,) = of(r.actions, Snapshot)
    acts = r.submit(spec("writer", ref("x", OUT)))
    assert ready_ids(acts) == ["writer"]  # no write-after-read wait
    new = r.ready["writer"].params[0].write
    r.done("writer")
    (reader,) = of(r.done("slow"), Ready)
    assert reader.params[0].read == snap.version  # the reader still gets the old version
    acts = r.submit(spec("later", ref("x")))
    assert of(acts, Ready)[0].params[0].read == new


def test_waw_is_renamed_away():
    r = Runner()
    assert ready_ids(r.submit(spec("w1", ref("x", OUT)))) == ["w1"]
    assert ready_ids(r.submit(spec("w2", ref("x", OUT)))) == ["w2"]  # no write-after-write wait
    v1 = r.ready["w1"].params[0].write
    v2 = r.ready["w2"].params[0].write
    r.submit(spec("rd", ref("x")))
    acts = r.done("w2")
    assert ready_ids(acts) == ["rd"] and of(acts, Ready)[0].params[0].read == v2
    assert of(r.done("w1"), Release) == [Release(v1)]  # superseded, never read: freed at once


def test_host_write_makes_a_new_version_for_later_tasks():
    r = Runner()
    r.submit(spec("t", ref("x", INOUT)))
    r.done("t")
    (res,) = r.g.wait_on("x")
    acts = r.take(r.g.host_write("x"))
    (snap,) = of(acts, Snapshot)
    assert snap.version > res.version
    assert of(acts, Release) == [Release(res.version)]
    r.submit(spec("u", ref("x")))
    assert r.ready["u"].params[0].read == snap.version


def test_literal_params_bind_to_nothing():
    r = Runner()
    r.submit(spec("t", Param.literal(), ref("x"), returns=2))
    a = r.ready["t"]
    assert a.params[0].read is None and a.params[0].write is None
    assert [v.data_id for v in a.returns] == [return_id("t", 0), return_id("t", 1)]


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


# --------------------------------------------------------------------- priority, wait_on


def test_priority_tasks_are_emitted_first():
    r = Runner()
    r.submit(spec("root", returns=1))
    r.submit(spec("a", ret("root")))
    r.submit(spec("b", ret("root"), priority=True))
    r.submit(spec("c", ret("root")))
    r.submit(spec("d", ret("root"), priority=True))
    assert ready_ids(r.done("root")) == ["b", "d", "a", "c"]


def test_wait_on_resolves_later_and_in_lists():
    r = Runner()
    r.submit(spec("a", returns=2))
    ids = [return_id("a", 0), return_id("a", 1)]
    assert r.g.wait_on(ids) == []
    assert r.g.data_state(ids[0]).state is DataState.PENDING
    acts = r.done("a")
    assert [x.version.data_id for x in of(acts, Resolved)] == ids
    assert all(x.ok for x in of(acts, Resolved))
    assert [x.version.data_id for x in r.g.wait_on(ids)] == ids  # already resolved: at once


# --------------------------------------------------------------------- release


def test_versions_are_released_when_no_longer_needed():
    r = Runner()
    r.submit(spec("a", returns=1))
    r.submit(spec("b", ret("a"), returns=1))
    va = r.ready["a"].returns[0]
    r.take(r.g.forget(return_id("a", 0)))  # the program dropped its future; b still needs it
    assert of(r.done("a"), Release) == []
    assert of(r.done("b"), Release) == [Release(va)]  # its last reader finished
    assert r.g.task_count == 1  # b is kept while its output is held
    (res,) = r.g.wait_on(return_id("b", 0))
    assert of(r.take(r.g.forget(return_id("b", 0))), Release) == [Release(res.version)]
    assert r.g.task_count == 0 and r.g.data_count == 0 and r.g.version_count == 0


def test_memory_stays_bounded_over_a_long_stream():
    """A long program that keeps an accumulator and drops its futures."""
    r = Runner()
    peak = 0
    produced = 0
    for i in range(10_000):
        r.submit(spec(f"p{i}", ref("acc", INOUT), returns=1))
        r.submit(spec(f"c{i}", ret(f"p{i}"), returns=1))
        r.take(r.g.forget([return_id(f"p{i}", 0), return_id(f"c{i}", 0)]))
        produced += 3
        if i % 3 == 2:  # the shell runs what is ready, a little behind
            r.run_all()
        peak = max(peak, r.g.task_count + r.g.version_count + r.g.data_count)
    r.run_all()
    assert peak < 40
    # left: acc's latest version, which the program still names, and the task that wrote it
    assert r.g.task_count == 1 and r.g.version_count == 1 and r.g.data_count == 1
    released = [a.version for a in of(r.actions, Release)]
    assert len(released) == len(set(released)) == produced  # the snapshot too, minus acc's last
    assert len(r.g.log) <= 1000


# --------------------------------------------------------------------- properties

POOL = ["a", "b", "c"]
FILES = ["f1", "f2"]
# FAIL (and RETRY run out) end the whole run: drawn less often, so runs go on long enough
POLICIES = [OnFailure.RETRY, OnFailure.CANCEL_SUCCESSORS, OnFailure.CANCEL_SUCCESSORS,
            OnFailure.IGNORE, OnFailure.IGNORE, OnFailure.FAIL]


@st.composite
def programs(draw, with_failures: bool = True):
    n = draw(st.integers(1, 25))
    tasks = []
    for i in range(n):
        params = []
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["lit", "obj", "file", "ret"]))
            if kind == "lit":
                params.append(Param.literal())
            elif kind == "obj" or (kind == "ret" and not any(t.returns for t in tasks)):
                params.append(ref(draw(st.sampled_from(POOL)), draw(st.sampled_from([IN, OUT, INOUT]))))
            elif kind == "file":
                params.append(ref(draw(st.sampled_from(FILES)),
                                  draw(st.sampled_from([FILE_IN, FILE_OUT, FILE_INOUT]))))
            else:
                src = draw(st.sampled_from([t for t in tasks if t.returns]))
                params.append(ref(return_id(src.task_id, draw(st.integers(0, src.returns - 1))),
                                  draw(st.sampled_from([IN, IN, INOUT]))))
        seen: set[str] = set()  # a datum written twice by one task is refused: keep the first
        kept = []
        for p in params:
            if p.direction.writes:
                if p.data_id in seen:
                    continue
                seen.add(p.data_id)
            kept.append(p)
        tasks.append(TaskSpec(
            f"t{i}", "fn", kept, draw(st.integers(0, 2)),
            priority=draw(st.booleans()),
            on_failure=draw(st.sampled_from(POLICIES)) if with_failures else OnFailure.RETRY,
            time_out=draw(st.sampled_from([None, 1.0, 5.0])) if with_failures else None,
            max_attempts=draw(st.integers(1, 3))))
    return tasks, draw(st.integers(0, 2**32 - 1))


class Checker:
    """The shell with invariant checks on every action."""

    def __init__(self) -> None:
        self.g = TaskGraph()
        self.live: dict[tuple[str, int], Ready] = {}  # emitted, not yet over
        self.seen_ready: set[tuple[str, int]] = set()
        self.terminal: dict[str, str] = {}
        self.available: set[DataVersion] = set()
        self.failed_values: set[DataVersion] = set()
        self.released: set[DataVersion] = set()
        self.last_attempt: dict[str, Ready] = {}
        self.graph_failed = 0
        self.now = 0.0

    def take(self, acts) -> None:
        for a in acts:
            if isinstance(a, Ready):
                key = (a.task_id, a.attempt)
                assert key not in self.seen_ready, f"Ready twice for {key}"
                assert a.task_id not in self.terminal
                self.seen_ready.add(key)
                if a.attempt > 1:
                    assert (a.task_id, a.attempt - 1) in self.seen_ready
                for p in a.params:
                    if p.read is not None:
                        assert p.read not in self.released, f"{a.task_id} reads released {p.read}"
                        if p.read_failed:
                            assert p.read in self.failed_values
                        else:
                            assert p.read in self.available, f"{a.task_id} runs before {p.read} exists"
                self.live[key] = a
                self.last_attempt[a.task_id] = a
            elif isinstance(a, Kill):
                assert (a.task_id, a.attempt) in self.live
                del self.live[(a.task_id, a.attempt)]
            elif isinstance(a, (Finished, Cancelled)):
                assert a.task_id not in self.terminal, f"{a.task_id} ends twice"
                self.terminal[a.task_id] = a.state.value if isinstance(a, Finished) else "cancelled"
                r = self.last_attempt.get(a.task_id)
                if isinstance(a, Finished):
                    assert r is not None and r.attempt == a.attempt
                    self.live.pop((a.task_id, a.attempt), None)
                    outs = [p.write for p in r.params if p.write is not None] + list(r.returns)
                    if a.state is TaskState.DONE:
                        self.available.update(outs)
                    elif r.spec.on_failure is OnFailure.IGNORE:
                        self.failed_values.update(outs)
                else:
                    assert not any(k[0] == a.task_id for k in self.live), "cancelled without Kill"
            elif isinstance(a, Snapshot):
                assert a.version not in self.available
                self.available.add(a.version)
            elif isinstance(a, Release):
                assert a.version in self.available and a.version not in self.released
                self.released.add(a.version)
                for r in self.live.values():  # nobody running reads it
                    assert all(p.read != a.version for p in r.params)
            elif isinstance(a, GraphFailed):
                self.graph_failed += 1
                assert self.graph_failed == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_with_failures_keep_the_invariants(program):
    specs, seed = program
    rng = random.Random(seed)
    c = Checker()
    todo = deque(specs)
    dead: list[tuple[str, int]] = []  # attempts over: their late reports must be ignored
    steps = 0
    while todo or c.live:
        steps += 1
        assert steps < 10_000
        c.now += rng.random()
        if todo and (not c.live or rng.random() < 0.3):
            c.take(c.g.submit(todo.popleft(), c.now))
            continue
        key = rng.choice(sorted(c.live))
        task_id, attempt = key
        r = c.live[key]
        roll = rng.random()
        if roll < 0.03 and dead:
            stale = rng.choice(dead)
            before = c.g.counters["stale_results"] + c.g.counters["unknown_results"]
            assert c.g.done(*stale, OK, c.now) == []
            assert c.g.counters["stale_results"] + c.g.counters["unknown_results"] == before + 1
            continue
        if roll < 0.08 and r.spec.time_out is not None:
            if c.g.task_state(task_id) is TaskState.READY:
                c.take(c.g.started(task_id, attempt, c.now))
            c.now += r.spec.time_out
            c.take(c.g.tick(c.now))
            assert key not in c.live
        elif roll < 0.1:
            c.take(c.g.timed_out(task_id, attempt, c.now))
            assert key not in c.live
        else:
            if roll < 0.4 and c.g.task_state(task_id) is TaskState.READY:
                c.take(c.g.started(task_id, attempt, c.now))
            c.take(c.g.done(task_id, attempt, fail("x") if roll > 0.88 else OK, c.now))
        c.live.pop(key, None)
        dead.append(key)
    assert c.g.barrier()
    assert set(c.terminal) == {s.task_id for s in specs}  # each ended, once (checked in take)
    assert (c.graph_failed == 1) == (c.g.failure is not None)
    if c.g.failure is None:  # cancelled exactly when a predecessor was lost (program order)
        policy = {s.task_id: s.on_failure for s in specs}
        writer: dict[str, str] = {}
        for s in specs:
            preds = {writer[p.data_id] for p in s.params
                     if p.data_id in writer and p.direction.reads}
            lost = any(c.terminal[w] == "cancelled" or (
                c.terminal[w] == "failed" and policy[w] is OnFailure.CANCEL_SUCCESSORS) for w in preds)
            assert (c.terminal[s.task_id] == "cancelled") == lost, s.task_id
            writer.update((p.data_id, s.task_id) for p in s.params if p.direction.writes)
            writer.update((return_id(s.task_id, i), s.task_id) for i in range(s.returns))
    # the program drops every name: the graph empties and every value is freed once
    names = POOL + FILES + [return_id(s.task_id, i) for s in specs for i in range(s.returns)]
    c.take(c.g.forget(names))
    assert c.g.task_count == 0 and c.g.data_count == 0 and c.g.version_count == 0
    assert c.released == c.available


def _value(task_id: str, what, reads: tuple) -> int:
    return hash((task_id, what, reads))


def _sequential(specs) -> dict[str, int]:
    """The values of every datum after running the program one task at a time."""
    state: dict[str, int] = {}
    for s in specs:
        reads = tuple(state.setdefault(p.data_id, hash(("init", p.data_id)))
                      if p.data_id is not None and p.direction.reads else None for p in s.params)
        for k, p in enumerate(s.params):
            if p.direction.writes:
                state[p.data_id] = _value(s.task_id, k, reads)
        for i in range(s.returns):
            state[return_id(s.task_id, i)] = _value(s.task_id, f"r{i}", reads)
    return state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(with_failures=False))
def test_random_schedules_compute_what_a_sequential_run_computes(program):
    specs, seed = program
    rng = random.Random(seed)
    g = TaskGraph()
    store: dict[DataVersion, int] = {}
    ready: dict[str, Ready] = {}

    def take(acts):
        for a in acts:
            if isinstance(a, Snapshot):
                store[a.version] = hash(("init", a.version.data_id))
            elif isinstance(a, Ready):
                ready[a.task_id] = a
            elif isinstance(a, Release):
                del store[a.version]  # a premature release shows as a KeyError below

    todo = deque(specs)
    while todo or ready:
        if todo and (not ready or rng.random() < 0.4):
            take(g.submit(todo.popleft(), 0.0))
            continue
        a = ready.pop(rng.choice(sorted(ready)))
        reads = tuple(store[p.read] if p.read is not None else None for p in a.params)
        for k, p in enumerate(a.params):
            if p.write is not None:
                store[p.write] = _value(a.task_id, k, reads)
        for i, v in enumerate(a.returns):
            store[v] = _value(a.task_id, f"r{i}", reads)
        take(g.done(a.task_id, a.attempt, OK, 0.0))
    assert g.barrier()
    expected = _sequential(specs)
    for data_id, value in expected.items():
        (res,) = g.wait_on(data_id)
        assert res.ok and store[res.version] == value, data_id
    assert len(store) == len(expected)  # every superseded version was released
