"""Tests for mesh.sched.graph: the task graph of a COMPSs-style program.

The graph is a pure state machine: tests submit task specs, report attempts as done,
failed or timed out, and assert on the returned actions. A small ``Runner`` plays the
shell. Two hypothesis properties drive random programs with a random scheduler: one
with failures under every policy (invariants of states, readiness and release), one
without failures, comparing every value with a sequential run of the same program.

Here: graph shapes, data directions and renaming, priority and wait_on, release of
values. Failures, time-outs and misuse: ``tests/test_graph_failures.py``; the two
hypothesis properties: ``tests/test_graph_properties.py``; builders and ``Runner``:
``tests/graph_helpers.py``.
"""

from __future__ import annotations

import time

import pytest

from mesh.errors import LocalProtocolError
from mesh.sched.graph import (
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    IN,
    INOUT,
    OUT,
    DataState,
    Finished,
    Param,
    Ready,
    Release,
    Resolved,
    Snapshot,
    TaskState,
    return_id,
)
from tests.graph_helpers import (
    Runner,
    of,
    ready_ids,
    ref,
    ret,
    spec,
)

pytestmark = pytest.mark.timeout(60)


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


def test_ten_thousand_chained_tasks_run_in_order_and_leave_nothing():
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
    print(f"10,000 tasks: {elapsed:.2f} s")  # (a figure, not an assertion)


def test_ten_thousand_independent_tasks_then_fan_in():
    n = 10_000
    t0 = time.perf_counter()
    r = Runner()
    for i in range(n):
        r.submit(spec(f"t{i}", Param.literal(), returns=1))
    r.submit(spec("sum", *[ret(f"t{i}") for i in range(n)], returns=1))
    r.run_all()
    elapsed = time.perf_counter() - t0
    assert r.g.task_state("sum") is TaskState.DONE
    print(f"10,000 tasks and their fan-in: {elapsed:.2f} s")


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
