"""Calls that wait at a busy worker (``Dispatcher.depth``, ``WorkerPool.run(behind=True)``).

The dispatcher part is pure. The pool part runs real worker processes: calls waiting
behind another run in order, and come back unstarted (never run twice) when the call
ahead runs long, lends its slot, is cancelled or kills its worker."""

from __future__ import annotations

import os
import pickle
import select
import time

import cbor2
import pytest

from mesh.agent.pool import WorkerPool
from mesh.program import slot
from mesh.sched import dispatch as dp
from mesh.wire import messages as m
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ functions the workers run


def note(path: str, tag: str, seconds: float = 0.0) -> str:
    """Append ``tag`` to the file ``path`` (one line per run), after ``seconds``."""
    if seconds:
        time.sleep(seconds)
    with open(path, "a") as f:
        f.write(tag + "\n")
    return tag


def lend_for(path: str, seconds: float) -> str:
    """Lend the slot (as a task waiting on other tasks does) for ``seconds``."""
    with slot.lent():
        time.sleep(seconds)
    return note(path, "lender")


def die(path: str) -> None:
    note(path, "dying")
    os._exit(3)


# ------------------------------------------------------------------ the dispatcher


def call(i, **kw) -> m.Call:
    return m.Call(f"c{i}", "", b"p", **kw)


def runs(acts) -> list[tuple[str, bool]]:
    return [(a.call.call_id, a.behind) for a in acts if isinstance(a, dp.RunLocal)]


def submit_all(d, calls) -> list:
    acts = []
    for c in calls:
        acts += d.submit(c, b"\0client", None, 0.0)
    return acts


def test_depth_1_keeps_one_call_per_slot():
    d = dp.Dispatcher("a", 1, "ab" * 16)
    assert runs(submit_all(d, [call(i) for i in range(3)])) == [("c0", False)]
    assert d.running == 1 and d.queued == 2


def test_with_depth_calls_wait_at_the_busy_worker_then_in_the_backlog():
    d = dp.Dispatcher("a", 1, "ab" * 16, depth=3)
    assert runs(submit_all(d, [call(i) for i in range(5)])) == [("c0", False), ("c1", True), ("c2", True)]
    assert d.running == 3 and d.free == 0 and d.queued == 2 and d.counters["behind"] == 2
    # a result frees room for the next one, which waits at the worker too
    assert runs(d.local_done(m.Result("c0", True, b"v", "a"))) == [("c3", True)]


def test_a_peer_with_a_free_slot_goes_before_waiting_here():
    d = dp.Dispatcher("a", 1, "ab" * 16, depth=4)
    d.peer_load("cd" * 16, "b", 1, 1, 0.001)
    acts = submit_all(d, [call(i) for i in range(3)])
    assert runs(acts) == [("c0", False), ("c2", True)]
    assert [a.call.call_id for a in acts if isinstance(a, dp.Forward)] == ["c1"]


def test_calls_with_constraints_inputs_or_a_failure_here_do_not_wait_at_a_worker():
    d = dp.Dispatcher("a", 1, "ab" * 16, depth=4)
    acts = submit_all(d, [call(0), call(1, needs=m.Needs(1, 0, [])),
                          call(2, inputs=[m.Holding("ab" * 16, 10)]), call(3, avoid=["a"])])
    assert runs(acts) == [("c0", False)] and d.queued == 3


def test_an_unstarted_call_goes_back_to_the_head_of_the_backlog():
    d = dp.Dispatcher("a", 1, "ab" * 16, depth=2)
    submit_all(d, [call(i) for i in range(3)])  # c0 runs, c1 waits at the worker, c2 here
    d.depth = 1  # (the agent: the call ahead turned out long)
    assert d.unstarted(["c1"]) == [] and list(d.backlog) == ["c1", "c2"] and d.running == 1
    assert d.counters["unstarted"] == 1
    assert d.unstarted(["c1"]) == [] and d.unstarted(["nope"]) == []  # (not local: nothing)
    assert runs(d.local_done(m.Result("c0", True, b"v", "a"))) == [("c1", False)]


def test_calls_given_back_together_keep_their_order():
    d = dp.Dispatcher("a", 1, "ab" * 16, depth=4)
    submit_all(d, [call(i) for i in range(4)])  # c0 runs, c1..c3 wait at the worker
    acts = d.cancel("c0", b"\0client")  # its worker is stopped: the others come back
    assert [a.call_id for a in acts if isinstance(a, dp.KillLocal)] == ["c0"]
    # the first given back runs first (on the new worker), the others wait behind it
    assert runs(d.unstarted(["c1", "c2", "c3"])) == [("c1", False), ("c2", True), ("c3", True)]


def test_cancelling_a_waiting_call_frees_its_place():
    d = dp.Dispatcher("a", 1, "ab" * 16, depth=2)
    submit_all(d, [call(0), call(1)])
    acts = d.cancel("c1", b"\0client")
    assert [a.call_id for a in acts if isinstance(a, dp.KillLocal)] == ["c1"]
    assert d.running == 1


# ------------------------------------------------------------------ the pool, real workers


@pytest.fixture
def pool():
    p = WorkerPool(1, "pool-test", env={"PYTHONPATH": os.getcwd()})

    def ready():
        w = p.workers[0]
        if w.conn.readable():
            assert p.readable(w) == []
        return w.ready

    wait_for(ready, 20, "the worker to start")
    yield p
    p.close()


def mk(call_id: str, fn: str, *args) -> m.Call:
    return m.Call(call_id, fn, pickle.dumps((args, {})))


def collect(pool: WorkerPool, results: dict, until, timeout: float = 20) -> None:
    """Read the workers until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; results so far: {sorted(results)}"
        ready, _, _ = select.select(pool.workers, [], [], 0.05)
        for w in ready:
            for r in pool.readable(w):
                assert r.call_id not in results, f"{r.call_id} answered twice"
                results[r.call_id] = r


def lines(path) -> list[str]:
    return open(path).read().split() if os.path.exists(path) else []


def test_waiting_calls_run_in_order_and_teach_the_pool_their_run_time(pool, tmp_path):
    log = str(tmp_path / "log")
    for i in range(6):
        assert pool.run(mk(f"c{i}", "tests.test_worker_queue:note", log, f"c{i}"), behind=i > 0) is None
    assert len(pool.workers) == 1 and pool.waiting == 5
    results: dict = {}
    collect(pool, results, lambda: len(results) == 6)
    assert lines(log) == [f"c{i}" for i in range(6)]
    assert all(pickle.loads(results[f"c{i}"].value) == f"c{i}" for i in range(6))
    assert pool.samples == 6 and 0 < pool.run_time < 1 and pool.waiting == 0


def nice_of(pid: int) -> int:
    """The nice value of the process's main thread (its id is the process id)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[16])  # (field 19 of stat)


def test_a_worker_runs_short_calls_at_the_agents_priority_and_long_ones_niced(pool):
    w = pool.workers[0]
    results: dict = {}
    for i in range(20):  # (stdlib functions: importing this module would take long)
        pool.run(mk(f"s{i}", "operator:add", i, 1))
        collect(pool, results, lambda i=i: f"s{i}" in results)
    assert nice_of(w.proc.pid) == nice_of(os.getpid())  # short calls: not niced
    pool.run(mk("long", "time:sleep", 0.3))
    collect(pool, results, lambda: "long" in results)
    assert pool.workers[0] is w and nice_of(w.proc.pid) == min(nice_of(os.getpid()) + 10, 19)


def test_calls_behind_a_long_call_come_back_unstarted(pool, tmp_path):
    log = str(tmp_path / "log")
    pool.run(mk("long", "tests.test_worker_queue:note", log, "long", 1.5))
    pool.run(mk("w1", "tests.test_worker_queue:note", log, "w1"), behind=True)
    pool.run(mk("w2", "tests.test_worker_queue:note", log, "w2"), behind=True)
    wait_for(lambda: pool.withdraw_slow(time.monotonic()), 10, "the long call to count as long")
    results: dict = {}
    collect(pool, results, lambda: sorted(pool.unstarted) == ["w1", "w2"])
    assert "long" not in results and pool.depth() == 1  # (no worker can take a waiting call)
    collect(pool, results, lambda: "long" in results)
    assert lines(log) == ["long"] and set(results) == {"long"}  # w1, w2 never ran there


def test_a_call_that_lends_its_slot_gives_back_the_calls_behind_it(pool, tmp_path):
    log = str(tmp_path / "log")
    pool.run(mk("lender", "tests.test_worker_queue:lend_for", log, 1.0))
    pool.run(mk("w1", "tests.test_worker_queue:note", log, "w1"), behind=True)
    results: dict = {}
    collect(pool, results, lambda: pool.unstarted == ["w1"] and pool.lends)
    assert pool.lends[0] == ("lender", True)
    # a call that reaches the worker while its call lends its slot (sent before the agent
    # heard of the lend) goes back too
    w = pool.workers[0]
    w.queue.append("w2")
    w.conn.send(cbor2.dumps(["call", "w2", "tests.test_worker_queue:note",
                             pickle.dumps(((log, "w2"), {})), False, 0, 0]))
    # the pool itself gives no call to a worker whose call lends its slot: the call waits
    # for a worker (keeping the slot it was given: no lend of its own) until pump starts
    # one for it, a stand-in
    lends = list(pool.lends)
    pool.run(mk("w3", "tests.test_worker_queue:note", log, "w3"), behind=True)
    assert [c.call_id for c in pool.held] == ["w3"]
    assert pool.pump() and pool.lends == lends
    assert len(pool.workers) == 2 and pool.workers[1].call_id == "w3"
    collect(pool, results, lambda: "lender" in results and "w3" in results)
    assert pool.unstarted == ["w1", "w2"] and set(results) == {"lender", "w3"}
    assert sorted(lines(log)) == ["lender", "w3"]


def test_stand_ins_stay_while_a_call_is_blocked_and_go_after(pool, tmp_path):
    """A nested graph goes up and down its recursion: a stand-in that idles while a call
    here is still blocked is wanted again soon (starting a process takes a few hundred
    ms). The stand-ins go once no call here is blocked."""
    log = str(tmp_path / "log")
    results: dict = {}
    pool.run(mk("outer", "tests.test_worker_queue:lend_for", log, 3.0))
    collect(pool, results, lambda: ("outer", True) in pool.lends)
    pool.run(mk("inner", "tests.test_worker_queue:lend_for", log, 0.5))  # no idle worker
    assert [c.call_id for c in pool.held] == ["inner"] and pool.pump()
    collect(pool, results, lambda: ("inner", True) in pool.lends)
    pool.run(mk("leaf", "tests.test_worker_queue:note", log, "leaf"))
    assert pool.pump() and len(pool.workers) == 3
    collect(pool, results, lambda: "leaf" in results and "inner" in results)
    assert len(pool.workers) == 3 and pool.idle == 2  # "outer" is still blocked: they stay
    collect(pool, results, lambda: "outer" in results)
    assert len(pool.workers) == 1  # nothing blocked here: they go


def test_cancelling_a_waiting_call_withdraws_it_and_the_others_run(pool, tmp_path):
    log = str(tmp_path / "log")
    pool.run(mk("first", "tests.test_worker_queue:note", log, "first", 0.5))
    for c in ("w1", "w2", "w3"):
        pool.run(mk(c, "tests.test_worker_queue:note", log, c), behind=True)
    assert pool.cancel("w2") == "withdrawn"
    results: dict = {}
    collect(pool, results, lambda: {"first", "w1", "w3"} <= set(results))
    assert "w2" not in results and pool.unstarted == [] and "w2" not in lines(log)
    assert lines(log) == ["first", "w1", "w3"]


def test_cancelling_the_running_call_stops_its_worker_and_returns_the_waiting_ones(pool, tmp_path):
    log = str(tmp_path / "log")
    pool.run(mk("victim", "tests.test_worker_queue:note", log, "victim", 30))
    pool.run(mk("w1", "tests.test_worker_queue:note", log, "w1"), behind=True)
    old = pool.workers[0].proc.pid
    assert pool.cancel("victim") == "stopped"
    assert pool.unstarted == ["w1"] and len(pool.workers) == 1 and pool.workers[0].proc.pid != old
    assert pool.cancel("nope") is None


def test_a_worker_that_dies_fails_its_call_and_returns_the_waiting_ones(pool, tmp_path):
    log = str(tmp_path / "log")
    pool.run(mk("boom", "tests.test_worker_queue:die", log))
    pool.run(mk("w1", "tests.test_worker_queue:note", log, "w1"), behind=True)
    results: dict = {}
    collect(pool, results, lambda: "boom" in results)
    assert results["boom"].error_type == "WorkerDied" and pool.unstarted == ["w1"]
    assert lines(log) == ["dying"] and pool.crashes == 1


# ------------------------------------------------------------------ a real agent


@pytest.mark.agents
def test_short_calls_never_wait_behind_a_long_one(agents, mesh_key):
    """The long call and 600 short ones reach the agent in one frame (one turn of its
    loop): the long one starts at one worker and short ones wait behind both workers;
    those behind the long one come back once it has run long, and every short call is
    done while the long one still runs."""
    import operator
    import pickle

    import zmq

    import mesh
    from mesh.client.client import Client
    from mesh.wire import messages as m
    from tests.test_hostile import dealer

    agent = agents.start("piper", cpus=2)
    with mesh.connect(agent.comm) as client:
        warm = [client.submit(operator.add, i, 1) for i in range(300)]  # calls here are short
        assert [f.result(30) for f in warm] == [i + 1 for i in range(300)]
    frames = [m.encode(m.Call("long", "mesh.demo_tasks:where", pickle.dumps(((7, 4.0), {}))))]
    frames += [m.encode(m.Call(f"s{i}", "operator:mul", pickle.dumps(((i, 2), {}))))
               for i in range(600)]
    batch = m.batches(frames)
    assert len(batch) == 1  # (one frame: the agent reads it in one turn)
    sock = dealer(agent.comm, mesh_key)
    results: dict[str, m.Result] = {}
    try:
        sock.send(batch[0])

        def read() -> dict[str, m.Result]:
            while sock.poll(0, zmq.POLLIN):
                for r in m.unbatch(m.decode(sock.recv()))[0]:
                    assert isinstance(r, m.Result) and r.call_id not in results, r
                    results[r.call_id] = r
            return results

        def shorts_done() -> bool:
            return sum(1 for c in read() if c != "long") == 600

        wait_for(shorts_done, 30, "the 600 short calls")
        still_running = "long" not in results
        with Client(agent.comm) as c:
            pipe = c.query("status")["pipeline"]
        # every short call was done while the long one still ran
        assert still_running, (pipe, agent.log()[-3000:])
        assert all(results[f"s{i}"].ok and pickle.loads(results[f"s{i}"].value) == 2 * i
                   for i in range(600))
        wait_for(lambda: "long" in read(), 30, "the long call")
    finally:
        sock.close(0)
    assert results["long"].ok and pickle.loads(results["long"].value)["square"] == 49
    with Client(agent.comm) as c:
        st = c.query("status")
    # calls waited at workers, some behind the long call, which gave them back
    assert pipe["behind"] > 0 and pipe["withdrawals"] >= 1 and pipe["unstarted"] >= 1, pipe
    assert st["done"] == 901 and st["failed"] == 0 and st["pipeline"]["waiting"] == 0
