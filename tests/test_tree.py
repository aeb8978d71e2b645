"""Unit tests of the latency tree core: events in, actions out, no network.

A node's neighbours are played by hand-made adverts (``adv``), so each test states
exactly what the node has heard. The property test at the end plays a small mesh
against an adversarial network (any delivery order, loss, duplicates, stale adverts,
false and true deaths) and checks loop freedom after every single step.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import LocalProtocolError
from mesh.tree import (
    NO_ROUTE,
    Advert,
    LatencyTree,
    ParentChanged,
    Probe,
    RootChanged,
    SendAdvert,
    TreeConfig,
)
from mesh.tree.advert import key

pytestmark = pytest.mark.timeout(60)

CFG = TreeConfig()
P = CFG.period
MS = 0.001


def adv(root: str = "R", *, term: int = 0, settled: int = 1, score: float = 100.0, seq: int = 1,
        rank: float = 0.0, parent: str = "", path: list[str] | None = None, stamp: int = 1,
        succeeds: str = "", ask: int = 0) -> Advert:
    """An advert as a neighbour would send it (``path`` defaults to parent, then root)."""
    if path is None:
        path = [] if not parent else [parent] if parent == root else [parent, root]
    return Advert(root, term, settled, score, succeeds, seq, rank, parent, path, stamp, ask)


def node(me: str = "X", score: float = 1.0, now: float = 0.0, **cfg) -> LatencyTree:
    return LatencyTree(me, score, random.Random(me), dataclasses.replace(CFG, **cfg), now)


def of(kind, acts):
    return [a for a in acts if isinstance(a, kind)]


def attached(me: str = "X", via: str = "A", rank: float = 10 * MS, rtt: float = 5 * MS,
             seq: int = 1, score: float = 1.0, **cfg) -> LatencyTree:
    """A node attached to ``via`` (rank ``rank`` + ``rtt``) in root R's settled tree."""
    t = node(me, score, **cfg)
    t.heard(via, adv(rank=rank, parent="" if via == "R" else "R", seq=seq), rtt, 0.1)
    assert t.parent == via
    return t


# ----------------------------------------------------------------------------- advert


def test_advert_is_a_small_wire_record():
    a = adv(rank=0.012, parent="R")
    for f in dataclasses.fields(Advert):
        assert isinstance(getattr(a, f.name), (int, float, str, list)), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.rank = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("bad", [
    adv(rank=math.nan, parent="R"),
    adv(rank=math.inf, parent="R"),
    adv(rank=-0.5, parent="R"),
    adv(root="", rank=0.01, parent="R"),
    adv(rank=0.01, parent="R", path=["p"] * 40),
    dataclasses.replace(adv(), settled=2),
    dataclasses.replace(adv(), seq=-1),
    dataclasses.replace(adv(), term=-1),  # a route without a tree
    "not an advert",
])
def test_malformed_advert_is_counted_and_dropped(bad):
    t = node()
    assert t.heard("A", bad, 0.005, 0.0) == []
    assert t.counters["bad_adverts"] == 1 and t.peers == {}


def test_stale_reordered_advert_is_ignored():
    t = attached(rank=10 * MS, seq=5)
    t.heard("A", adv(rank=30 * MS, parent="R", seq=6, stamp=3), 5 * MS, 0.2)
    t.heard("A", adv(rank=10 * MS, parent="R", seq=5, stamp=2), 5 * MS, 0.3)  # overtaken
    assert t.counters["stale_adverts"] == 1
    assert t.rank == pytest.approx(35 * MS, rel=0.01)


# ----------------------------------------------------------------------------- root election


def test_lone_node_founds_a_tree_after_join_wait():
    t = node(score=3.0)
    assert t.tick(0.0) == [] and t.state == "joining"
    t.tick((CFG.join_wait - 0.5) * P)
    assert t.state == "joining"
    acts = t.tick(CFG.join_wait * P)
    assert t.state == "root" and t.root == "X" and t.term == 0 and t.rank == 0.0
    assert of(RootChanged, acts) == [RootChanged(None, "X", 0)]


def test_newcomer_joins_a_settled_tree_whatever_its_score():
    t = node(score=1e9)
    acts = t.heard("R", adv(settled=1, score=1.0), 0.004, 0.5)
    assert t.state == "attached" and t.parent == "R" and t.root == "R"
    assert of(ParentChanged, acts) == [ParentChanged(None, "R", "better")]
    assert t.rank == pytest.approx(0.004)


def test_at_start_up_the_best_score_wins():
    """Nobody is settled yet: a joining node that would beat the root founds its own
    tree, and the old root merges into it."""
    new = node("N", score=50.0)
    new.heard("R", adv(settled=0, score=10.0), 0.004, 0.5)
    assert new.state == "root" and new.root == "N"
    old = node("R", score=10.0)
    old.tick(CFG.join_wait * P)
    assert old.state == "root"
    old.heard("N", new.advert(), 0.004, 4.0)
    assert old.state == "attached" and old.parent == "N" and old.root == "N"


def test_root_key_orders_term_then_settled_then_score_then_id():
    t = node("X", score=5.0)
    t.tick(CFG.join_wait * P)
    mine = key(t.advert())
    assert (1, 0, 0.0, "A") > mine  # a later term beats everything
    assert t.election_key(0, (CFG.settle_after + 1) * P) > t.election_key(0, 0.0)  # settled
    assert (0, 0, 6.0, "A") > mine > (0, 0, 5.0, "W")  # score, then id


def test_root_becomes_settled_and_its_tree_learns_it():
    t = node("R", score=5.0)
    t.tick(CFG.join_wait * P)
    assert t.advert().settled == 0
    now = CFG.join_wait * P
    while now < (CFG.settle_after + 1) * P:
        now += P
        t.tick(now)
    assert t.advert().settled == 1 and t.fd[1] == 1


def test_root_lost_child_stands_for_the_next_term():
    t = attached(via="R", rank=0.0, rtt=4 * MS)
    acts = t.lost("R", 1.0)
    assert t.state == "root" and t.term == 1
    assert t.advert().succeeds == "R"
    assert ParentChanged("R", None, "parent lost") in acts
    assert RootChanged("R", "X", 1) in acts


def test_succession_the_best_remaining_key_wins():
    """Whoever adopts term+1 after its own root's loss stands if it would win."""
    strong = attached("S", via="A", rank=10 * MS, score=9.0, settle_after=0.0)
    weak_key = adv("W", term=1, settled=1, score=2.0, succeeds="R", seq=0, rank=0.0)
    strong.heard("W", weak_key, 3 * MS, 1.0)
    assert strong.state == "root" and strong.term == 1 and strong.root == "S"
    weak = attached("V", via="A", rank=10 * MS, settle_after=0.0)  # score 1: it joins
    weak.heard("W", weak_key, 3 * MS, 1.0)
    assert weak.state == "attached" and weak.root == "W"


def test_another_lineage_does_not_trigger_succession():
    """A tree at term+1 that succeeds someone else (a healed partition) is joined."""
    strong = attached("S", via="A", rank=10 * MS, score=9.0, settle_after=0.0)
    strong.heard("W", adv("W", term=1, score=2.0, succeeds="Q", seq=0, rank=0.0), 3 * MS, 1.0)
    assert strong.state == "attached" and strong.root == "W"


def test_falsely_reported_root_wins_its_succession():
    r = node("R", score=100.0, settle_after=0.0)
    r.tick(CFG.join_wait * P)
    r.heard("W", adv("W", term=1, score=2.0, succeeds="R", seq=0, rank=0.0), 3 * MS, 9.0)
    assert r.state == "root" and r.term == 1 and r.root == "R"


def test_lost_root_tree_is_refused_but_the_node_is_not():
    t = attached(via="A")
    t.lost("R", 1.0)  # membership: R is dead (our parent A is alive)
    assert t.state == "attached"
    t.lost("A", 1.1)
    assert t.state == "root" and t.term == 1  # root lost: stand, don't wait
    u = attached("U", via="A")
    u.lost("R", 1.0)
    u.heard("B", adv("R", term=0, seq=9, rank=1 * MS, parent="R", stamp=7), 1 * MS, 1.2)
    assert u.parent == "A"  # R's old tree is refused...
    u.heard("B", adv("R", term=1, seq=0, rank=1 * MS, parent="R", stamp=8), 1 * MS, 1.3)
    assert u.parent == "B" and u.term == 1  # ...but R itself at a new term is fine


def test_become_root_below_fd_is_refused():
    t = attached()
    with pytest.raises(LocalProtocolError):
        t._become_root(0, "", 1.0, "test")
    assert t.state == "attached" and t.parent == "A"


def test_state_table_rejects_an_illegal_transition():
    t = attached()
    with pytest.raises(LocalProtocolError):
        t._set_state("joining")
    assert t.state == "attached"


# ----------------------------------------------------------------------------- parent choice


def test_parent_is_chosen_by_path_latency_not_link_latency():
    t = node()
    t.heard("A", adv(rank=40 * MS, parent="R"), 1 * MS, 0.1)  # near, but far from the root
    t.heard("B", adv(rank=5 * MS, parent="R"), 10 * MS, 0.2)
    assert t.parent == "B" and t.rank == pytest.approx(15 * MS)
    assert t.depth == 2 and t.advert().path == ["B", "R"]


@pytest.mark.parametrize("offered, switches", [
    (19.0, False),  # 5% better: not enough
    (17.5, True),  # 12.5% better
])
def test_hysteresis_relative(offered, switches):
    t = attached(rank=15 * MS, rtt=5 * MS)  # path 20 ms
    t.heard("B", adv(rank=(offered - 5) * MS, parent="R"), 5 * MS, 0.5)
    assert (t.parent == "B") is switches


@pytest.mark.parametrize("offered, switches", [(4.3, False), (3.9, True)])
def test_hysteresis_absolute_floor(offered, switches):
    t = attached(rank=3 * MS, rtt=2 * MS)  # path 5 ms: 10% is 0.5 ms, the floor 1 ms
    t.heard("B", adv(rank=(offered - 1) * MS, parent="R"), 1 * MS, 0.5)
    assert (t.parent == "B") is switches


def test_a_better_tree_switches_at_once():
    t = attached(rank=1 * MS, rtt=1 * MS)
    t.heard("B", adv("Q", term=1, rank=90 * MS, parent="Q"), 50 * MS, 0.5)
    assert t.parent == "B" and t.root == "Q"


def test_a_worse_parent_update_is_taken_and_children_are_told():
    t = attached(rank=10 * MS, seq=1)
    t.heard("C", adv(rank=16 * MS, parent="X", path=["X", "A", "R"]), 1 * MS, 0.2)
    assert t.children == ["C"]
    acts = t.heard("A", adv(rank=30 * MS, parent="R", seq=2, stamp=2), 5 * MS, 0.3)
    assert t.parent == "A" and t.rank == pytest.approx(35 * MS, rel=0.01)
    assert [a.peer for a in of(SendAdvert, acts)] == ["C"]  # the new seq goes down
    assert t.fd[4:] == (2, pytest.approx(-35 * MS, rel=0.01))


def test_root_floods_its_seq_to_children_every_period():
    r = node("R", score=10.0)
    r.tick(CFG.join_wait * P)
    r.heard("C", adv("R", term=0, settled=0, score=10.0, rank=4 * MS, parent="R"), 4 * MS, 3.1)
    seqs = []
    for k in range(1, 4):
        acts = r.tick((CFG.join_wait + k) * P)
        seqs += [a.advert.seq for a in of(SendAdvert, acts) if a.peer == "C"]
    assert len(seqs) == 3 and seqs == list(range(seqs[0], seqs[0] + 3))


# ----------------------------------------------------------------------------- feasibility


def test_infeasible_neighbour_is_refused_until_a_newer_seq():
    """After losing its parent, X may not take B (same seq, rank above X's fd: B may
    be in X's subtree); B's next seq makes it feasible."""
    t = attached(rank=10 * MS, rtt=5 * MS, seq=5)  # fd: seq 5, rank 15 ms
    t.heard("B", adv(rank=20 * MS, parent="R", seq=5), 1 * MS, 0.2)
    acts = t.lost("A", 0.3)
    assert t.state == "detached" and t.parent is None
    assert ParentChanged("A", None, "detached: lost") in acts
    assert [a.peer for a in of(SendAdvert, acts) if a.advert.ask] == ["B"]
    t.heard("B", adv(rank=20 * MS, parent="R", seq=6, stamp=2), 1 * MS, 0.4)
    assert t.state == "attached" and t.parent == "B"


def test_repair_adopts_a_feasible_candidate_at_once():
    t = attached(rank=10 * MS, rtt=5 * MS, seq=5)
    t.heard("B", adv(rank=12 * MS, parent="R", seq=6), 4 * MS, 0.2)  # newer seq, worse path
    assert t.parent == "A"
    acts = t.lost("A", 0.3)
    assert t.parent == "B" and ParentChanged("A", "B", "parent lost") in acts


def test_parent_time_out_asks_first_then_repairs():
    t = attached(rank=10 * MS, rtt=5 * MS)
    half = 0.1 + CFG.parent_timeout * P / 2
    assert t.next_timer(0.2) <= half
    acts = t.tick(half)
    assert ("A", 1) in [(a.peer, a.advert.ask) for a in of(SendAdvert, acts)]
    assert t.parent == "A"
    assert t.next_timer(half) <= 0.1 + CFG.parent_timeout * P
    acts = t.tick(0.1 + CFG.parent_timeout * P)
    assert t.state == "detached" and t.counters["timeouts"] == 1
    assert ParentChanged("A", None, "detached: timeout") in acts


def test_crafted_concurrent_switches_cannot_loop():
    """The classic path-vector failure: P switches to D (X's child) while X, whose path
    just got longer, sees P's older advert, whose path does not contain X. Path
    vectors would accept both and close X -> P -> D -> X; feasibility refuses X's."""
    x = attached("X", via="R", rank=0.0, rtt=10 * MS, seq=1)  # fd: seq 1, 10 ms
    p = attached("P", via="R", rank=0.0, rtt=50 * MS, seq=1)
    d = attached("D", via="X", rank=10 * MS, rtt=2 * MS, seq=1)
    stale_p = p.advert()  # P's advert before it moves: path [R], rank 50 ms
    p.heard("D", d.advert(), 1 * MS, 0.2)  # via D: 13 ms < 50 ms, and feasible
    assert p.parent == "D"
    for k in range(6):  # X's link to R got slow (same seq: X's fd stays at 10 ms)
        x.heard("R", adv(rank=0.0, seq=1, stamp=2 + k), 100 * MS, 0.3 + k / 100)
    assert x.rank > 60 * MS
    x.heard("P", stale_p, 1 * MS, 0.4)  # 51 ms would be better than X's path now...
    assert x.parent == "R"  # ...but P's label is not above X's fd: refused
    assert x.counters["infeasible"] >= 1 and x.counters["loop_guard"] == 0
    parents = {"X": x.parent, "P": p.parent, "D": d.parent}
    assert not has_cycle(parents)


# ----------------------------------------------------------------------------- neighbours


def test_neighbour_set_is_bounded_but_children_are_not():
    t = attached(rank=10 * MS, rtt=5 * MS)
    for i in range(30):
        t.heard(f"C{i:02}", adv(rank=16 * MS, parent="X", path=["X", "A", "R"]), 1 * MS, 0.2)
    for i in range(20):
        t.heard(f"K{i:02}", adv(rank=(20 + i) * MS, parent="R"), 5 * MS, 0.3)
    assert len(t.children) == 30
    assert len(t.candidates()) == CFG.max_candidates
    assert set(t.neighbours()) == {"A", *t.children, *t.candidates()}
    assert "K00" in t.candidates() and "K19" not in t.candidates()  # the best are kept


def test_eviction_spares_candidates_whose_route_avoids_the_parent():
    t = attached(rank=10 * MS, rtt=5 * MS, max_candidates=3, diverse=1)
    t.heard("Z", adv(rank=40 * MS, parent="Q", path=["Q", "R"]), 5 * MS, 0.2)  # avoids A
    for i in range(5):
        t.heard(f"K{i}", adv(rank=(12 + i) * MS, parent="A", path=["A", "R"]), 5 * MS, 0.3)
    assert "Z" in t.candidates() and len(t.candidates()) == 3


def test_offers_are_probed_closest_first_while_filling():
    t = node()
    for i, rtt in enumerate([9, 3, 7, 5, 8]):
        t.offer(f"O{i}", rtt * MS, 0.0)
    acts = t.tick(0.0)
    probes = [a.peer for a in of(Probe, acts)]
    assert len(probes) == CFG.probe_burst and probes[0] == "O1"
    asks = [a.peer for a in of(SendAdvert, acts) if a.advert.ask]
    assert asks == probes


def test_ask_is_answered():
    t = attached()
    acts = t.heard("Q", adv(rank=NO_ROUTE, term=-1, root="", ask=1), None, 0.5)
    assert [a.peer for a in of(SendAdvert, acts)] == ["Q"] and not acts[0].advert.ask


def test_view():
    r = node("R", score=10.0)
    r.tick(CFG.join_wait * P)
    x = attached("X", via="R", rank=0.0, rtt=4 * MS)
    v = x.view()
    assert v["id"] == "X" and v["state"] == "attached" and v["root"] == "R"
    assert (v["parent"], v["rtt_ms"], v["rank_ms"], v["depth"]) == ("R", 4.0, 4.0, 1)
    assert r.view()["parent"] is None and r.view()["depth"] == 0 and r.view()["rank_ms"] == 0.0
    # (the mesh tree document made of every agent's view: tests/test_treeview.py)


# ----------------------------------------------------------------------------- property


def has_cycle(parents: dict[str, str | None]) -> bool:
    for start in parents:
        seen, j = set(), start
        while j is not None and j in parents:
            if j in seen:
                return True
            seen.add(j)
            j = parents[j]
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_loop_at_any_step_under_an_adversarial_network(data):
    """A small mesh where the test is the network: it delivers any message in flight
    (any order, so adverts overtake each other), drops and duplicates, advances time,
    kills nodes, tells of true and false deaths. After every step: no cycle among the
    live nodes' parent pointers, and fd(parent) > fd(child) (the invariant)."""
    n = data.draw(st.integers(3, 7), label="nodes")
    cfg = dataclasses.replace(CFG, join_wait=1.0, settle_after=5.0, max_candidates=3)
    names = [f"N{i}" for i in range(n)]
    rng = random.Random(data.draw(st.integers(0, 2**16), label="seed"))
    trees = {m: LatencyTree(m, rng.choice([1.0, 2.0, 3.0]), random.Random(m), cfg, 0.0)
             for m in names}
    live = set(names)
    now = 0.0
    flight: list[tuple[str, str, Advert]] = []
    for a in names:
        for b in names:
            if a != b:
                trees[a].offer(b, None, now)

    def do(src: str, acts: list) -> None:
        for act in acts:
            if isinstance(act, SendAdvert):
                flight.append((src, act.peer, act.advert))
        check()

    def check() -> None:
        parents = {m: trees[m].parent for m in live}
        parents = {m: (p if p in live else None) for m, p in parents.items()}
        assert not has_cycle(parents), parents
        for m, p in parents.items():
            if p is not None:
                assert trees[p].fd > trees[m].fd, (m, p)
        assert all(t.counters["loop_guard"] == 0 for t in trees.values())

    for _ in range(data.draw(st.integers(20, 160), label="steps")):
        step = data.draw(st.sampled_from(
            ["deliver"] * 6 + ["tick", "drop", "dup", "kill", "lost", "offer"]))
        if step == "deliver" and flight:
            src, dst, a = flight.pop(data.draw(st.integers(0, len(flight) - 1)))
            if dst in live:
                rtt = data.draw(st.sampled_from([0.001, 0.004, 0.02, 0.1, None]))
                do(dst, trees[dst].heard(src, a, rtt, now))
        elif step == "drop" and flight:
            flight.pop(data.draw(st.integers(0, len(flight) - 1)))
        elif step == "dup" and flight:
            flight.append(flight[data.draw(st.integers(0, len(flight) - 1))])
        elif step == "tick":
            now += data.draw(st.sampled_from([0.05, 0.5, 1.0, 3.0]))
            for m in sorted(live):
                do(m, trees[m].tick(now))
        elif step == "kill" and len(live) > 2:
            live.discard(data.draw(st.sampled_from(sorted(live))))
        elif step == "lost":  # true or false: membership may be wrong for a while
            who = data.draw(st.sampled_from(sorted(live)))
            about = data.draw(st.sampled_from(names))
            if who != about:
                do(who, trees[who].lost(about, now))
        elif step == "offer":
            who = data.draw(st.sampled_from(sorted(live)))
            about = data.draw(st.sampled_from(sorted(live)))
            do(who, trees[who].offer(about, None, now))
