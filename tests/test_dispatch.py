"""Tests for mesh.sched.dispatch: where each call runs and where its result goes.

The dispatcher is a pure state machine: tests feed it events and assert on the
returned ``RunLocal``/``Forward``/``Deliver`` actions. A randomized test drives it
through long event sequences and checks its invariants after every step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.messages import Call, Cancel, Handback, Result
from mesh.sched.dispatch import Deliver, Dispatcher, Forward, KillLocal, RunLocal, SendTo

pytestmark = pytest.mark.timeout(60)

CLIENT = b"client"


def call(n: int | str, hops: int = 0) -> Call:
    return Call(f"c{n}", "math:factorial", b"args", hops, "origin")


def ok(call_id: str, agent: str = "x") -> Result:
    return Result(call_id, True, b"value", agent)


def forwards(acts) -> list[tuple[str, str]]:
    return [(a.peer_id, a.call.call_id) for a in acts if isinstance(a, Forward)]


def failures(acts) -> list[tuple[bytes, str, str]]:
    return [(a.identity, a.result.call_id, a.result.error_type)
            for a in acts if isinstance(a, Deliver) and not a.result.ok]


def check(d: Dispatcher) -> None:
    """Invariants that hold after every event."""
    for call_id, entry in d.pending.items():
        assert entry.call.call_id == call_id
        if entry.where == "backlog":
            assert call_id in d.backlog
        elif entry.where != "local":  # held by a peer: one it may go to
            assert entry.where not in entry.peers_asking()
    local = sum(1 for e in d.pending.values() if e.where == "local")
    assert local <= d.running
    assert d.queued >= sum(1 for e in d.pending.values() if e.where == "backlog")
    assert d.free == max(d.cpus - d.running, 0)


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
    assert d.peers["p1"].est_free == 0 and d.peers["p2"].est_free == 0
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
    assert d.peers["q"].rtt == 1.0  # unknown round trip: assumed slow


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
    assert "c1" not in d.pending and "p3" not in d.peers
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


# ----------------------------------------------------------------------------- randomized


PEERS = ["p0", "p1", "p2", "p3"]
KINDS = ["client", "client", "peer_call", "local_done", "local_done", "result", "late_result",
         "load", "load", "lost", "suspect", "fwd_failed", "cpus", "drain", "dup",
         "declared_dead", "cancel", "handback", "peer_dup"]
events = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    max_size=80,
)


class Driver:
    """Feeds a dispatcher events and checks every action against a model."""

    def __init__(self, cpus: int, max_pending: int) -> None:
        self.d = Dispatcher("me", cpus, max_hops=3, max_attempts=2, max_pending=max_pending)
        self.n = 0
        self.running: list[str] = []  # call ids running in our worker slots
        self.held: dict[str, list[str]] = {p: [] for p in PEERS}  # calls ever forwarded to a peer
        self.last_fwd: list[tuple[str, str]] = []
        self.accepted: dict[bytes, str] = {}  # reply_to -> call id
        self.delivered: Counter[bytes] = Counter()
        self.last_action: dict[str, object] = {}
        self.by_peer: dict[tuple[str, str], bytes] = {}  # (call id, peer) -> reply_to
        self.released: set[bytes] = set()  # requesters dropped on purpose (peer lost)
        self.fresh: list[str] = []

    def do(self, acts) -> None:
        for act in acts:
            if isinstance(act, RunLocal):
                assert self.d.running <= self.d.cpus
                self.running.append(act.call.call_id)
                self.last_action[act.call.call_id] = "local"
            elif isinstance(act, Forward):
                assert act.call.hops <= self.d.max_hops
                entry = self.d.pending[act.call.call_id]
                assert act.peer_id not in entry.peers_asking()
                resent = self.last_action.get(act.call.call_id) == act.peer_id  # to its holder
                assert resent or (act.peer_id in self.d.peers and self.d.peers[act.peer_id].cpus > 0)
                self.held[act.peer_id].append(act.call.call_id)
                self.last_fwd.append((act.call.call_id, act.peer_id))
                self.last_action[act.call.call_id] = act.peer_id
            elif isinstance(act, KillLocal):
                self.running.remove(act.call_id)
                self.last_action[act.call_id] = "killed"
            elif isinstance(act, SendTo):
                msg = act.message
                if isinstance(msg, (Result, Handback)):  # to a direct origin, or handed back
                    reply_to = self.by_peer.get((msg.call_id, act.peer_id), act.peer_id.encode())
                    self.delivered[reply_to] += 1
                    assert self.delivered[reply_to] == 1, "delivered twice"
                else:
                    assert isinstance(msg, Cancel) and act.peer_id in PEERS + self.fresh
            else:
                self.delivered[act.identity] += 1
                assert self.delivered[act.identity] == 1, "delivered twice"
        check(self.d)
        for call_id, entry in self.d.pending.items():
            if entry.where != "backlog":  # where the last action for it sent it
                assert self.last_action.get(call_id) == entry.where
            else:  # a call that started here never goes back to the backlog
                assert self.last_action.get(call_id) != "local"
        assert self.d.running == len(self.running)

    def submit(self, c: Call, from_peer: str | None) -> None:
        self.n += 1
        reply_to = b"r%d" % self.n
        before = self.d.counters["accepted"], self.d.counters["joined"]
        if from_peer is not None:
            self.by_peer[(c.call_id, from_peer)] = reply_to
        self.do(self.d.submit(c, reply_to, from_peer))
        if (self.d.counters["accepted"], self.d.counters["joined"]) != before:
            self.accepted[reply_to] = c.call_id
        else:
            assert self.delivered[reply_to] == 1  # rejected at once

    def step(self, kind: str, a: int, b: int) -> None:
        d = self.d
        peer = PEERS[a % len(PEERS)]
        if kind == "client":
            self.submit(Call(f"k{self.n}", "", b"", b % 4), None)
        elif kind == "peer_call":
            self.submit(Call(f"k{self.n}", "", b"", 1 + b % 3), peer)
        elif kind == "dup" and d.pending:
            self.submit(list(d.pending.values())[a % len(d.pending)].call, None)
        elif kind == "local_done" and self.running:
            call_id = self.running.pop(a % len(self.running))
            self.do(d.local_done(Result(call_id, bool(b % 2), b"", "me")))
        elif kind in ("result", "late_result") and self.held[peer]:
            mine = [c for c in self.held[peer]
                    if kind == "late_result" or (c in d.pending and d.pending[c].where == peer)]
            if mine:
                call_id = mine[b % len(mine)]
                dups = d.counters["duplicate_results"]
                known = call_id in d.pending
                self.do(d.remote_result(Result(call_id, True, b"", peer), peer))
                assert d.counters["duplicate_results"] == dups + (not known)
        elif kind == "load":
            self.do(d.peer_load(peer, peer, b % 5, (b // 5) % 5, (a % 7) / 100))
        elif kind == "lost":
            self.released |= {r.identity for e in d.pending.values() for r in e.requesters
                              if r.peer == peer}
            self.do(d.peer_lost(peer))
        elif kind == "declared_dead":
            self.do(d.declared_dead())
        elif kind == "cancel" and d.pending:
            entry = list(d.pending.values())[a % len(d.pending)]
            r = entry.requesters[b % len(entry.requesters)]
            if not r.direct:
                self.released.add(r.identity)
                self.do(d.cancel(entry.call.call_id, r.identity))
        elif kind == "handback" and d.pending:
            entry = list(d.pending.values())[a % len(d.pending)]
            if entry.where in PEERS:
                self.do(d.handed_back(entry.call.call_id, entry.where))
        elif kind == "peer_dup" and d.pending:
            entry = list(d.pending.values())[a % len(d.pending)]
            if peer not in entry.peers_asking() and peer != entry.where:
                self.submit(entry.call, peer)
        elif kind == "suspect":
            self.do(d.peer_suspect(peer))
        elif kind == "fwd_failed" and self.last_fwd:
            call_id, p = self.last_fwd[a % len(self.last_fwd)]
            self.do(d.forward_failed(call_id, p))
        elif kind == "cpus" and not d.draining:
            self.do(d.set_cpus(b % 4))
        elif kind == "drain" and b % 40 == 0:
            self.do(d.drain())

    def settle(self) -> None:
        """Let every worker and peer finish; a fresh peer takes what is left."""
        d = self.d
        for _ in range(200):
            if not d.pending and not self.running:
                break
            if self.running:
                call_id = self.running.pop(0)
                self.do(d.local_done(Result(call_id, True, b"", "me")))
                continue
            held = [(c, e.where) for c, e in d.pending.items() if e.where in PEERS]
            if held:
                call_id, peer = held[0]
                self.do(d.remote_result(Result(call_id, True, b"", peer), peer))
                continue
            fresh = f"fresh{_}"
            self.fresh.append(fresh)
            self.held[fresh] = []
            self.do(d.peer_load(fresh, fresh, 100, 100, 0.5))
            for call_id, entry in list(d.pending.items()):
                if entry.where == fresh:
                    self.do(d.remote_result(Result(call_id, True, b"", fresh), fresh))
        assert not d.pending, d.pending
        for reply_to in self.accepted:
            assert self.delivered[reply_to] == (0 if reply_to in self.released else 1), reply_to


@settings(max_examples=300, deadline=None, database=None)
@given(cpus=st.integers(0, 3), max_pending=st.sampled_from([3, 10, 1000]), script=events)
def test_random_event_sequences_keep_the_invariants(cpus, max_pending, script):
    driver = Driver(cpus, max_pending)
    for kind, a, b in script:
        driver.step(kind, a, b)
    driver.settle()


@pytest.mark.parametrize("seed", range(40))
def test_long_seeded_random_runs_keep_the_invariants(seed):
    import random

    rng = random.Random(seed)
    driver = Driver(rng.randint(0, 4), rng.choice([5, 50, 1000]))
    for _ in range(600):
        driver.step(rng.choice(KINDS), rng.randint(0, 1000), rng.randint(0, 1000))
    assert driver.d.counters["accepted"] > 0
    driver.settle()


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


def test_a_call_that_finishes_while_lent_does_not_free_a_slot_twice():
    d = Dispatcher("a", cpus=1)
    d.submit(call("p"), CLIENT)
    d.lend("cp", True)
    d.local_done(ok("cp"))  # (a crash while blocked)
    assert d.running == 0 and d.free == 1


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
    assert d.prefetch == 4 and Dispatcher("b", 1).prefetch == 0  # off unless the agent asks


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
    assert sum(map(len, c.orphans.values())) == 3 and list(c.orphans) == ["O2", "O3", "O4"]


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
