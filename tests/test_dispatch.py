"""Tests for mesh.sched.dispatch: where each call runs and where its result goes.

The dispatcher is a pure state machine: tests feed it events and assert on the
returned ``RunLocal``/``Forward``/``Deliver`` actions. A randomized test drives it
through long event sequences and checks its invariants after every step.

Here: placement, the backlog, results and draining, self-clocked spreading. Failures of
peers, loops and strangers: ``tests/test_dispatch_peers.py``; the randomized tests:
``tests/test_dispatch_random.py``; builders and ``check``: ``tests/dispatch_helpers.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from mesh.sched.dispatch import Deliver, Dispatcher, Forward, KillLocal, RunLocal, SendTo
from mesh.wire.messages import MAX_LIST, Call, Handback, Result, encode
from tests.dispatch_helpers import (
    CLIENT,
    call,
    check,
    failures,
    forwards,
    ok,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- placement


def test_runs_locally_while_slots_are_free():
    d = Dispatcher("a", cpus=2)
    d.peer_load("p", "p", 8, 8, 0.001)  # an idle peer does not lure calls away
    assert d.submit(call(1), CLIENT) == [RunLocal(call(1))]
    assert d.submit(call(2), CLIENT) == [RunLocal(call(2))]
    assert (d.running, d.free) == (2, 0)
    assert forwards(d.submit(call(3), CLIENT)) == [("p", "c3")]
    assert d.counters["accepted"] == 3 and d.counters["forwarded"] == 1
    check(d)


def test_when_full_delegates_to_the_most_free_peer_with_one_more_hop():
    d = Dispatcher("a", cpus=0)
    d.peer_load("p1", "p1", 4, 2, 0.010)
    d.peer_load("p2", "p2", 4, 3, 0.050)
    d.peer_load("p3", "p3", 4, 3, 0.020)  # as free as p2, closer
    (fwd,) = d.submit(call(1, hops=1), CLIENT)
    assert fwd == Forward("p3", call(1, hops=2))
    assert d.pending["c1"].where == "p3"


def test_estimates_decrease_as_calls_are_delegated_so_there_is_no_herd():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), CLIENT)  # the local slot
    d.peer_load("p1", "p1", 4, 3, 0.010)
    d.peer_load("p2", "p2", 4, 2, 0.001)
    placed = [forwards(d.submit(call(n), CLIENT))[0][0] for n in range(1, 6)]
    # p1 3 free, p2 2: p1; 2 vs 2 -> p2 (closer); 2 vs 1 -> p1; 1 vs 1 -> p2; 1 vs 0 -> p1
    assert placed == ["p1", "p2", "p1", "p2", "p1"]
    assert Counter(placed) == {"p1": 3, "p2": 2}
    assert d.peers.slots["p1"].est_free == 0 and d.peers.slots["p2"].est_free == 0
    assert d.submit(call(6), CLIENT) == []  # everyone believed full: wait here
    assert d.queued == 1
    # a heartbeat resets the estimate to what the peer reports
    assert forwards(d.peer_load("p2", "p2", 4, 1, 0.001)) == [("p2", "c6")]
    check(d)


def test_never_forwards_back_to_the_peer_a_call_came_from():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), CLIENT)
    d.peer_load("p1", "p1", 8, 8, 0.001)
    d.peer_load("p2", "p2", 2, 1, 0.100)
    assert forwards(d.submit(call(1, hops=1), b"p1-conn", from_peer="p1")) == [("p2", "c1")]
    # only the sender has room: the call waits here
    assert d.submit(call(2, hops=1), b"p1-conn", from_peer="p1") == []
    assert d.pending["c2"].where == "backlog"
    check(d)


def test_never_forwards_to_a_peer_that_already_lost_the_call():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), CLIENT)
    d.peer_load("p1", "p1", 8, 8, 0.001)
    d.peer_load("p2", "p2", 1, 1, 0.100)
    assert forwards(d.submit(call(1), CLIENT)) == [("p1", "c1")]
    assert forwards(d.peer_lost("p1")) == [("p2", "c1")]
    d.peer_load("p1", "p1", 8, 8, 0.001)  # p1 is back, with room
    assert forwards(d.peer_lost("p2")) == []  # tried both: wait for the local slot
    assert d.pending["c1"].where == "backlog"
    acts = d.local_done(ok("c0"))
    assert RunLocal(call(1)) in acts
    check(d)


def test_hop_limit_for_an_agent_without_slots():
    d = Dispatcher("a", cpus=0, max_hops=3)
    d.peer_load("p", "p", 4, 4, 0.001)
    assert d.submit(call(1, hops=2), CLIENT) == [Forward("p", call(1, hops=3))]
    acts = d.submit(call(2, hops=3), b"p0", from_peer="p0")
    assert failures(acts) == [(b"p0", "c2", "NoCapacity")]
    assert "c2" not in d.pending and d.counters["failed"] == 1
    check(d)


def test_hop_limit_for_a_full_agent_with_slots_means_waiting_here():
    d = Dispatcher("a", cpus=1, max_hops=2)
    d.submit(call(0), CLIENT)
    d.peer_load("p", "p", 4, 4, 0.001)
    assert d.submit(call(1, hops=2), b"p0", from_peer="p0") == []
    assert d.pending["c1"].where == "backlog"
    assert d.local_done(ok("c0"))[-1] == RunLocal(call(1, hops=2))


def test_agent_without_slots_delegates_to_the_least_loaded_peer_even_when_all_are_full():
    d = Dispatcher("a", cpus=0)
    d.peer_load("big", "big", 4, 0, 0.050)
    d.peer_load("small", "small", 2, 0, 0.001)
    d.peer_load("none", "none", 0, 0, 0.0001)  # no slots at all: never chosen
    # both 100% loaded: the closer one first; then its estimate is worse
    placed = [forwards(d.submit(call(n), CLIENT))[0][0] for n in range(4)]
    assert placed == ["small", "big", "big", "small"]
    assert "none" not in placed
    check(d)


def test_agent_without_slots_and_without_peers_waits_for_one():
    d = Dispatcher("a", cpus=0)
    assert d.submit(call(1), CLIENT) == []
    assert d.queued == 1
    assert d.peer_load("p", "p", 0, 0, None) == []  # a peer without slots does not help
    assert forwards(d.peer_load("q", "q", 1, 0, None)) == [("q", "c1")]
    assert d.peers.slots["q"].rtt == 1.0  # unknown round trip: assumed slow


# ----------------------------------------------------------------------------- backlog


def test_backlog_is_fifo_and_spills_over_to_a_peer_reporting_free_slots():
    d = Dispatcher("a", cpus=1)
    assert d.submit(call(1), CLIENT) == [RunLocal(call(1))]
    for n in (2, 3, 4):
        assert d.submit(call(n), CLIENT) == []
    assert list(d.backlog) == ["c2", "c3", "c4"] and d.queued == 3
    assert forwards(d.peer_load("p", "p", 2, 2, 0.01)) == [("p", "c2"), ("p", "c3")]
    assert d.queued == 1
    acts = d.local_done(ok("c1"))
    assert acts == [Deliver(CLIENT, ok("c1")), RunLocal(call(4))]
    assert d.queued == 0 and d.running == 1
    check(d)


def test_local_done_frees_a_slot_for_the_next_backlog_call_even_on_failure():
    d = Dispatcher("a", cpus=2)
    for n in range(5):
        d.submit(call(n), b"c%d" % n)
    assert d.running == 2 and list(d.backlog) == ["c2", "c3", "c4"]
    failed = Result("c1", False, b"", "a", "ZeroDivisionError", "division by zero", "tb")
    assert d.local_done(failed) == [Deliver(b"c1", failed), RunLocal(call(2))]
    assert d.counters["failed"] == 1
    assert d.local_done(ok("c0")) == [Deliver(b"c0", ok("c0")), RunLocal(call(3))]
    assert d.counters["done"] == 1
    assert d.running == 2 and list(d.backlog) == ["c4"]
    check(d)


def test_set_cpus_starts_waiting_calls():
    d = Dispatcher("a", cpus=0)
    d.submit(call(1), CLIENT)
    d.submit(call(2), CLIENT)
    assert d.set_cpus(1) == [RunLocal(call(1))]
    assert d.set_cpus(-3) == [] and d.cpus == 0
    assert d.set_cpus(4) == [RunLocal(call(2))]


# ----------------------------------------------------------------------------- results


def test_first_result_is_delivered_exactly_once_and_duplicates_are_counted():
    d = Dispatcher("a", cpus=0)
    d.peer_load("p", "p", 4, 4, 0.001)
    d.submit(call(1), b"who")
    assert d.remote_result(ok("c1"), "p") == [Deliver(b"who", ok("c1"))]
    assert d.remote_result(ok("c1"), "p") == []
    assert d.remote_result(Result("c1", False, b"", "p", "E", "e"), "p") == []
    assert d.remote_result(ok("never-sent"), "p") == []
    assert d.counters["duplicate_results"] == 3 and d.counters["done"] == 1
    assert d.idle()


def test_a_call_asked_again_joins_the_first_and_both_get_the_one_result():
    d = Dispatcher("a", cpus=1)
    assert d.submit(call(1), b"first") == [RunLocal(call(1))]
    assert d.submit(call(1), b"second") == []  # no second run, no error
    assert d.submit(call(1), b"second") == []  # a retransmission: nothing new
    assert [r.identity for r in d.pending["c1"].requesters] == [b"first", b"second"]
    assert d.running == 1 and d.counters["joined"] == 1 and d.counters["accepted"] == 1
    assert d.local_done(ok("c1")) == [Deliver(b"first", ok("c1")), Deliver(b"second", ok("c1"))]
    # once finished, the id may be used again
    assert d.submit(call(1), b"third") == [RunLocal(call(1))]


def test_draining_rejects_client_calls_accepts_peer_calls_and_hands_the_backlog_over():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), b"c0")
    d.submit(call(1), b"c1")
    d.submit(call(2), b"c2")
    d.peer_load("p1", "p1", 4, 0, 0.01)  # no free slots reported
    d.peer_load("p2", "p2", 4, 0, 0.02)
    acts = d.drain()
    assert d.draining and d.cpus == 0 and d.free == 0
    assert forwards(acts) == [("p1", "c1"), ("p2", "c2")]  # least loaded, spread
    assert d.queued == 0
    assert failures(d.submit(call(3), b"c3")) == [(b"c3", "c3", "AgentLeaving")]
    assert forwards(d.submit(call(4, hops=1), b"p1", from_peer="p1")) == [("p2", "c4")]
    # the running call finishes and nothing new starts here
    assert d.local_done(ok("c0")) == [Deliver(b"c0", ok("c0"))]
    assert d.running == 0 and not [a for a in d.set_cpus(0) if isinstance(a, RunLocal)]
    check(d)


def test_drain_fails_calls_at_the_hop_limit_and_still_hands_over_the_rest():
    d = Dispatcher("a", cpus=1, max_hops=2)
    d.submit(call(0), b"c0")
    d.submit(call(1, hops=2), b"c1", from_peer="p0")
    d.submit(call(2, hops=2), b"c2", from_peer="p0")
    d.submit(call(3), b"c3")
    d.peer_load("p1", "p1", 4, 4, 0.01)
    acts = d.drain()
    assert failures(acts) == [(b"c1", "c1", "NoCapacity"), (b"c2", "c2", "NoCapacity")]
    assert forwards(acts) == [("p1", "c3")]
    assert d.queued == 0 and list(d.backlog) == []
    check(d)


def test_max_pending_bound():
    d = Dispatcher("a", cpus=1, max_pending=3)
    for n in range(3):
        d.submit(call(n), b"c%d" % n)
    assert failures(d.submit(call(3), b"c3")) == [(b"c3", "c3", "Overloaded")]
    assert failures(d.submit(call(4, hops=1), b"p", from_peer="p")) == [(b"p", "c4", "Overloaded")]
    assert len(d.pending) == 3 and d.counters["rejected"] == 2
    d.local_done(ok("c0"))
    assert d.submit(call(5), b"c5") == []  # room again (queued behind c1, c2)
    assert len(d.pending) == 3


def test_failure_results_name_this_agent():
    d = Dispatcher("edge-7", cpus=0, max_hops=0)
    (deliver,) = d.submit(call(1), CLIENT)
    assert deliver.result.agent == "edge-7" and deliver.result.value == b""
    assert not deliver.result.ok and "0 hops" in deliver.result.error


# ----------------------------------------------------------------------------- self-clocked spreading


def test_results_carry_load_so_a_busy_origin_keeps_its_peers_fed():
    d = Dispatcher("a", cpus=1, node_id="A", prefetch=1)
    d.peer_load("p", "p", 2, 2, 0.001)
    acts = [a for i in range(8) for a in d.submit(call(i), CLIENT)]
    # 1 here, 2 to p's free slots, 2 more queued at p (prefetch 1 per slot), 3 wait here
    assert [type(a).__name__ for a in acts].count("RunLocal") == 1
    assert [f[0] for f in forwards(acts)] == ["p"] * 4
    assert d.queued == 3
    # p finishes one and says it has 0 free, 1 queued: room for one more from us
    done = forwards(acts)[0][1]
    acts = d.remote_result(Result(done, True, b"", "p", free=0, queued=1), "p")
    assert forwards(acts) == [("p", "c5")] and d.queued == 2


def test_a_call_is_queued_at_a_peer_only_if_it_would_start_sooner_there():
    d = Dispatcher("a", cpus=4, node_id="A", prefetch=4)
    d.peer_load("p", "p", 1, 0, 0.001, queued=3)  # one slot, three waiting: 4 deep
    acts = [a for i in range(5) for a in d.submit(call(i), CLIENT)]
    assert forwards(acts) == []  # our own queue is shorter per slot
    assert d.queued == 1
    assert d.placement.prefetch == 4 and Dispatcher("b", 1).placement.prefetch == 0  # off unless the agent asks


def test_calls_cancelled_for_an_origin_that_comes_back_are_handed_back_to_it():
    # the race seen on a loaded machine: the origin refuted a suspicion before our
    # death verdict reached it, so it never learnt it was declared dead and still waits
    c = Dispatcher("c", cpus=1, node_id="C")
    c.submit(Call("x", "m:f", b"", 1, "A"), b"A", from_peer="A")
    c.submit(Call("y", "m:f", b"", 2, "A"), b"B", from_peer="B")  # A -> B -> C
    assert c.peer_lost("A") == [KillLocal("x")]  # y waits in the backlog: just dropped
    assert c.idle()
    acts = c.peer_alive("A")
    reason = "cancelled while its origin seemed dead"
    assert acts == [SendTo("A", Handback("x", reason)), SendTo("B", Handback("y", reason))]
    assert c.peer_alive("A") == []  # once
    a = Dispatcher("a", cpus=0, node_id="A")
    a.peer_load("C", "c", 1, 1, 0.001)
    (fwd,) = a.submit(Call("x", "m:f", b""), CLIENT)
    (again,) = a.handed_back("x", "C")  # C is the only agent with slots: it is used again
    assert again.peer_id == "C" and again.call.attempt == 1


def test_orphan_records_are_bounded():
    c = Dispatcher("c", cpus=0, node_id="C", max_orphans=3)
    c.peer_load("D", "d", 9, 9, 0.001)
    for i in range(5):
        c.submit(Call(f"x{i}", "m:f", b"", 1, f"O{i}"), b"P", from_peer="P")
        c.peer_lost(f"O{i}")
    assert sum(map(len, c.peers.orphans.values())) == 3 and list(c.peers.orphans) == ["O2", "O3", "O4"]


def test_a_call_from_a_peer_counts_at_least_one_hop_per_agent_it_visited():
    """A peer's call that says hops=0 but lists MAX_LIST agents it visited is not passed
    on: each forward adds one to ``visited``, which would then be longer than a frame's
    list may be (encode refuses it) and grow with every hop."""
    a = Dispatcher("a", cpus=0, node_id="A")
    a.peer_load("B", "b", 1, 1, 0.001)
    bad = Call("c", "m:f", b"", 0, "O", [f"{i:032x}" for i in range(MAX_LIST)])
    (act,) = a.submit(bad, b"P", from_peer="P")
    assert isinstance(act, Deliver) and act.result.error_type == "NoCapacity"
    (fwd,) = a.submit(Call("d", "m:f", b"", 1, "O", ["P"]), b"P", from_peer="P")
    assert fwd.peer_id == "B" and fwd.call.hops == 2 and fwd.call.visited == ["P", "A"]
    encode(fwd.call)


def test_orphans_handed_back_make_room_for_new_ones():
    """Issue 17: records popped by ``peer_alive`` were not taken off a count kept beside
    the table, so after ``max_orphans`` hand-backs in all every new orphan was forgotten
    at once and its Handback never sent (its requester waited on a live holder)."""
    c = Dispatcher("c", cpus=1, node_id="C", max_orphans=3)
    reason = "cancelled while its origin seemed dead"
    for i in range(10):
        origin = f"O{i % 2}"
        c.submit(Call(f"x{i}", "m:f", b"", 1, origin), b"P", from_peer="P")
        assert c.peer_lost(origin) == [KillLocal(f"x{i}")]
        assert c.peer_alive(origin) == [SendTo("P", Handback(f"x{i}", reason))], i
        assert c.peers.orphans == {}
    # the bound still holds, and forgets the oldest records first
    for i in range(5):
        c.submit(Call(f"y{i}", "m:f", b"", 1, "O9"), b"P", from_peer="P")
        c.submit(Call(f"z{i}", "m:f", b"", 1, f"Q{i}"), b"P", from_peer="P")
        c.local_done(Result(f"y{i}", True, b"", "c"))
        c.peer_lost(f"Q{i}")
    assert c.peers.orphans == {"Q2": [("z2", "P")], "Q3": [("z3", "P")], "Q4": [("z4", "P")]}


def test_a_call_avoiding_this_agent_goes_elsewhere_if_anyone_can_take_it():
    d = Dispatcher("a", cpus=2, node_id="A")
    retry = Call("r", "m:f", b"", avoid=["a"])
    assert d.submit(retry, CLIENT) == [RunLocal(replace(retry, origin="A"))]  # nobody else
    d.peer_load("B", "b", 1, 0, 0.001)  # busy, but it can queue it
    d.peer_load("C", "c", 1, 1, 0.001)
    d.peer_load("X", "x", 4, 4, 0.001)  # free, but an attempt failed there too
    (fwd,) = d.submit(Call("r2", "m:f", b"", avoid=["a", "x"]), CLIENT)
    assert fwd.peer_id == "C"
    (fwd,) = d.submit(Call("r3", "m:f", b"", avoid=["a", "x"]), CLIENT)
    assert fwd.peer_id == "B"  # no one free: the least loaded of those not avoided
    assert d.submit(Call("r4", "m:f", b"", avoid=["x"]), CLIENT)[0] == RunLocal(
        Call("r4", "m:f", b"", origin="A", avoid=["x"]))


def test_a_slow_slot_gets_work_only_while_our_queue_is_long():
    d = Dispatcher("hub", cpus=1, node_id="H", prefetch=1)
    d.peer_load("P", "pi", 1, 1, 0.001, speed=0.25)  # a quarter of a core
    d.submit(call(0), CLIENT)  # runs here
    assert forwards(d.submit(call(1), CLIENT)) == []  # done here in 2 task times, there in 4
    assert forwards(d.submit(call(2), CLIENT)) == []
    assert forwards(d.submit(call(3), CLIENT)) == [("P", "c1")]  # the queue is long now
    assert forwards(d.peer_load("F", "fast", 1, 1, 0.001, speed=1.0)) == [("F", "c2")]  # at once
    done = Result("c1", True, b"", "pi", free=1, queued=0)
    assert d.queued == 1 and forwards(d.remote_result(done, "P")) == []  # short queue: not to pi
