"""Tests for mesh.sched.dispatch: failures of peers (lost, suspect, forward failed), loops,
strangers, dead origins, cancels, leaving and abandoning, slots lent by blocked calls.

Builders and ``check`` (the invariants after every event): ``tests/dispatch_helpers.py``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mesh.sched.dispatch import Deliver, Dispatcher, Forward, KillLocal, RunLocal, SendTo
from mesh.wire.messages import Call, Cancel, Handback, Result
from tests.dispatch_helpers import (
    CLIENT,
    call,
    check,
    failures,
    forwards,
    ok,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- failures of peers


def test_peer_lost_replaces_its_calls_then_fails_them_after_max_attempts():
    d = Dispatcher("a", cpus=0, max_attempts=2)
    for p in ("p1", "p2", "p3", "p4"):
        d.peer_load(p, p, 4, 4, {"p1": 0.1, "p2": 0.2, "p3": 0.3, "p4": 0.4}[p])
    assert forwards(d.submit(call(1), CLIENT)) == [("p1", "c1")]
    assert forwards(d.peer_lost("p1")) == [("p2", "c1")]
    assert forwards(d.peer_lost("p2")) == [("p3", "c1")]
    assert d.pending["c1"].attempts == 2 and d.pending["c1"].tried == {"p1", "p2"}
    assert failures(d.peer_lost("p3")) == [(CLIENT, "c1", "PeerLost")]
    assert "c1" not in d.pending and "p3" not in d.peers.slots
    # a late result from a lost holder is a duplicate now
    assert d.remote_result(ok("c1"), "p1") == []
    assert d.counters["duplicate_results"] == 1
    check(d)


def test_peer_lost_leaves_other_calls_alone():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), CLIENT)
    d.peer_load("p1", "p1", 1, 1, 0.1)
    d.peer_load("p2", "p2", 1, 1, 0.2)
    d.submit(call(1), CLIENT)
    d.submit(call(2), CLIENT)
    assert (d.pending["c1"].where, d.pending["c2"].where) == ("p1", "p2")
    assert d.peer_lost("p1") == [SendTo("p1", Cancel("c1", "re-placed: you were lost"))]  # waits here
    assert d.pending["c1"].where == "backlog" and d.pending["c2"].where == "p2"
    assert d.peer_lost("unknown") == []
    check(d)


def test_late_result_from_a_lost_but_slow_peer_wins_once():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), CLIENT)
    d.peer_load("p1", "p1", 1, 1, 0.1)
    d.submit(call(1), b"c1")
    d.peer_lost("p1")
    assert d.pending["c1"].where == "backlog"
    assert d.remote_result(ok("c1", "p1"), "p1") == [Deliver(b"c1", ok("c1", "p1"))]
    # the copy waiting here is not run: its entry is gone
    acts = d.local_done(ok("c0"))
    assert acts == [Deliver(CLIENT, ok("c0"))]
    assert d.running == 0
    check(d)


def test_peer_suspect_stops_new_delegations_but_its_calls_stay():
    d = Dispatcher("a", cpus=0)
    d.peer_load("p1", "p1", 4, 4, 0.001)
    d.peer_load("p2", "p2", 4, 1, 0.100)
    assert forwards(d.submit(call(1), CLIENT)) == [("p1", "c1")]
    assert d.peer_suspect("p1") == []
    assert d.pending["c1"].where == "p1"
    assert forwards(d.submit(call(2), CLIENT)) == [("p2", "c2")]
    assert forwards(d.submit(call(3), CLIENT)) == [("p2", "c3")]  # p2 full, but not p1
    assert d.remote_result(ok("c1"), "p1") == [Deliver(CLIENT, ok("c1"))]
    # a heartbeat from it makes it a candidate again
    assert forwards(d.peer_load("p1", "p1", 4, 4, 0.001)) == []
    assert forwards(d.submit(call(4), CLIENT)) == [("p1", "c4")]


def test_forward_failed_places_the_call_elsewhere():
    d = Dispatcher("a", cpus=1)
    d.submit(call(0), CLIENT)
    d.peer_load("p1", "p1", 4, 4, 0.001)
    d.peer_load("p2", "p2", 4, 1, 0.100)
    d.submit(call(1), CLIENT)
    assert d.forward_failed("c1", "p2") == []  # not where it is
    assert d.forward_failed("nope", "p1") == []
    assert forwards(d.forward_failed("c1", "p1")) == [("p2", "c1")]
    assert d.forward_failed("c1", "p2") == []  # nowhere left: wait here
    assert d.pending["c1"].where == "backlog" and d.pending["c1"].tried == {"p1", "p2"}
    assert d.local_done(ok("c0"))[-1] == RunLocal(call(1))
    check(d)


# ----------------------------------------------------------------------------- loops, strangers


def test_a_call_never_goes_back_to_an_agent_that_delegated_it():
    # A (full) -> B (full) -> C (full): C must not send it back to A or B, even though
    # stale load news says they have free slots; it queues instead.
    a = Dispatcher("a", cpus=1, node_id="A")
    a.submit(call("busy"), CLIENT)
    a.peer_load("B", "b", 1, 1, 0.001)
    (fwd,) = [x for x in a.submit(call(1), CLIENT) if isinstance(x, Forward)]
    assert fwd.call.visited == ["A"]
    b = Dispatcher("b", cpus=1, node_id="B")
    b.submit(call("busy-b"), CLIENT)
    b.peer_load("A", "a", 1, 1, 0.001)
    b.peer_load("C", "c", 1, 1, 0.001)
    (fwd2,) = [x for x in b.submit(fwd.call, b"A-conn", from_peer="A") if isinstance(x, Forward)]
    assert fwd2.peer_id == "C" and fwd2.call.visited == ["A", "B"]
    c = Dispatcher("c", cpus=1, node_id="C")
    c.submit(call("busy-c"), CLIENT)
    c.peer_load("A", "a", 1, 1, 0.001)
    c.peer_load("B", "b", 1, 1, 0.001)
    assert forwards(c.submit(fwd2.call, b"B-conn", from_peer="B")) == []
    assert c.pending[fwd2.call.call_id].where == "backlog"


def test_a_result_from_a_member_that_never_held_the_call_is_taken_and_the_holder_stopped():
    # the far end of a chain (origin -> p -> far) answers the origin directly
    d = Dispatcher("a", cpus=0)
    d.peer_load("p", "p", 1, 1, 0.001)
    (peer, call_id), = forwards(d.submit(call(1), CLIENT))
    acts = d.remote_result(ok(call_id), "far")
    assert acts == [Deliver(CLIENT, ok(call_id)),
                    SendTo(peer, Cancel(call_id, "its result arrived from elsewhere"))]
    assert d.remote_result(ok(call_id), peer) == []
    assert d.counters["duplicate_results"] == 1 and d.idle()


def test_a_late_result_from_a_lost_holder_is_still_accepted_once():
    d = Dispatcher("a", cpus=0)
    d.peer_load("p", "p", 1, 1, 0.001)
    d.peer_load("q", "q", 1, 1, 0.001)
    (first, call_id), = forwards(d.submit(call(1), CLIENT))
    cancel, fwd = d.peer_lost(first)
    assert cancel == SendTo(first, Cancel(call_id, "re-placed: you were lost"))  # read if it wakes
    assert fwd.peer_id != first and fwd.call.attempt == 1
    acts = d.remote_result(ok(call_id), first)  # the lost one was only slow
    assert acts == [Deliver(CLIENT, ok(call_id)),
                    SendTo(fwd.peer_id, Cancel(call_id, "its result arrived from elsewhere"))]
    assert d.remote_result(ok(call_id), fwd.peer_id) == []
    assert d.counters["duplicate_results"] == 1 and d.counters["reassigned"] == 1


def chain():
    """A (origin, full) -> B (full) -> C (runs it)."""
    a, b, c = (Dispatcher(n, cpus=1, node_id=n.upper()) for n in "abc")
    a.submit(call("busy-a"), CLIENT)
    b.submit(call("busy-b"), CLIENT)
    a.peer_load("B", "b", 1, 1, 0.001)
    a.peer_load("D", "d", 1, 1, 0.002)
    b.peer_load("C", "c", 1, 1, 0.001)
    (fa,) = [x for x in a.submit(Call("t", "m:f", b""), b"prog") if isinstance(x, Forward)]
    assert fa.peer_id == "B" and fa.call.origin == "A"
    (fb,) = [x for x in b.submit(fa.call, b"A", from_peer="A") if isinstance(x, Forward)]
    assert fb.peer_id == "C"
    assert c.submit(fb.call, b"B", from_peer="B") == [RunLocal(fb.call)]
    return a, b, c


def test_when_the_middle_of_a_chain_dies_the_far_result_reaches_the_origin_once():
    a, b, c = chain()
    _, again = a.peer_lost("B")  # A re-places its call on D (and tells B, were it only frozen)
    assert isinstance(again, Forward) and again.peer_id == "D" and again.call.attempt == 1
    assert c.peer_lost("B") == []  # C keeps running it, for the origin now
    assert c.counters["redirected"] == 1
    res = Result("t", True, b"42", "c")
    (send,) = c.local_done(res)
    assert send == SendTo("A", replace(res, free=1, queued=0))  # with C's load news
    acts = a.remote_result(send.message, "C")
    assert acts == [Deliver(b"prog", send.message),
                    SendTo("D", Cancel("t", "its result arrived from elsewhere"))]
    assert a.remote_result(Result("t", True, b"42", "d"), "D") == []  # D was too slow: dropped


def test_calls_of_a_dead_origin_are_cancelled_down_their_path():
    a, b, c = chain()
    b.submit(Call("queued", "m:f", b"", 1, "A"), b"A", from_peer="A")  # waits in B's backlog
    acts = b.peer_lost("A")
    assert acts == [SendTo("C", Cancel("t", "its origin was lost"))]
    assert set(b.pending) == {"cbusy-b"} and b.counters["cancelled"] == 2
    acts = c.peer_lost("A")
    assert acts == [KillLocal("t")] and c.running == 0 and c.idle()


def test_a_caller_cancel_stops_the_call_where_it_is():
    d = Dispatcher("a", cpus=1)
    d.submit(call(1), b"x")
    assert d.cancel("c1", b"someone-else") == []  # not a requester of it: nothing
    assert d.cancel("c1", b"x") == [KillLocal("c1")] and d.running == 0 and d.idle()
    d.submit(call(2), b"x")
    d.peer_load("p", "p", 1, 1, 0.001)
    (fwd,) = d.submit(call(3), b"y")
    assert d.cancel("c3", b"y") == [SendTo("p", Cancel("c3", "cancelled by its requester"))]
    d.submit(call(4), b"z")  # p's estimated slot is taken: backlog
    assert d.cancel("c4", b"z") == [] and "c4" not in d.pending
    assert d.local_done(ok("c2")) == [Deliver(b"x", ok("c2"))]  # c4 is skipped, not run


def test_declared_dead_replaces_our_calls_and_hands_back_what_we_held_for_peers():
    d = Dispatcher("b", cpus=1, node_id="B")
    d.peer_load("C", "c", 1, 1, 0.001)
    d.peer_load("E", "e", 1, 1, 0.001)
    d.submit(Call("mine-local", "m:f", b""), CLIENT)
    d.submit(Call("mine-away", "m:f", b""), CLIENT)  # -> C or E
    d.submit(Call("theirs-away", "m:f", b"", 1, "A"), b"A", from_peer="A")  # -> the other
    d.submit(Call("theirs-queued", "m:f", b"", 1, "A"), b"A", from_peer="A")  # backlog
    held = {cid: e.where for cid, e in d.pending.items()}
    acts = d.declared_dead()
    handed = [a.message.call_id for a in acts if isinstance(a, SendTo) and isinstance(a.message, Handback)]
    assert sorted(handed) == ["theirs-away", "theirs-queued"]
    assert SendTo(held["theirs-away"], Cancel("theirs-away", "declared dead while holding it")) in acts
    assert set(d.pending) == {"mine-local", "mine-away"}
    assert d.pending["mine-away"].attempts == 1 and d.pending["mine-local"].where == "local"


def test_leaving_hands_queued_calls_back_to_their_sender():
    d = Dispatcher("b", cpus=1, node_id="B")
    d.submit(call("running"), b"A", from_peer="A")
    d.submit(call("queued"), b"A", from_peer="A")
    acts = d.drain()
    assert acts == [SendTo("A", Handback("cqueued", "the agent is leaving"))]
    assert list(d.pending) == ["crunning"]
    acts = d.abandon("AgentLeaving", "left")  # the running one, past the grace period
    assert acts == [SendTo("A", Handback("crunning", "left")), KillLocal("crunning")]
    a = Dispatcher("a", cpus=0, node_id="A")
    a.peer_load("B", "b", 1, 1, 0.001)
    a.peer_load("C", "c", 1, 1, 0.002)
    a.submit(call("x"), CLIENT)
    (fwd,) = a.handed_back("cx", "B")
    assert fwd.peer_id == "C" and a.handed_back("cx", "B") == []


def test_abandon_fails_every_pending_call_once():
    d = Dispatcher("a", cpus=1)
    for i in range(3):
        d.submit(call(i), CLIENT)
    acts = d.abandon("AgentLeaving", "bye")
    assert sorted(f[1] for f in failures(acts)) == ["c0", "c1", "c2"]
    assert d.idle() and d.queued == 0


def test_a_blocked_call_lends_its_slot_and_takes_it_back():
    d = Dispatcher("a", cpus=1)
    (run,) = [x for x in d.submit(call("parent"), CLIENT) if isinstance(x, RunLocal)]
    assert d.submit(call("child"), CLIENT) == [] and d.queued == 1  # the only slot is taken
    acts = d.lend("cparent", True)  # the parent waits for the child: its slot is lent
    assert [a.call.call_id for a in acts if isinstance(a, RunLocal)] == ["cchild"]
    assert d.lend("cparent", True) == []  # idempotent
    d.local_done(ok("cchild"))
    assert d.running == 0
    d.lend("cparent", False)  # resumes
    assert d.running == 1
    d.local_done(ok("cparent"))
    assert d.running == 0 and d.idle()
    assert d.counters["lent"] == 1 and d.counters["reclaimed"] == 1


def test_while_a_call_here_is_blocked_free_slots_go_to_the_newest_calls():
    """Depth first: the calls a blocked call waits for are, as a rule, the last ones
    submitted. Once nothing here is blocked, the backlog is first come, first placed."""
    d = Dispatcher("a", cpus=1)
    d.submit(call("old"), CLIENT)  # runs
    for name in ("older", "parent"):
        assert d.submit(call(name), CLIENT) == []
    d.local_done(ok("cold"))  # FIFO: the oldest waiting runs
    assert d.backlog[0] == "cparent" and d.running == 1
    acts = d.submit(call("child1"), CLIENT) + d.submit(call("child2"), CLIENT)
    assert acts == [] and d.queued == 3
    d.local_done(ok("colder"))  # (the parent runs, and submitted its two children above)
    assert d.running == 1 and list(d.backlog) == ["cchild1", "cchild2"]
    d.submit(call("later"), CLIENT)  # another program's call, behind them
    acts = d.lend("cparent", True)  # the parent blocks: its slot goes to the newest call
    assert [a.call.call_id for a in acts if isinstance(a, RunLocal)] == ["clater"]
    acts = d.local_done(ok("clater"))  # still blocked: the next newest
    assert [a.call.call_id for a in acts if isinstance(a, RunLocal)] == ["cchild2"]
    d.lend("cparent", False)  # resumes (over its slot for a while)
    d.submit(call("last"), CLIENT)
    assert d.local_done(ok("cchild2")) == [Deliver(CLIENT, ok("cchild2"))]  # no slot free
    acts = d.local_done(ok("cparent"))  # nothing blocked here: first come, first placed
    assert [a.call.call_id for a in acts if isinstance(a, RunLocal)] == ["cchild1"]
    assert list(d.backlog) == ["clast"]


def test_a_call_that_finishes_while_lent_does_not_free_a_slot_twice():
    d = Dispatcher("a", cpus=1)
    d.submit(call("p"), CLIENT)
    d.lend("cp", True)
    d.local_done(ok("cp"))  # (a crash while blocked)
    assert d.running == 0 and d.free == 1
