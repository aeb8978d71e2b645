"""Tests for mesh.sched.dispatch: a randomized driver feeds the dispatcher long event
sequences (hypothesis, and seeded runs) and checks its invariants after every step.

Builders and ``check`` (the invariants): ``tests/dispatch_helpers.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.sched.dispatch import Dispatcher, Forward, KillLocal, RunLocal, SendTo
from mesh.wire.messages import Call, Cancel, Handback, Holds, Result
from tests.dispatch_helpers import check

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- randomized


PEERS = ["p0", "p1", "p2", "p3"]
KINDS = ["client", "client", "peer_call", "local_done", "local_done", "result", "late_result",
         "load", "load", "lost", "suspect", "fwd_failed", "cpus", "drain", "dup",
         "declared_dead", "cancel", "handback", "peer_dup", "tick", "held", "heard"]
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
        self.now = 0.0  # (ticks: leases)

    def do(self, acts) -> None:
        for act in acts:
            if isinstance(act, RunLocal):
                assert self.d.running <= self.d.cpus
                self.running.append(act.call.call_id)
                self.last_action[act.call.call_id] = "local"
            elif isinstance(act, Forward):
                assert act.call.hops <= self.d.placement.max_hops
                entry = self.d.pending[act.call.call_id]
                assert act.peer_id not in entry.peers_asking()
                resent = self.last_action.get(act.call.call_id) == act.peer_id  # to its holder
                assert resent or (act.peer_id in self.d.peers.slots and self.d.peers.slots[act.peer_id].cpus > 0)
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
                elif isinstance(msg, Holds):  # a lease question: about our calls it holds
                    assert all(self.d.pending[c].where == act.peer_id for c in msg.call_ids)
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
        else:
            self.d.heard(reply_to)  # (a client: its frames keep its calls)
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
        elif kind == "tick":
            self.now += 0.7
            waiting = {r.identity for e in d.pending.values() for r in e.requesters
                       if r.peer is None} & set(d.clients)
            self.do(d.tick(self.now))
            self.released |= waiting - set(d.clients)  # silent: their calls were cancelled
        elif kind == "held":  # an answer to a lease question: some held, some not
            mine = [c for c, e in d.pending.items() if e.where == peer]
            lost = [c for i, c in enumerate(mine) if (a >> i) % 2]
            self.do(d.held([c for c in mine if c not in lost], lost, peer))
        elif kind == "heard" and d.clients:
            d.heard(list(d.clients)[a % len(d.clients)])
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
