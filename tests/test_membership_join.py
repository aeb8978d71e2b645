"""Tests for mesh.discovery.membership: joining, gossip, leaving, the table's rules, whole meshes.

Drivers, and how the cores are driven: ``tests/membership_helpers.py``.
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from mesh.discovery.members import Member, MemberTable
from mesh.discovery.membership import (
    TRANSITIONS,
    Connect,
    Disconnect,
    Forgotten,
    MemberChanged,
    Membership,
    Reply,
    Send,
    Timing,
)
from mesh.errors import LocalProtocolError
from mesh.sim import SimNetwork
from mesh.wire.messages import STATES, Digest, Leave, Load, Ping, PingReq, Pong
from tests.membership_helpers import (
    LOAD,
    about,
    converged,
    ident,
    info,
    join,
    mesh,
    run_core,
    state,
    transitions,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- joining


def test_two_nodes_via_a_seed_converge_both_ways_with_rtt():
    net = SimNetwork(1)
    b = net.add("b")
    a = net.add("a", seeds=[b.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b]))
    net.run_for(2.0)  # a few probes each way
    for x, y in ((a, b), (b, a)):
        member = x.membership.members[y.id]
        assert member.state == "alive"
        assert member.conn == y.address
        assert member.rtt is not None and 0 < member.rtt < 0.01  # the sim's delays are ms
        assert member.info == y.membership.me
        # the connection is known to belong to that member (the agent routes Results with it)
        assert x.membership.member_at(y.address) is member
    assert a.membership.seeds[b.address].node_id == b.id
    view = {v["name"]: v for v in a.membership.views()}
    assert view["b"]["state"] == "alive" and view["b"]["rtt_ms"] > 0


def test_mutual_seeds_bind_each_connection_to_its_member():
    """Both sides seed each other, so each side's first Ping may arrive before the
    Pong that tells the seed's id: the seed connection must still be bound to it."""
    for seed in range(10):
        net = SimNetwork(seed)
        a = net.add("a", seeds=["b:1"])
        b = net.add("b", seeds=["a:1"])
        assert net.run_until(5.0, stop=lambda: converged([a, b])), seed  # noqa: B023
        net.run_for(2.0)
        for x, y in ((a, b), (b, a)):
            assert x.membership.member_at(y.address) is x.membership.members[y.id], seed
            assert x.membership.dialer.conns == {y.address: y.id}, seed
            assert x.conns == {y.address}, seed


def test_two_nodes_that_dial_each_other_at_once_ping_each_other_once():
    """Gossip reaches both at once, so each dials the other; each one's Ping then
    arrives at a node whose own Ping is on its way: no second ping back (a joining
    mesh of 200 sent 69,771 pings for 39,800 pairs), and both still get a round trip."""
    a, b = Membership(info(1)), Membership(info(2))
    ping_a = next(x.message for x in a.discovered(info(2).id, "n2:1", 0.0) if isinstance(x, Send))
    ping_b = next(x.message for x in b.discovered(info(1).id, "n1:1", 0.0) if isinstance(x, Send))
    got_b = b.receive(ping_a, 0.001, identity=ident(1))
    got_a = a.receive(ping_b, 0.001, identity=ident(2))
    for got in (got_a, got_b):
        assert not [x for x in got if isinstance(x, Send)]  # only the Pong (a Reply)
        assert [type(x.message) for x in got if isinstance(x, Reply)] == [Pong]
    pong_b = next(x.message for x in got_b if isinstance(x, Reply))
    pong_a = next(x.message for x in got_a if isinstance(x, Reply))
    a.receive(pong_b, 0.002, via="n2:1")
    b.receive(pong_a, 0.002, via="n1:1")
    assert a.members[info(2).id].rtt == pytest.approx(0.002)
    assert b.members[info(1).id].rtt == pytest.approx(0.002)
    # a member that pings us on a connection we opened long ago is pinged back at once
    c = Membership(info(3))
    c.add_seed("n4:1", 0.0)
    got = c.receive(Ping(7, info(4), LOAD), 5.0, identity=ident(4))
    assert [x.address for x in got if isinstance(x, Send) and isinstance(x.message, Ping)] == ["n4:1"]


def test_one_probe_per_period_and_every_member_probed_within_two_rounds():
    """SWIM: one probe per protocol period, targets in a shuffled round robin, so a
    member waits at most two rounds (2 * (n - 1) periods) between probes."""
    timing = Timing()
    net = SimNetwork(3, record=True)
    nodes = [net.add("n0")] + [net.add(f"n{i}", seeds=["n0:1"]) for i in range(1, 5)]
    assert net.run_until(5.0, stop=lambda: converged(nodes))
    net.run_for(2.0)
    start, span = net.now, 20.0
    probes = {n.name: n.membership.counters["probes"] for n in nodes}
    net.run_for(span)
    rounds = 2 * (len(nodes) - 1) * timing.period
    for node in nodes:
        made = node.membership.counters["probes"] - probes[node.name]
        assert span / timing.period - 1 <= made <= span / timing.period + 1
        pings = [(t, act) for t, who, act in net.trace if who == node.name and t >= start
                 and act.startswith("Send(") and "message=Ping(" in act]
        assert len(pings) == made  # no failures: no slow pings, no indirect probes
        for other in nodes:
            if other is node:
                continue
            times = [start] + [t for t, act in pings if f"address='{other.address}'" in act]
            times.append(net.now)
            assert max(b - a for a, b in pairwise(times)) <= rounds + timing.period
    assert all(n.membership.health.score == 0 for n in nodes)


def test_seed_at_our_own_address_is_dropped():
    me = info(1)
    core = Membership(me)
    assert core.add_seed(me.address, 0.0) == []
    assert core.seeds == {} and core.dialer.conns == {}
    assert not [a for a in core.tick(0.0) if isinstance(a, (Send, Connect))]
    # a second add of the same seed is ignored too
    assert core.add_seed("n2:1", 0.0) != []
    assert core.add_seed("n2:1", 0.0) == []


def test_seed_that_turns_out_to_be_ourselves_is_closed_and_forgotten():
    """A seed address that is another name for this node (``localhost`` vs
    ``127.0.0.1``): its node id is learnt from the answer, then it is dropped."""
    net = SimNetwork(2, record=True)
    b = net.add("b")
    a = net.add("a", seeds=[b.address])
    net.alias("self-alias:1", a)
    net.do(a, a.membership.add_seed("self-alias:1", net.now))
    net.run_until(3.0)
    assert "self-alias:1" not in a.conns
    assert repr(Disconnect("self-alias:1")) in [t[2] for t in net.trace if t[1] == "a"]
    assert "self-alias:1" not in a.membership.dialer.conns
    assert "self-alias:1" not in a.membership.seeds
    assert a.id not in a.membership.members
    start = len(net.trace)
    net.run_for(5.0)
    assert not [t for t in net.trace[start:] if "self-alias" in t[2]]  # no more retries
    assert converged([a, b])


def test_third_node_learns_the_second_by_gossip():
    net = SimNetwork(4)
    a = net.add("a")
    b = net.add("b", seeds=[a.address])
    c = net.add("c", seeds=[a.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b, c]))
    # c only knew a: it learnt b from a's digests, and b learnt c from c's pings
    assert c.membership.seeds.keys() == {a.address}
    assert c.membership.members[b.id].conn == b.address
    assert b.membership.members[c.id].conn == c.address


def test_gossip_of_dead_nodes_and_ourselves_is_ignored():
    me, other = info(1), info(2)
    core = Membership(me)
    gossip = [about(1, "alive"), about(2, "dead"), about(2, "left")]
    acts = core.receive(Ping(1, info(3), LOAD, gossip), 0.0, identity=ident(3))
    addresses = {a.address for a in acts if isinstance(a, (Connect, Send))}
    assert addresses == {"n3:1"}
    assert other.id not in core.members and core.me == me


def test_a_ping_is_answered_with_a_pong_echoing_its_seq():
    core = Membership(info(1))
    core.set_load(Load(4, 3, 0, 1))
    acts = core.receive(Ping(42, info(2), LOAD), 1.0, identity=ident(2))
    (reply,) = [a for a in acts if isinstance(a, Reply)]
    assert reply.identity == ident(2)
    assert isinstance(reply.message, Pong) and reply.message.seq == 42
    assert reply.message.load == Load(4, 3, 0, 1)
    assert reply.message.sender == info(1)
    assert core.members[info(2).id].load == LOAD


def test_unanswered_pings_are_forgotten():
    timing = Timing()
    core = Membership(info(1), timing)
    core.add_seed("nobody:1", 0.0)
    for step in range(1000):  # 100 s: the seed is pinged every seed_retry
        core.tick(step * 0.1)
    assert core.outbox.pending() <= (timing.forget_after / 4) / timing.seed_retry + 2


# ----------------------------------------------------------------------------- silent addresses


def pings_to(log, address: str) -> list[float]:
    return [t for t, a in log if isinstance(a, Send) and a.address == address
            and isinstance(a.message, Ping)]


def test_an_address_that_never_answers_is_pinged_with_back_off_then_forgotten():
    """Issue 17: every address learnt (mDNS, gossip, PingReq) was kept and pinged every
    seed_retry forever."""
    timing = Timing()
    core = Membership(info(1), timing)
    log = [(0.0, a) for a in core.discovered(info(50).id, "n50:1", 0.0)]  # a stale announcement
    log += [(0.0, a) for a in core.receive(  # a PingReq names an address of nobody
        PingReq(5, info(51).id, "n51:1", info(2), []), 0.0, identity=ident(2))]
    log += run_core(core, 0.0, 300.0, step=0.1, silent={50, 51})
    for address in ("n50:1", "n51:1"):
        pings = pings_to(log, address)
        assert len(pings) == timing.dial_attempts, (address, pings)
        gaps = [round(b - a, 6) for a, b in pairwise(pings)]
        assert gaps == [min(timing.seed_retry * 2 ** k, timing.dial_backoff_max)
                        for k in range(timing.dial_attempts - 1)], gaps
        (gone,) = [t for t, a in log if a == Disconnect(address)]
        assert gone - pings[-1] == pytest.approx(min(
            timing.seed_retry * 2 ** (timing.dial_attempts - 1), timing.dial_backoff_max), abs=0.11)
    assert core.dialer.conns == {} and core.dialer.dials == {}
    assert core.counters["silent_forgotten"] == 2


def test_a_seed_is_kept_and_retried_with_back_off_until_it_answers():
    timing = Timing()
    core = Membership(info(1), timing)
    log = [(0.0, a) for a in core.add_seed("n7:1", 0.0)]
    log += run_core(core, 0.0, 400.0, step=0.1, silent={7})
    pings = pings_to(log, "n7:1")
    gaps = [round(b - a, 6) for a, b in pairwise(pings)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and set(gaps[5:]) == {timing.dial_backoff_max}
    assert "n7:1" in core.dialer.conns and Disconnect("n7:1") not in [a for _, a in log]
    # it answers at last: a member, and no longer a silent address
    log = run_core(core, 400.0, 440.0, step=0.1)
    assert state_of(core, 7) == "alive" and "n7:1" not in core.dialer.dials


def state_of(core: Membership, n: int) -> str | None:
    member = core.members.get(info(n).id)
    return None if member is None else member.state


def test_a_table_full_of_silent_addresses_still_lets_new_live_members_in():
    """Issue 17: once the connections reached max_members, discovery and gossip connected
    to nobody new. Silent addresses make room for live ones; live members and seeds are
    never given up, and a table full of live members turns newcomers away."""
    timing = Timing()
    net = SimNetwork(40)
    a = net.add("a", timing=timing, max_members=4, seeds=["seed:1"])
    for k in range(4):  # stale announcements: nobody listens there
        net.do(a, a.membership.discovered(f"{k:032x}", f"ghost{k}:1", net.now))
    assert len(a.membership.dialer.conns) == 4 and "seed:1" in a.membership.dialer.conns
    b, c, d = (net.add(name, timing=timing) for name in "bcd")
    net.do(c, c.membership.discovered(b.id, b.address, net.now))  # b and c know each other
    net.do(a, a.membership.discovered(b.id, b.address, net.now))  # mDNS: b
    net.do(d, d.membership.discovered(a.id, a.address, net.now))  # d pings a
    # b (announced), c (gossip from b) and d (its own ping) join a
    assert net.run_until(net.now + 10.0, stop=lambda: converged([a, b, c, d]))
    conns = a.membership.dialer.conns
    assert "seed:1" in conns and len(conns) == 4
    assert {b.address, c.address, d.address} <= set(conns)
    # full of live members (and the seed): a new address is turned away, none is evicted
    acts = a.membership.discovered("ee" * 16, "late:1", net.now)
    assert acts == [] and "late:1" not in conns
    assert [n.id in a.membership.members for n in (b, c, d)] == [True] * 3


# ----------------------------------------------------------------------------- leaving


def test_leave_makes_it_left_everywhere_and_gossip_does_not_resurrect_it():
    timing = Timing()
    net = SimNetwork(12)
    a = net.add("a", timing=timing)
    b = net.add("b", timing=timing, seeds=[a.address])
    c = net.add("c", timing=timing, seeds=[a.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b, c]))
    net.run_for(1.0)
    net.partition(b, c)  # c never hears b's own Leave
    acts = b.membership.leave()
    assert {x.address for x in acts} == {a.address, c.address}
    assert all(isinstance(x, Send) and isinstance(x.message, Leave) for x in acts)
    net.do(b, acts)
    net.run_for(0.1)
    net.kill(b)  # the agent exits after sending Leave
    assert state(a, b) == "left"
    assert a.membership.members[b.id].conn is None
    assert b.address not in a.conns
    # c learns it from a's gossip, within a probe round, not by suspecting b
    assert net.run_until(net.now + 2 * timing.period, stop=lambda: state(c, b) == "left")
    assert [new for _, _, new in transitions(c, b)] == ["alive", "left"]
    # news that b is alive (old, or even newer) does not bring it back: left is final
    stale = [Digest(b.id, b.name, b.address, "alive", 0, 1), Digest(b.id, b.name, b.address, "alive", 5, 1)]
    net.do(a, a.membership.receive(Ping(9999, c.membership.me, LOAD, stale), net.now,
                                   identity=bytes.fromhex(c.id)))
    assert state(a, b) == "left"
    assert transitions(a, b)[-1][1:] == ("alive", "left")
    net.run_for(10.0)
    assert state(a, b) == "left" and state(c, b) == "left"
    assert b.id not in a.membership.gossip.updates  # retransmitted its share, then dropped


def test_a_leaving_node_stops_pinging():
    net = SimNetwork(13)
    b = net.add("b")
    a = net.add("a", seeds=[b.address])
    net.run_until(2.0)
    a.membership.leave()
    acts = a.membership.tick(net.now + 10.0)
    assert not [x for x in acts if isinstance(x, Send)]
    assert a.membership.next_timer(net.now + 10.0) > net.now + 10.0


def test_leave_from_an_unknown_member_is_ignored_and_makes_a_dead_one_left():
    core = Membership(info(1))
    assert core.receive(Leave(info(2).id, 0), 0.0, identity=ident(2)) == []
    assert info(2).id not in core.members
    join(core, 2, 0.0, incarnation=1)
    join(core, 3, 0.0)
    run_core(core, 0.0, 10.0, silent={2}, stop=lambda: core.members[info(2).id].state == "dead")
    assert core.members[info(2).id].state == "dead"
    assert core.receive(Leave(info(2).id, 0), 10.0, identity=ident(2)) == []  # older incarnation
    acts = core.receive(Leave(info(2).id, 1), 10.0, identity=ident(2))
    assert MemberChanged(info(2).id, "n2", "dead", "left", 1) in acts
    assert Disconnect("n2:1") in acts
    assert core.members[info(2).id].state == "left"
    # left is final: an alive digest, even newer, does not bring it back
    core.receive(Ping(5, info(3), LOAD, [about(2, "alive", 5)]), 11.0, identity=ident(3))
    assert core.members[info(2).id].state == "left"


def test_a_leave_for_another_node_is_forged_ignored_and_counted():
    core = Membership(info(1))
    for n in (2, 3):
        join(core, n, 0.0)
    assert core.receive(Leave(info(2).id, 0), 1.0, identity=ident(3)) == []
    assert core.receive(Leave(info(2).id, 0), 1.0) == []  # no ROUTER identity at all
    assert core.members[info(2).id].state == "alive"
    assert core.counters["forged_leaves"] == 2
    # in a mesh: c claims that b leaves; nobody believes it
    net, nodes = mesh(90, 4)
    b, c = nodes[1], nodes[2]
    forged = Leave(b.id, b.membership.me.incarnation)
    net.do(c, [Send(n.address, forged) for n in nodes if n is not c and n is not b])
    net.run_for(2.0)
    assert converged(nodes)
    assert sum(n.membership.counters["forged_leaves"] for n in nodes) == 2


def test_older_incarnation_does_not_resurrect_a_dead_member():
    core = Membership(info(1))
    join(core, 2, 0.0, incarnation=3)
    join(core, 3, 0.0)
    run_core(core, 0.0, 10.0, silent={2}, stop=lambda: core.members[info(2).id].state == "dead")
    assert core.members[info(2).id].state == "dead"
    acts = core.receive(Ping(2, info(2), LOAD), 10.0, identity=ident(2))
    (reply,) = [a for a in acts if isinstance(a, Reply)]
    assert isinstance(reply.message, Pong) and reply.message.seq == 2
    assert reply.message.gossip[0] == about(2, "dead", 3)  # its death first: it can refute
    assert not [a for a in acts if isinstance(a, MemberChanged)]
    assert core.members[info(2).id].state == "dead"
    acts = core.receive(Ping(3, info(2, incarnation=4), LOAD), 11.0, identity=ident(2))
    assert MemberChanged(info(2).id, "n2", "dead", "alive", 4) in acts
    assert core.members[info(2).id].state == "alive"


# ----------------------------------------------------------------------------- rules


def test_transition_table_covers_the_documented_states():
    assert {s for pair in TRANSITIONS for s in pair} <= set(STATES)


@pytest.mark.parametrize("old", STATES)
@pytest.mark.parametrize("new", STATES)
def test_illegal_transitions_raise_and_change_nothing(old, new):
    table = MemberTable(8)
    member = Member(info(2), old, "n2:1", 0.5, 0.5)
    table.add(member)
    before = (member.state, member.changed_at, member.last_heard, member.conn)
    if old == new:  # not a change: nothing to announce
        assert table.set_state(member, new, 1.0) == []
        assert (member.state, member.changed_at, member.last_heard, member.conn) == before
    elif (old, new) in TRANSITIONS:
        assert table.set_state(member, new, 1.0) == [MemberChanged(member.info.id, "n2", old, new)]
        assert (member.state, member.changed_at) == (new, 1.0)
    else:
        with pytest.raises(LocalProtocolError):
            table.set_state(member, new, 1.0)
        assert (member.state, member.changed_at, member.last_heard, member.conn) == before
    # the table's ids by state follow the member
    assert table.alive() == ([member] if member.state == "alive" else [])
    assert table.suspects() == ([member] if member.state == "suspect" else [])
    assert table.gone() == ([member] if member.state in ("dead", "left") else [])
    assert table.live() == (member.state in ("alive", "suspect"))


def test_table_is_bounded_and_evicts_dead_members_with_their_connections():
    timing = Timing(forget_after=1000.0)
    net = SimNetwork(14)
    a = net.add("a", timing=timing, max_members=3)
    first = [net.add(f"x{i}", timing=timing, seeds=[a.address]) for i in range(3)]
    assert net.run_until(5.0, stop=lambda: converged([a, *first]))
    late = net.add("late", timing=timing, seeds=[a.address])
    net.run_for(3.0)
    assert len(a.membership.members) == 3 and late.id not in a.membership.members
    assert state(late, a) == "alive"  # a still answers it
    assert late.address not in a.conns
    net.kill(late)
    for node in first[:2]:
        net.kill(node)
    # (dead, or already evicted for a member that the gossip about "late" made us dial)
    assert net.run_until(net.now + 20.0, stop=lambda: [state(a, n) in ("dead", None) for n in first]
                         == [True, True, False])
    assert state(a, first[2]) == "alive"
    newcomers = [net.add(f"y{i}", timing=timing, seeds=[a.address]) for i in range(2)]
    net.run_for(3.0)
    members = a.membership.members
    assert len(members) == 3
    assert first[0].id not in members and first[1].id not in members
    assert first[2].id in members
    assert all(n.id in members for n in newcomers)
    # the evicted members' connections were closed with them
    assert first[0].address not in a.conns and first[1].address not in a.conns
    for _ in range(20):
        net.run_for(1.0)
        assert len(a.membership.members) <= 3
        assert len(a.membership.dialer.conns) <= 3 + len(a.membership.seeds)


def test_eviction_returns_the_disconnect_of_the_evicted_member():
    core = Membership(info(0), max_members=2)
    for n in (1, 2):
        join(core, n, 0.0)
    run_core(core, 0.0, 10.0, silent={1}, stop=lambda: core.members[info(1).id].state == "dead")
    assert core.members[info(1).id].state == "dead"
    assert core.members[info(2).id].state == "alive"
    acts = join(core, 3, 10.0)
    assert acts[:2] == [Disconnect("n1:1"), Forgotten(info(1).id)]
    assert MemberChanged(info(3).id, "n3", "new", "alive") in acts
    assert set(core.members) == {info(2).id, info(3).id}
    assert "n1:1" not in core.dialer.conns


def test_full_table_of_live_members_accepts_no_newcomer():
    core = Membership(info(0), max_members=2)
    for n in (1, 2, 3, 4):
        acts = join(core, n, 0.0)
        assert any(isinstance(a, Reply) for a in acts)  # still answered
    assert set(core.members) == {info(1).id, info(2).id}


# ----------------------------------------------------------------------------- scale, determinism


def test_fifty_nodes_with_ten_percent_loss_converge_and_nobody_dies():
    loss = 0.10
    net = SimNetwork(15, loss=loss)
    first = net.add("n0")
    nodes = [first]
    rng = random.Random(15)
    for i in range(1, 50):
        seed = rng.choice(nodes)  # each knows one earlier node only
        nodes.append(net.add(f"n{i}", seeds=[seed.address]))
    while not converged(nodes):
        assert net.now < 30.0, "no convergence within 30 virtual seconds"
        net.run_for(0.5)
    sent = net.stats["lost"] + net.stats["delivered"] + net.stats["dropped"]
    assert sent > 5000 and abs(net.stats["lost"] / sent - loss) < 0.02
    net.run_for(10.0)  # and it stays that way under loss: suspicions are refuted
    assert not [c for n in nodes for _, c in n.changes if c.new == "dead"]
    for n in nodes:
        assert len(n.membership.members) == 49
    assert net.run_until(net.now + 5.0, stop=lambda: converged(nodes))


def _scenario(seed: int) -> list:
    net = SimNetwork(seed, loss=0.05, duplicate=0.05, record=True)
    a = net.add("a")
    b = net.add("b", seeds=[a.address])
    c = net.add("c", seeds=[b.address])
    net.at(3.0, lambda: net.kill(c))
    net.at(4.0, lambda: net.partition(a, b))
    net.at(6.0, lambda: net.heal(a, b))
    net.at(9.0, lambda: net.revive(c))
    net.run_until(12.0)
    return net.trace


def test_same_seed_gives_the_same_action_trace():
    first, second = _scenario(16), _scenario(16)
    assert len(first) > 100
    assert first == second
    assert _scenario(17) != first


def test_duplicated_and_reordered_messages_are_harmless():
    net = SimNetwork(18, duplicate=0.3, delay=(0.0001, 0.05))
    nodes = [net.add("n0")]
    for i in range(1, 6):
        nodes.append(net.add(f"n{i}", seeds=[nodes[0].address]))
    assert net.run_until(10.0, stop=lambda: converged(nodes))
    net.run_for(5.0)
    assert converged(nodes)
    for n in nodes:
        assert all(m.rtt is not None and m.rtt < 0.2 for m in n.membership.members.values())
