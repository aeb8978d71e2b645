"""Tests for mesh.discovery.membership.

Cores are driven through ``mesh.sim.SimNetwork``: a virtual clock and a fake network
that route ``Send``/``Reply`` as the agent does (a Send arrives on the peer's ROUTER
with our node id as identity; the peer's Reply comes back on our connection to the
address we sent to). No sockets, no sleeps: virtual seconds cost microseconds.
"""

from __future__ import annotations

import random

import pytest

from mesh.discovery.membership import (
    TRANSITIONS,
    Connect,
    Disconnect,
    MemberChanged,
    Membership,
    Reply,
    Send,
    Timing,
)
from mesh.errors import LocalProtocolError
from mesh.messages import STATES, Digest, Leave, Load, NodeInfo, Ping, Pong
from mesh.sim import SimNetwork, SimNode

pytestmark = pytest.mark.timeout(60)


def state(of: SimNode, about: SimNode) -> str | None:
    member = of.membership.members.get(about.id)
    return None if member is None else member.state


def converged(nodes: list[SimNode]) -> bool:
    """Everyone has everyone else alive in its table."""
    return all(
        state(a, b) == "alive" for a in nodes for b in nodes if a is not b and a.alive and b.alive
    )


def transitions(node: SimNode, about: SimNode) -> list[tuple[float, str, str]]:
    return [(t, c.old, c.new) for t, c in node.changes if c.node_id == about.id]


def info(n: int, cpus: int = 1) -> NodeInfo:
    return NodeInfo(f"{n:032x}", f"n{n}", f"n{n}:1", cpus, 0)


# ----------------------------------------------------------------------------- joining


def test_two_nodes_via_a_seed_converge_both_ways_with_rtt():
    net = SimNetwork(1)
    b = net.add("b")
    a = net.add("a", seeds=[b.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b]))
    net.run_for(1.0)  # a few heartbeats each way
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
            assert x.membership._conns == {y.address: y.id}, seed
            assert x.conns == {y.address}, seed


def test_one_ping_per_member_per_interval_once_joined():
    net = SimNetwork(3, record=True)
    b = net.add("b")
    a = net.add("a", seeds=[b.address])
    net.run_until(2.0)
    start = len(net.trace)
    net.run_for(5.0)
    pings = [t for t in net.trace[start:] if t[1] == "a" and t[2].startswith("Send(") and "Ping(" in t[2]]
    interval = a.membership.timing.ping_interval
    assert len(pings) <= 5.0 / interval + 1


def test_seed_at_our_own_address_is_dropped():
    me = info(1)
    core = Membership(me)
    assert core.add_seed(me.address, 0.0) == []
    assert core.seeds == {} and core._conns == {}
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
    assert "self-alias:1" not in a.membership._conns
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
    gossip = [
        Digest(me.id, me.name, me.address, "alive", 0, 1),
        Digest(other.id, other.name, other.address, "dead", 0, 1),
        Digest(other.id, other.name, other.address, "left", 0, 1),
    ]
    acts = core.receive(Ping(1, info(3), Load(1, 1, 0, 0), gossip), 0.0, identity=b"\3" * 16)
    addresses = {a.address for a in acts if isinstance(a, (Connect, Send))}
    assert addresses == {"n3:1"}


def test_a_ping_is_answered_with_a_pong_echoing_its_seq():
    core = Membership(info(1))
    core.set_load(Load(4, 3, 0, 1))
    acts = core.receive(Ping(42, info(2), Load(1, 1, 0, 0)), 1.0, identity=b"\2" * 16)
    (reply,) = [a for a in acts if isinstance(a, Reply)]
    assert reply.identity == b"\2" * 16
    assert isinstance(reply.message, Pong) and reply.message.seq == 42
    assert reply.message.load == Load(4, 3, 0, 1)
    assert reply.message.sender == info(1)
    assert core.members[info(2).id].load == Load(1, 1, 0, 0)


def test_unanswered_pings_are_forgotten():
    core = Membership(info(1))
    core.add_seed("nobody:1", 0.0)
    for step in range(200):
        core.tick(step * 0.1)
    assert len(core._sent) <= (core.timing.dead_after / 0.1) * 2 + 2


# ----------------------------------------------------------------------------- failures


def _pair(seed: int, timing: Timing) -> tuple[SimNetwork, SimNode, SimNode]:
    net = SimNetwork(seed)
    b = net.add("b", timing=timing)
    a = net.add("a", timing=timing, seeds=[b.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b]))
    net.run_for(2.0)
    return net, a, b


@pytest.mark.parametrize("profile", ["default", "fast"])
def test_silent_node_goes_suspect_then_dead_at_the_configured_times(profile):
    timing = Timing.profile(profile)
    net, a, b = _pair(5, timing)
    net.kill(b)
    net.run_for(timing.dead_after + 2.0)
    member = a.membership.members[b.id]
    assert member.state == "dead"
    steps = transitions(a, b)
    assert [(old, new) for _, old, new in steps] == [("new", "alive"), ("alive", "suspect"), ("suspect", "dead")]
    t_suspect, t_dead = steps[1][0], steps[2][0]
    heard, tick = member.last_heard, a.tick_every
    assert heard + timing.suspect_after < t_suspect <= heard + timing.suspect_after + tick + 1e-9
    assert heard + timing.dead_after < t_dead <= heard + timing.dead_after + tick + 1e-9
    assert member.changed_at == t_dead
    assert member.conn == b.address  # kept: ZeroMQ reconnects, slow pings notice a return


def test_dead_node_that_answers_again_comes_back_alive():
    timing = Timing()
    net, a, b = _pair(6, timing)
    net.kill(b)
    net.run_for(timing.dead_after + 1.0)
    assert state(a, b) == "dead"
    back = net.now
    net.revive(b)
    assert net.run_until(back + 2 * timing.seed_retry + 0.5, stop=lambda: converged([a, b]))
    steps = transitions(a, b)
    assert steps[-1][1:] == ("dead", "alive")
    assert back <= steps[-1][0]


def test_dead_members_are_pinged_only_every_seed_retry():
    timing = Timing()
    net, a, b = _pair(7, timing)
    net.kill(a)  # b learnt a from its pings: a is a member of b's, not a seed
    net.run_for(timing.dead_after + 1.0)
    assert state(b, a) == "dead"
    before = b.membership._seq
    net.run_for(10.0)
    pings = b.membership._seq - before
    # a slow ping goes out with the first ping round after seed_retry has passed
    period = timing.seed_retry + timing.ping_interval
    assert 10.0 / period - 1 <= pings <= 10.0 / timing.seed_retry + 1


def test_suspect_comes_back_alive_when_heard_again():
    timing = Timing()
    net, a, b = _pair(8, timing)
    net.partition(a, b)
    net.run_for(timing.suspect_after + 0.5)
    assert state(a, b) == "suspect"
    net.heal(a, b)
    net.run_for(1.0)
    assert state(a, b) == "alive"


def test_fast_profile_detects_failures_sooner_than_default():
    detected = {}
    for profile in ("default", "fast"):
        timing = Timing.profile(profile)
        net, a, b = _pair(9, timing)
        killed = net.now
        net.kill(b)
        net.run_for(10.0)
        (t_dead,) = [t for t, _, new in transitions(a, b) if new == "dead"]
        detected[profile] = t_dead - killed
    assert detected["fast"] < detected["default"] / 2
    assert detected["fast"] <= Timing.profile("fast").dead_after + 0.2


def test_unknown_profile_is_a_value_error():
    with pytest.raises(ValueError):
        Timing.profile("turbo")


def test_dead_member_is_forgotten_after_forget_after():
    timing = Timing(forget_after=10.0)
    net, a, b = _pair(10, timing)
    net.kill(b)
    net.run_for(timing.dead_after + 1.0)
    assert state(a, b) == "dead"
    net.run_for(timing.forget_after + 1.0)
    assert b.id not in a.membership.members
    assert b.address not in a.membership._conns or b.address in a.membership.seeds


def test_restarted_node_at_the_same_address_keeps_its_connection():
    """A node restarts with a new id at the old address: forgetting the old member
    must not close the connection the new one now uses."""
    timing = Timing(forget_after=10.0)
    net, a, b = _pair(11, timing)
    net.kill(b)
    net.run_for(timing.dead_after + 1.0)
    b2 = net.add("b", timing=timing)  # same name, same address, new id
    assert b2.id != b.id and b2.address == b.address
    assert net.run_until(net.now + 5.0, stop=lambda: state(a, b2) == "alive")
    net.run_for(timing.forget_after + 2.0)
    assert b.id not in a.membership.members
    assert state(a, b2) == "alive"
    assert a.membership.members[b2.id].conn == b2.address
    assert b2.address in a.conns  # still connected
    assert a.membership.member_at(b2.address).info.id == b2.id


# ----------------------------------------------------------------------------- leaving


def test_leave_makes_it_left_and_gossip_does_not_resurrect_it():
    net = SimNetwork(12)
    a = net.add("a")
    b = net.add("b", seeds=[a.address])
    c = net.add("c", seeds=[a.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b, c]))
    net.run_for(1.0)
    net.partition(b, c)  # c never hears the Leave and keeps gossiping b as alive
    acts = b.membership.leave()
    assert {x.address for x in acts} == {a.address, c.address}
    assert all(isinstance(x, Send) and isinstance(x.message, Leave) for x in acts)
    net.do(b, acts)
    net.run_for(0.1)
    net.kill(b)  # the agent exits after sending Leave
    assert state(a, b) == "left"
    assert b.id in {d.id for d in c.membership._gossip_out()}
    assert a.membership.members[b.id].conn is None
    assert b.address not in a.conns
    net.run_for(0.5)  # gossip from c, which still believes b alive
    assert state(a, b) == "left"
    assert transitions(a, b)[-1][1:] == ("alive", "left")
    net.run_for(10.0)
    assert state(a, b) == "left" and state(c, b) == "dead"
    assert b.id not in {d.id for d in a.membership._gossip_out()}


def test_a_leaving_node_stops_pinging():
    net = SimNetwork(13)
    b = net.add("b")
    a = net.add("a", seeds=[b.address])
    net.run_until(2.0)
    a.membership.leave()
    acts = a.membership.tick(net.now + 10.0)
    assert not [x for x in acts if isinstance(x, Send)]


def test_leave_from_an_unknown_or_dead_member_is_ignored():
    core = Membership(info(1))
    assert core.receive(Leave(info(2).id, 0), 0.0, identity=b"\2" * 16) == []
    core.receive(Ping(1, info(2), Load(1, 1, 0, 0)), 0.0, identity=b"\2" * 16)
    core.tick(2.0)
    core.tick(5.0)
    assert core.members[info(2).id].state == "dead"
    assert core.receive(Leave(info(2).id, 0), 5.0, identity=b"\2" * 16) == []
    assert core.members[info(2).id].state == "dead"


def test_older_incarnation_does_not_resurrect_a_dead_member():
    core = Membership(info(1))
    newer = NodeInfo(info(2).id, "n2", "n2:1", 1, 3)
    core.receive(Ping(1, newer, Load(1, 1, 0, 0)), 0.0, identity=b"\2" * 16)
    core.tick(2.0)
    core.tick(5.0)
    assert core.members[newer.id].state == "dead"
    assert core.receive(Ping(2, info(2), Load(1, 1, 0, 0)), 6.0, identity=b"\2" * 16) == [
        Reply(b"\2" * 16, Pong(2, info(1), Load(0, 0, 0, 0), []))
    ]
    assert core.members[newer.id].state == "dead"
    acts = core.receive(Ping(3, newer, Load(1, 1, 0, 0)), 7.0, identity=b"\2" * 16)
    assert MemberChanged(newer.id, "n2", "dead", "alive") in acts
    assert core.members[newer.id].state == "alive"


# ----------------------------------------------------------------------------- rules


def test_transition_table_covers_the_documented_states():
    assert {s for pair in TRANSITIONS for s in pair} <= set(STATES)


@pytest.mark.parametrize("old", STATES)
@pytest.mark.parametrize("new", STATES)
def test_illegal_transitions_raise_and_change_nothing(old, new):
    core = Membership(info(1))
    core.receive(Ping(1, info(2), Load(1, 1, 0, 0)), 0.0, identity=b"\2" * 16)
    member = core.members[info(2).id]
    member.state, member.changed_at = old, 0.5
    before = (member.state, member.changed_at, member.last_heard, member.conn)
    if (old, new) in TRANSITIONS:
        assert core._set_state(member, new, 1.0) == [MemberChanged(member.info.id, "n2", old, new)]
        assert (member.state, member.changed_at) == (new, 1.0)
    else:
        with pytest.raises(LocalProtocolError):
            core._set_state(member, new, 1.0)
        assert (member.state, member.changed_at, member.last_heard, member.conn) == before


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
    net.run_for(timing.dead_after + 1.0)
    assert [state(a, n) for n in first] == ["dead", "dead", "alive"]
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
        assert len(a.membership._conns) <= 3 + len(a.membership.seeds)


def test_eviction_returns_the_disconnect_of_the_evicted_member():
    core = Membership(info(0), max_members=2)
    for n in (1, 2):
        core.receive(Ping(n, info(n), Load(1, 1, 0, 0)), 0.0, identity=bytes([n]) * 16)
    core.tick(2.0)
    core.receive(Ping(9, info(2), Load(1, 1, 0, 0)), 2.5, identity=b"\2" * 16)
    core.tick(5.0)
    assert core.members[info(1).id].state == "dead"
    acts = core.receive(Ping(3, info(3), Load(1, 1, 0, 0)), 6.0, identity=b"\3" * 16)
    assert acts[0] == Disconnect("n1:1")
    assert MemberChanged(info(3).id, "n3", "new", "alive") in acts
    assert set(core.members) == {info(2).id, info(3).id}
    assert "n1:1" not in core._conns


def test_full_table_of_live_members_accepts_no_newcomer():
    core = Membership(info(0), max_members=2)
    for n in (1, 2, 3, 4):
        acts = core.receive(Ping(n, info(n), Load(1, 1, 0, 0)), 0.0, identity=bytes([n]) * 16)
        assert any(isinstance(a, Reply) for a in acts)  # still answered
    assert set(core.members) == {info(1).id, info(2).id}


# ----------------------------------------------------------------------------- scale, determinism


@pytest.mark.timeout(60)
def test_fifty_nodes_with_ten_percent_loss_converge():
    net = SimNetwork(15, loss=0.10)
    first = net.add("n0")
    nodes = [first]
    rng = random.Random(15)
    for i in range(1, 50):
        seed = rng.choice(nodes)  # each knows one earlier node only
        nodes.append(net.add(f"n{i}", seeds=[seed.address]))
    while not converged(nodes):
        assert net.now < 30.0, "no convergence within 30 virtual seconds"
        net.run_for(0.5)
    assert net.stats["lost"] > 1000
    net.run_for(5.0)  # and it stays that way under loss
    assert converged(nodes)
    for n in nodes:
        assert len(n.membership.members) == 49


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
