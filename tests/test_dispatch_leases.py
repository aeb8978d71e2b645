"""Leases in mesh.sched.dispatch (issue 17): a frame lost on a link that stays up, a call's
or its result's, is found out by the hop that handed the call on, which asks its holder
which calls it still holds (``Holds`` -> ``Held``) and places again what it does not; the
calls of a client that left or went silent stop; a client's Cancel reaches its calls from
a new connection. Pure dispatcher tests, one event at a time; ``mesh.sched.leases`` itself
at the end.

Builders and ``check`` (the invariants after every event): ``tests/dispatch_helpers.py``.
"""

from __future__ import annotations

import pytest

from mesh.sched.dispatch import Deliver, Dispatcher, KillLocal, RunLocal, SendTo
from mesh.sched.leases import AGENT, LOSSES_PER_ATTEMPT, ClientLeases, Leases
from mesh.wire.messages import MAX_LIST, Call, Cancel, Held, Holds
from tests.dispatch_helpers import CLIENT, call, check, failures, forwards, ok

pytestmark = pytest.mark.timeout(60)

L = 1.0  # the lease period of these tests
A_ID = bytes.fromhex("aa" * 16)  # the delegator's DEALER identity, as a holder sees it


def questions(acts) -> list[tuple[str, list[str]]]:
    return [(a.peer_id, a.message.call_ids) for a in acts
            if isinstance(a, SendTo) and isinstance(a.message, Holds)]


def at_p(n: int = 1, cpus: int = 0, **kw) -> Dispatcher:
    """An agent (``cpus`` slots) that delegated ``n`` calls of its client to peer P (Q is
    another peer, further away)."""
    d = Dispatcher("a", cpus=cpus, node_id="A", lease=L, **kw)
    d.tick(0.0)  # (the first tick starts the rounds)
    d.peer_load("P", "p", 8, 8, 0.001)
    d.peer_load("Q", "q", 8, 1, 0.050)  # (one slot free: P first)
    for i in range(n):
        assert forwards(d.submit(call(i), CLIENT)) == [("P", f"c{i}")]
    return d


# ----------------------------------------------------------------------------- asking


def test_a_call_is_asked_about_once_it_went_a_whole_period_without_news():
    d = at_p(2)
    assert d.tick(0.5) == [] and d.tick(1.0) == []  # round 1: handed on in round 0, not yet
    assert questions(d.tick(2.0)) == [("P", ["c0", "c1"])]  # round 2: a whole period without news
    assert questions(d.tick(2.5)) == []  # (once a round)
    assert questions(d.tick(3.0)) == [("P", ["c0", "c1"])]  # no answer: asked again
    assert d.counters["lease_questions"] == 2
    check(d)


def test_an_answer_that_it_holds_them_confirms_them_for_a_period():
    d = at_p(2)
    d.tick(1.0)
    d.tick(2.0)
    assert d.held(["c0", "c1"], [], "P") == []
    assert questions(d.tick(3.0)) == []
    assert questions(d.tick(4.0)) == [("P", ["c0", "c1"])]
    assert d.pending["c0"].where == "P" and d.pending["c0"].losses == 0


def test_questions_carry_at_most_max_list_ids_oldest_first():
    d = Dispatcher("a", cpus=0, node_id="A", lease=L, max_pending=MAX_LIST + 10)
    d.tick(0.0)
    d.peer_load("P", "p", MAX_LIST + 10, MAX_LIST + 10, 0.001)
    for i in range(MAX_LIST + 5):
        d.submit(call(i), CLIENT)
    d.tick(1.0)
    asked = questions(d.tick(2.0))
    assert [len(ids) for _, ids in asked] == [MAX_LIST, 5]
    assert asked[0][1][0] == "c0" and asked[1][1][-1] == f"c{MAX_LIST + 4}"


# ----------------------------------------------------------------------------- answering


def test_the_holder_answers_from_its_ledger_for_the_connection_that_asks():
    p = Dispatcher("p", cpus=1, node_id="P")
    p.submit(call(0), A_ID, "A")  # runs here, for A
    p.submit(call(1), A_ID, "A")  # waits here, for A
    p.submit(call(2), b"B" * 16, "B")  # for another member
    p.submit(call(3), b"client")  # for a client of ours
    assert p.holding(["c0", "c1", "c2", "c3", "c9"], A_ID) == Held(["c0", "c1"], ["c2", "c3", "c9"])
    assert p.holding(["c3", "c0"], b"client") == Held(["c3"], ["c0"])
    p.local_done(ok("c0"))  # (its result goes to A)
    assert p.holding(["c0", "c1"], A_ID) == Held(["c1"], ["c0"])


def test_a_call_the_holder_does_not_hold_is_placed_again_at_once_without_an_attempt():
    d = at_p(1)
    d.tick(1.0)
    d.tick(2.0)
    acts = d.held([], ["c0"], "P")  # the Call was lost on the way (or its result was)
    assert forwards(acts) == [("Q", "c0")]  # elsewhere, since P lost it
    e = d.pending["c0"]
    assert e.attempts == 0 and e.losses == 1 and e.tried == {"P"}
    assert acts[0].call.attempt == 0 and d.counters["lease_lost"] == 1
    assert d.remote_result(ok("c0"), "Q") == [Deliver(CLIENT, ok("c0"))]  # one outcome
    assert d.remote_result(ok("c0"), "P") == [] and d.counters["duplicate_results"] == 1
    check(d)


def test_an_unknown_answer_about_a_call_handed_on_again_since_is_not_believed():
    """The answer is older than the call's latest copy (which is on its way behind it)."""
    d = at_p(1)
    d.tick(1.0)
    assert questions(d.tick(2.0)) == [("P", ["c0"])]
    d.peer_load("Q", "q", 8, 0, 0.050)  # (Q is full now)
    d.handed_back("c0", "P")  # P gives it back (it is leaving) ...
    assert d.pending["c0"].where == "P"  # ... and it goes to P again, this round
    assert d.held([], ["c0"], "P") == [] and d.pending["c0"].where == "P"
    assert questions(d.tick(3.0)) == [] and questions(d.tick(4.0)) == [("P", ["c0"])]


def test_unknown_answers_about_calls_that_ended_or_moved_change_nothing():
    d = at_p(2)
    d.tick(1.0)
    d.tick(2.0)
    d.remote_result(ok("c0"), "P")  # its result came first (same connection, before the answer)
    d.peer_lost("Q")
    d.peer_lost("P")  # c1 placed again: no peer left, it waits here
    assert d.held([], ["c0", "c1"], "P") == [] and d.pending["c1"].where == "backlog"
    check(d)


def test_every_third_loss_of_a_call_counts_as_an_attempt_and_it_fails_in_the_end():
    d = Dispatcher("a", cpus=0, node_id="A", lease=L, max_attempts=1)
    d.tick(0.0)
    d.peer_load("P", "p", 8, 8, 0.001)
    d.submit(call(0), CLIENT)
    now, outcome = 0.0, []
    for _ in range(2 * LOSSES_PER_ATTEMPT):  # a link that loses everything, membership none the wiser
        for _ in range(2):
            now += L
            d.tick(now)
        outcome = failures(d.held([], ["c0"], "P"))
        if outcome:
            break
    assert outcome == [(CLIENT, "c0", "PeerLost")]
    assert d.counters["lease_lost"] == 2 * LOSSES_PER_ATTEMPT and d.idle()


def test_a_send_the_transport_refused_is_a_loss_too():
    d = at_p(1)
    for n in range(1, LOSSES_PER_ATTEMPT + 1):
        acts = d.forward_failed("c0", d.pending["c0"].where)
        assert d.pending["c0"].losses == n
    assert d.pending["c0"].attempts == 1 and forwards(acts)  # the third counted once


# ----------------------------------------------------------------------------- a suspected holder


def test_a_suspected_holder_that_answers_again_is_asked_not_sent_everything_again():
    """The nemesis' finding: ``peer_load`` after a suspicion sent the holder every call it
    had, so a call it had finished ran again when its heartbeat overtook its result (the
    heartbeat and the result travel different connections). Now it is asked, and only what
    it does not hold is placed again."""
    a = at_p(0)
    p = Dispatcher("p", cpus=1, node_id="P")
    (fwd,) = a.submit(call(0), CLIENT)
    (run,) = p.submit(fwd.call, A_ID, "A")
    assert isinstance(run, RunLocal)
    a.peer_suspect("P")
    (res,) = p.local_done(ok("c0"))  # P ran it; its result is on its way to A ...
    assert isinstance(res, Deliver) and res.identity == A_ID
    acts = a.peer_load("P", "p", 8, 8, 0.001)  # ... when P's heartbeat reaches A
    assert forwards(acts) == [] and questions(acts) == [("P", ["c0"])]  # asked, not sent again
    # the result comes first (P's ROUTER answers on the connection the question took)
    assert a.remote_result(res.result, "P") == [Deliver(CLIENT, res.result)]
    answer = p.holding(["c0"], A_ID)
    assert answer == Held([], ["c0"]) and a.held(answer.held, answer.unknown, "P") == []
    assert a.idle() and p.counters["accepted"] == 1  # it ran once


def test_what_a_suspected_holder_lost_with_the_link_is_placed_again():
    a = at_p(2)
    a.peer_suspect("P")  # the link dropped c1 meanwhile; P holds c0
    acts = a.peer_load("P", "p", 8, 8, 0.001)
    assert questions(acts) == [("P", ["c0", "c1"])]
    assert forwards(a.held(["c0"], ["c1"], "P")) == [("Q", "c1")]
    assert a.pending["c0"].where == "P" and a.pending["c1"].attempts == 0
    check(a)


def test_after_being_declared_dead_a_peer_is_asked_about_what_it_got_since():
    a = at_p(1)
    a.declared_dead()  # our calls at peers are placed again (they cancelled them): c0 to Q? no:
    assert a.pending["c0"].attempts == 1 and a.peers.suspected == {"P", "Q"}  # every peer suspected
    a.peer_load("Q", "q", 8, 8, 0.05)
    assert a.pending["c0"].where == "Q"  # placed on the first peer that reported
    a.peer_suspect("Q")
    assert questions(a.peer_load("Q", "q", 8, 8, 0.05)) == [("Q", ["c0"])]


# ----------------------------------------------------------------------------- clients


def test_the_calls_of_a_client_not_heard_from_stop():
    d = Dispatcher("a", cpus=1, node_id="A", lease=L, client_silence=3.0)  # 4 rounds of silence
    d.tick(0.0)
    d.peer_load("P", "p", 8, 8, 0.001)
    d.heard(b"gone")
    d.submit(call(0), b"gone")  # runs here
    d.submit(call(1), b"gone")  # goes to P
    d.heard(b"alive")
    d.submit(call(2), b"alive")  # goes to P
    d.submit(call(3), b"rest")  # (never heard: a REST call, the agent's own book)
    d.submit(Call("c4", "m:f", b"", 1, "B", ["B"]), b"B" * 16, "B")  # a peer's, joined below
    d.submit(call(4), b"gone")
    acts: list = []
    for r in range(1, 6):
        d.heard(b"alive")  # it asks about its calls now and then
        acts += d.tick(float(r))
    assert KillLocal("c0") in acts
    assert SendTo("P", Cancel("c1", "its client went silent")) in acts
    assert "c2" in d.pending and "c3" in d.pending  # heard from; never a lease client
    assert [r.peer for r in d.pending["c4"].requesters] == ["B"]  # the peer still wants it
    assert d.counters["client_gone"] == 2 and b"gone" not in d.clients
    check(d)


def test_a_client_whose_connection_ended_loses_its_calls_at_once():
    d = Dispatcher("a", cpus=1, node_id="A")
    d.heard(b"local-1")
    d.submit(call(0), b"local-1")
    d.submit(call(1), b"local-1")  # waits
    d.submit(call(2), b"other")
    acts = d.client_gone(b"local-1")
    assert KillLocal("c0") in acts and [x.call.call_id for x in acts if isinstance(x, RunLocal)] == ["c2"]
    assert set(d.pending) == {"c2"}
    check(d)


def test_a_clients_cancel_reaches_its_call_from_a_new_connection():
    """A client that reconnected (a new identity on our ROUTER) stops the calls it made
    over the old one: its Cancel names its session, as its calls do."""
    d = Dispatcher("a", cpus=1, node_id="A")
    d.submit(Call("c0", "m:f", b"", owner="s1"), b"old-connection")
    d.submit(Call("c1", "m:f", b"", owner="s1"), b"old-connection")
    assert d.cancel("c0", b"new-connection") == []  # not its connection, no session: nothing
    assert d.cancel("c0", b"new-connection", owner="s2") == []  # another session's
    acts = d.cancel("c0", b"new-connection", owner="s1")
    assert KillLocal("c0") in acts and "c0" not in d.pending
    d.submit(Call("c2", "m:f", b"", 1, "O", ["O"], owner="s1"), b"O" * 16, "O")  # a peer's
    assert d.cancel("c2", b"new-connection", owner="s1") == []  # a peer's request stays
    check(d)


# ----------------------------------------------------------------------------- the lease table


def test_rounds_begin_a_period_apart_and_a_late_tick_does_not_catch_up():
    lz = Leases(1.0)
    assert lz.tick(5.0) is False and lz.round == 0  # (the first tick starts the clock)
    assert [lz.tick(t) for t in (5.5, 6.0, 6.2, 9.7, 9.8, 10.7)] == [False, True, False, True, False, True]
    assert lz.round == 3


def test_a_client_sends_again_what_its_agent_does_not_hold_and_gives_up_in_the_end():
    c = ClientLeases(period=1.0, resends=2)
    c.tick(0.0)
    c.sent("x", b"frame-x")
    c.sent("y", b"frame-y")
    assert c.tick(1.0) == [] and c.tick(2.0) == [["x", "y"]]
    assert c.answered(["y"], ["x"]) == ([b"frame-x"], [])  # x again (handed on again now)
    assert c.answered([], ["x"]) == ([], [])  # an older answer: not believed
    assert c.tick(3.0) == [] and c.tick(4.0) == [["x", "y"]]
    assert c.answered(["y"], ["x"]) == ([b"frame-x"], [])
    c.tick(5.0)
    c.tick(6.0)
    assert c.answered([], ["x", "y"]) == ([b"frame-y"], ["x"])  # x: sent twice again already
    assert len(c) == 1 and not c.leases.asked(AGENT, "x")
    c.ended("y")
    assert len(c) == 0 and c.leases.calls == {} and c.clear() == []
