"""The object store core (``mesh.sched.objects.Objects``), lineage bookkeeping
(``mesh.program.lineage``) and locality in placement (``Dispatcher._data_holder``), pure."""

from __future__ import annotations

import pickle

import pytest

from mesh.program.lineage import Lineage
from mesh.sched.dispatch import Dispatcher, Forward, RunLocal
from mesh.sched.objects import FetchFrom, Give, ObjectLost, Objects, Ref
from mesh.wire.messages import Call, Holding

pytestmark = pytest.mark.timeout(30)

ME, HOLDER, OTHER = "a" * 32, "b" * 32, "c" * 32


def test_a_local_object_is_given_at_once_and_freed():
    o = Objects(ME, max_bytes=100)
    assert o.put("x", b"12345", origin=OTHER)
    assert o.get("x", ME, "w1", 0.0) == [Give("w1", "x", b"12345")]
    assert o.room() == 95 and o.status()["objects"] == 1
    assert o.free(["x", "unknown"]) == 1 and o.room() == 100
    [give] = o.get("x", ME, "w1", 0.0)
    assert give.data is None and "ObjectLost" in give.error


def test_a_full_store_refuses_a_put_and_keeps_what_it_has():
    o = Objects(ME, max_bytes=10)
    assert o.put("x", b"1234567")
    assert not o.put("y", b"12345")  # no room
    assert not o.put("x", b"1")  # id taken
    assert o.counters["refused"] == 2 and o.serve("x") == (b"1234567", "")


def test_one_fetch_per_object_however_many_readers_and_a_cached_copy_after():
    o = Objects(ME)
    assert o.get("x", HOLDER, "w1", 0.0) == [FetchFrom(HOLDER, "x")]
    assert o.get("x", HOLDER, "w2", 0.1) == []  # joins the fetch in flight
    assert o.fetched("x", b"data") == [Give("w1", "x", b"data"), Give("w2", "x", b"data")]
    assert o.get("x", HOLDER, "w3", 0.2) == [Give("w3", "x", b"data")]  # from the cache
    assert o.counters["fetched"] == 1 and o.counters["cache_hits"] == 1
    assert o.fetched("x", b"late") == []  # nobody waits any more


def test_a_lost_holder_fails_its_fetches_and_others_go_on():
    o = Objects(ME)
    o.get("x", HOLDER, "w1", 0.0)
    o.get("y", OTHER, "w2", 0.0)
    [give] = o.holder_lost(HOLDER, "died")
    assert give.waiter == "w1" and give.data is None and "died" in give.error
    assert list(o.fetching) == ["y"]


def test_a_fetch_without_answer_times_out_and_a_refusal_is_an_error():
    o = Objects(ME, fetch_timeout=5.0)
    o.get("x", HOLDER, "w1", 0.0)
    assert o.tick(4.0) == []
    [give] = o.tick(5.5)
    assert give.data is None and "no answer" in give.error
    o.get("y", HOLDER, "w2", 6.0)
    [give] = o.fetched("y", None, "ObjectLost: freed")
    assert give.error == "ObjectLost: freed"


def test_objects_of_a_dead_origin_are_dropped():
    o = Objects(ME)
    o.put("x", b"1", origin=OTHER)
    o.put("y", b"22", origin=HOLDER)
    assert o.origin_lost(OTHER) == 1 and o.has("y") and not o.has("x") and o.nbytes == 2


def test_the_cache_is_bounded_least_recently_used_first():
    o = Objects(ME, cache_bytes=10)
    for oid in "abc":
        o.get(oid, HOLDER, "w", 0.0)
        o.fetched(oid, b"1234")
    assert list(o.cache) == ["b", "c"] and o.cached == 8
    assert o.serve("c") == (b"1234", "")  # a cached copy is served to others too


def test_refs_and_object_lost_survive_pickling():
    r1 = Ref("1" * 32, HOLDER, 10)
    assert pickle.loads(pickle.dumps(r1)) == r1
    exc = pickle.loads(pickle.dumps(ObjectLost("x", "gone")))
    assert exc.oid == "x" and str(exc) == "gone"


def test_lineage_reruns_a_producer_once_for_many_readers_and_renames_its_output():
    lin = Lineage(max_reruns=2)
    old = Ref("1" * 32, HOLDER, 10)
    lin.record("t1", "ready", "call", ("fn", (1,), {}, [], [], 1, None), [("v1", old)])
    lin.record("t2", "ready", "call", ("fn", (), {}, [], [], 1, None), [("v2", 42)])  # inline
    assert "t2" not in lin.entries
    assert lin.recover(old.oid, ("resubmit", "c1")) == "started"
    assert lin.recover(old.oid, ("resubmit", "c2")) == "joined"
    new = Ref("2" * 32, OTHER, 10)
    waiting, changes = lin.rerun_done("t1", [("v1", new)])
    assert waiting == [("resubmit", "c1"), ("resubmit", "c2")] and changes == [("v1", old, new)]
    assert lin.recover(old.oid, ("resubmit", "c3")) == "ready"  # already made again
    assert lin.latest(old.oid) is new
    assert lin.recover(new.oid, "x") == "started"
    lin.rerun_failed("t1")
    assert lin.recover(new.oid, "x") is None  # max_reruns reached
    assert lin.recover("unknown", "x") is None


def test_lineage_sends_a_rerun_with_its_lost_inputs_replaced():
    lin = Lineage()
    a, b = Ref("a" * 32, HOLDER, 10), Ref("b" * 32, HOLDER, 10)
    lin.record("ta", "r", "c", ("f", (), {}, [], [], 1, None), [("va", a)])
    buf = [a]
    lin.record("tb", "r", "c", ("g", (a,), {"k": [a]}, [], [], 1, [a]), [("vb", b)])
    lin.recover(a.oid, ("rerun", "tb"))
    a2 = Ref("c" * 32, OTHER, 10)
    lin.rerun_done("ta", [("va", a2)])
    fn, args, kwargs, *_ = lin.payload("tb")
    assert fn == "g" and args == (a2,) and kwargs == {"k": [a2]} and buf == [a]


def dispatcher_with_peers(free_holder: int = 1) -> Dispatcher:
    d = Dispatcher("me", 1, ME, prefetch=1)
    d.peer_load(HOLDER, "holder", 1, free_holder, 0.001)
    d.peer_load(OTHER, "other", 4, 4, 0.0005)
    return d


def test_a_call_goes_where_most_of_its_input_bytes_are():
    d = dispatcher_with_peers()
    call = Call("c1", "", b"p", inputs=[Holding(HOLDER, 4_000_000), Holding(OTHER, 10)])
    [act] = d.submit(call, b"client")
    assert isinstance(act, Forward) and act.peer_id == HOLDER
    # its data is here: it runs here even though a peer has more free slots
    [act] = d.submit(Call("c2", "", b"p", inputs=[Holding(ME, 4_000_000)]), b"client")
    assert isinstance(act, RunLocal)


def test_locality_yields_to_a_busy_holder_and_to_scattered_inputs():
    d = dispatcher_with_peers(free_holder=0)
    d.peers.slots[HOLDER].queued = 1  # its queue for us is full (prefetch 1 per slot)
    [act] = d.submit(Call("c1", "", b"p", inputs=[Holding(HOLDER, 4_000_000)]), b"client")
    assert isinstance(act, RunLocal)  # not waiting behind the holder's queue: fetch instead
    d2 = dispatcher_with_peers()
    spread = [Holding(HOLDER, 300), Holding(OTHER, 400), Holding(ME, 350)]
    [act] = d2.submit(Call("c2", "", b"p", inputs=spread), b"client")
    assert isinstance(act, RunLocal)  # no agent holds half: placed as any call
    d3 = dispatcher_with_peers()
    d3.peer_suspect(HOLDER)
    [act] = d3.submit(Call("c3", "", b"p", inputs=[Holding(HOLDER, 10)]), b"client")
    assert isinstance(act, RunLocal)


def test_a_busy_holder_keeps_a_call_on_its_data_while_its_queue_is_short():
    d = Dispatcher("me", 1, ME, prefetch=1)
    d.peer_load(OTHER, "other", 4, 4, 0.0005)  # idle, but the data is here
    [act] = d.submit(Call("c0", "", b"p"), b"client")
    assert isinstance(act, RunLocal) and d.free == 0
    assert d.submit(Call("c1", "", b"p", inputs=[Holding(ME, 4_000_000)]), b"client") == []
    assert list(d.backlog) == ["c1"]  # waits for our slot rather than moving 4 MB
    # a second one would wait behind it: it goes to the idle peer, which fetches
    [act] = d.submit(Call("c2", "", b"p", inputs=[Holding(ME, 4_000_000)]), b"client")
    assert isinstance(act, Forward) and act.peer_id == OTHER and act.call.call_id == "c2"
    assert list(d.backlog) == ["c1"]


def _big(n):
    return b"x" * n


@pytest.mark.timeout(60)
def test_a_worker_keeps_an_output_only_if_it_fits_the_store_and_a_frame():
    """Real worker processes: outputs above inline_max go to the store (a put, then a
    Ref in the result) unless bigger than the pool's max_put (they must be fetchable in
    one frame) or the room left: then they travel inline."""
    import select
    import time

    import cloudpickle

    from mesh.agent.pool import WorkerPool
    from mesh.program.taskexec import _execute

    pool = WorkerPool(1, "w", {"MESH_AGENT_ID": ME})
    try:
        pool.inline_max, pool.room, pool.max_put = 1000, lambda: 1 << 20, 50_000

        def run(n: int):
            payload = cloudpickle.dumps((_execute, (_big, (n,), {}, [], [], 1), {}))
            assert pool.run(Call(f"c{n}", "", payload)) is None
            w = pool.workers[0]
            results: list = []
            deadline = time.monotonic() + 30
            while not results:
                assert time.monotonic() < deadline, "no result from the worker"
                if select.select([w.fileno()], [], [], 1)[0]:  # (readable() wants it ready)
                    results = pool.readable(w)
            puts, pool.puts = pool.puts, []
            return pickle.loads(results[0].value)[0], puts

        value, puts = run(20_000)  # kept: a Ref, and the bytes went to the agent
        assert type(value) is Ref and value.holder == ME and len(puts) == 1
        assert puts[0][1] == value.oid and pickle.loads(puts[0][2]) == b"x" * 20_000
        value, puts = run(80_000)  # over max_put: inline
        assert value == b"x" * 80_000 and puts == []
        value, puts = run(500)  # small: inline, not even measured
        assert value == b"x" * 500 and puts == []
    finally:
        pool.close()
