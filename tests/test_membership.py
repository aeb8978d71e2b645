"""Tests for mesh.discovery.membership (SWIM with Lifeguard's refinements).

Cores are driven either directly (one core, messages fed by hand, actions checked)
or through ``mesh.sim.SimNetwork``: a virtual clock and a fake network that route
``Send``/``Reply`` as the agent does (a Send arrives on the peer's ROUTER with our
node id as identity; the peer's Reply comes back on our connection to the address
we sent to). No sockets, no sleeps: virtual seconds cost microseconds.

Timing bounds are derived from ``Timing`` and ``suspicion_bounds``, never guessed.
"""

from __future__ import annotations

import random
import statistics
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.discovery.detector import suspicion_bounds, suspicion_timeout
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
from mesh.messages import (
    STATES,
    Digest,
    IndirectAck,
    Leave,
    Load,
    Nack,
    NodeInfo,
    Ping,
    PingReq,
    Pong,
)
from mesh.sim import SimNetwork, SimNode
from mesh.sim.network import MAX_TICK

pytestmark = pytest.mark.timeout(60)

LOAD = Load(1, 1, 0, 0)


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


def info(n: int, cpus: int = 1, incarnation: int = 0) -> NodeInfo:
    return NodeInfo(f"{n:032x}", f"n{n}", f"n{n}:1", cpus, incarnation)


def ident(n: int) -> bytes:
    """The ROUTER identity of node ``n``'s connection (its node id, as the agent sets it)."""
    return bytes.fromhex(info(n).id)


def about(n: int, state: str, incarnation: int = 0) -> Digest:
    i = info(n)
    return Digest(i.id, i.name, i.address, state, incarnation, i.cpus)


def number(address: str) -> int:
    return int(address.split(":")[0][1:])  # "n7:1" -> 7


def join(core: Membership, n: int, now: float, incarnation: int = 0) -> list:
    """Node ``n`` pings ``core``: it becomes a member and ``core`` connects back."""
    return core.receive(Ping(1000 + n, info(n, incarnation=incarnation), LOAD), now, identity=ident(n))


def bounds(timing: Timing, n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout in a mesh of ``n`` nodes."""
    return suspicion_bounds(n, timing.period, timing.suspicion_alpha, timing.suspicion_beta)


def run_core(core: Membership, start: float, end: float, *, silent=(), step: float = 0.01,
             stop=None) -> list[tuple[float, object]]:
    """Tick ``core`` every ``step`` from ``start`` to ``end`` (or until ``stop()``); the
    members answer its pings and indirect-probe requests at once, except the node
    numbers in ``silent``. Returns every (time, action)."""
    log: list[tuple[float, object]] = []
    k = 0
    while (t := start + k * step) <= end + 1e-9:
        pending = core.tick(t)
        while pending:
            act = pending.pop(0)
            log.append((t, act))
            if not isinstance(act, Send) or number(act.address) in silent:
                continue
            n, msg = number(act.address), act.message
            if isinstance(msg, Ping):
                pending += core.heard_from(info(n).id, t)
                pending += core.receive(Pong(msg.seq, info(n), LOAD), t, via=act.address)
            elif isinstance(msg, PingReq):
                answer = (Nack(msg.seq, msg.target) if number(msg.address) in silent
                          else IndirectAck(msg.seq, msg.target))
                pending += core.receive(answer, t, via=act.address)
        if stop is not None and stop():
            break
        k += 1
    return log


def changes(log) -> list[MemberChanged]:
    return [a for _, a in log if isinstance(a, MemberChanged)]


def mesh(seed: int, n: int, timing: Timing | None = None, settle: float = 2.0, **net_options):
    """``n`` nodes that all seeded the first, converged and settled."""
    net = SimNetwork(seed, **net_options)
    nodes = [net.add("n0", timing=timing)]
    for i in range(1, n):
        nodes.append(net.add(f"n{i}", timing=timing, seeds=[nodes[0].address]))
    assert net.run_until(10.0, stop=lambda: converged(nodes))
    net.run_for(settle)
    return net, nodes


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
            assert x.membership._conns == {y.address: y.id}, seed
            assert x.conns == {y.address}, seed


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
    assert len(core._sent) <= (timing.forget_after / 4) / timing.seed_retry + 2


# ----------------------------------------------------------------------------- indirect probes


@pytest.mark.parametrize("members, helpers", [(1, 0), (2, 1), (3, 2), (6, 3)])
def test_a_failed_direct_probe_asks_up_to_indirect_helpers(members, helpers):
    timing = Timing()
    core = Membership(info(1), timing)
    for n in range(2, 2 + members):
        join(core, n, 0.0)
    (ping,) = [a for a in core.tick(1.0) if isinstance(a, Send)]
    probe = core._probe
    assert isinstance(ping.message, Ping) and probe.seq == ping.message.seq
    target = number(ping.address)
    assert probe.target == info(target).id
    # nothing before the ack timeout
    assert core.next_timer(1.0) == pytest.approx(1.0 + timing.ack_timeout)
    assert not [a for a in core.tick(1.0 + timing.ack_timeout * 0.99) if isinstance(a, Send)]
    sends = [a for a in core.tick(1.0 + timing.ack_timeout) if isinstance(a, Send)]
    assert len(sends) == helpers <= timing.indirect
    assert len({s.address for s in sends}) == helpers  # distinct helpers
    for s in sends:
        assert s.address != ping.address  # not the target itself
        req = s.message
        assert isinstance(req, PingReq)
        assert (req.seq, req.target, req.address) == (ping.message.seq, info(target).id, info(target).address)
        assert req.sender == info(1)
    assert core.counters["indirect"] == 1
    # no answer from anyone by the end of the period: the target is suspect
    acts = core.tick(1.0 + timing.period)
    assert MemberChanged(info(target).id, f"n{target}", "alive", "suspect") in acts
    assert core.counters["probe_failures"] == 1
    # Lifeguard: helpers that did not even nack mean that we may be the slow one;
    # with no helper to ask, there is no such sign
    assert core.health.score == (1 if helpers else 0)


def test_a_helper_answers_indirect_ack_when_the_target_answers():
    timing = Timing()
    helper = Membership(info(1), timing)
    join(helper, 3, 0.0)  # the target is a member of the helper's
    acts = helper.receive(PingReq(77, info(3).id, info(3).address, info(2)), 1.0, identity=ident(2))
    (ping,) = [a for a in acts if isinstance(a, Send) and a.address == "n3:1"]
    assert isinstance(ping.message, Ping)
    assert helper.next_timer(1.0) <= 1.0 + timing.ack_timeout
    acts = helper.receive(Pong(ping.message.seq, info(3), LOAD), 1.05, via="n3:1")
    (reply,) = [a for a in acts if isinstance(a, Reply)]
    assert reply.identity == ident(2)
    assert isinstance(reply.message, IndirectAck)
    assert (reply.message.seq, reply.message.target) == (77, info(3).id)
    # answered once: no Nack later
    assert not [a for a in helper.tick(1.0 + 2 * timing.ack_timeout) if isinstance(a, Reply)]


def test_a_helper_nacks_when_the_target_is_silent_for_ack_timeout():
    timing = Timing()
    helper = Membership(info(1), timing)
    # the target is unknown to the helper: it connects to the address it was given
    acts = helper.receive(PingReq(78, info(3).id, info(3).address, info(2)), 1.0, identity=ident(2))
    assert Connect("n3:1") in acts
    assert [a for a in acts if isinstance(a, Send) and isinstance(a.message, Ping)]
    assert not [a for a in helper.tick(1.0 + timing.ack_timeout * 0.99) if isinstance(a, Reply)]
    acts = helper.tick(1.0 + timing.ack_timeout)
    assert acts.count(Reply(ident(2), Nack(78, info(3).id))) == 1
    assert not [a for a in helper.tick(1.0 + 2 * timing.ack_timeout) if isinstance(a, Reply)]
    # a PingReq about the helper itself, or over no ROUTER connection, probes nothing
    assert not [a for a in helper.receive(PingReq(79, info(1).id, "n1:1", info(2)), 2.0,
                                          identity=ident(2)) if isinstance(a, Send)]


def test_an_indirect_ack_answers_the_probe_and_a_stale_one_does_not():
    timing = Timing()
    core = Membership(info(1), timing)
    for n in (2, 3, 4):
        join(core, n, 0.0)
    core.tick(1.0)
    sends = [a for a in core.tick(1.0 + timing.ack_timeout) if isinstance(a, Send)]
    req = sends[0].message
    core.receive(IndirectAck(req.seq - 1, req.target), 1.3, via=sends[0].address)  # stale
    core.receive(IndirectAck(req.seq, info(9).id), 1.3, via=sends[0].address)  # another target
    assert not core._probe.acked
    core.receive(Nack(req.seq, req.target), 1.3, via=sends[1].address)
    assert core._probe.nacks == 1
    core.receive(IndirectAck(req.seq, req.target), 1.35, via=sends[0].address)
    assert core._probe.acked
    acts = core.tick(1.0 + timing.period)
    assert not [a for a in acts if isinstance(a, MemberChanged)]
    assert core.counters["probe_failures"] == 0 and core.health.score == 0


def test_indirect_probes_prevent_suspicion_across_a_one_pair_partition():
    """a and b cannot reach each other, but both reach everyone else: their direct
    probes of each other fail, the helpers' succeed, and nobody is suspected."""
    for seed in range(3):
        net, nodes = mesh(20 + seed, 5)
        a, b = nodes[1], nodes[2]
        net.partition(a, b)
        start = net.now
        net.run_for(30.0)
        assert all(c.new == "alive" for n in nodes for t, c in n.changes if t >= start), seed
        assert a.membership.counters["indirect"] > 0 and b.membership.counters["indirect"] > 0
        assert all(n.membership.health.score == 0 for n in nodes)
        assert converged(nodes)


# ----------------------------------------------------------------------------- failures


def _pair(seed: int, timing: Timing, record: bool = False) -> tuple[SimNetwork, SimNode, SimNode]:
    net = SimNetwork(seed, record=record)
    b = net.add("b", timing=timing)
    a = net.add("a", timing=timing, seeds=[b.address])
    assert net.run_until(5.0, stop=lambda: converged([a, b]))
    net.run_for(2.0)
    return net, a, b


@pytest.mark.parametrize("profile", ["default", "fast"])
def test_silent_node_is_suspected_when_a_probe_fails_then_dead_after_the_suspicion_timeout(profile):
    timing = Timing.profile(profile)
    net, a, b = _pair(5, timing, record=True)
    killed = net.now
    net.kill(b)
    low, high = bounds(timing, 2)
    net.run_for(2 * timing.period + low + 0.1)
    member = a.membership.members[b.id]
    assert member.state == "dead"
    steps = transitions(a, b)
    assert [(old, new) for _, old, new in steps] == [("new", "alive"), ("alive", "suspect"), ("suspect", "dead")]
    t_suspect, t_dead = steps[1][0], steps[2][0]
    # the probe that failed: the last Ping a sent b before the suspicion, one period earlier
    sent = max(t for t, who, act in net.trace
               if who == "a" and act.startswith("Send(address='b:1', message=Ping(") and t < t_suspect)
    assert t_suspect - sent == pytest.approx(timing.period)
    assert killed < t_suspect <= killed + 2 * timing.period
    # two nodes: nobody to ask for indirect probes, no confirmation to expect: min timeout
    assert not [x for x in net.trace if "PingReq" in x[2]]
    assert t_dead - t_suspect == pytest.approx(low)
    assert member.changed_at == t_dead
    assert member.conn == b.address  # kept: ZeroMQ reconnects, slow pings notice a return


def test_dead_node_that_answers_again_refutes_and_comes_back_alive():
    timing = Timing()
    net, a, b = _pair(6, timing)
    net.kill(b)
    assert net.run_until(net.now + 10.0, stop=lambda: state(a, b) == "dead")
    net.run_for(1.0)
    back = net.now
    net.revive(b)
    # a's next slow ping at the latest carries b's death to b, which refutes in its answer
    assert net.run_until(back + timing.seed_retry + 0.1, stop=lambda: converged([a, b]))
    steps = transitions(a, b)
    assert steps[-1][1:] == ("dead", "alive")
    assert back <= steps[-1][0]
    assert b.membership.me.incarnation == 1 and b.membership.counters["refuted"] >= 1
    assert a.membership.members[b.id].info == b.membership.me


def test_dead_members_are_pinged_only_every_seed_retry():
    timing = Timing()
    net, a, b = _pair(7, timing)
    net.kill(a)  # b learnt a from its pings: a is a member of b's, not a seed
    assert net.run_until(net.now + 10.0, stop=lambda: state(b, a) == "dead")
    net.trace = []
    net.run_for(10.0)
    pings = [t for t, who, act in net.trace if who == "b" and "message=Ping(" in act]
    assert 10.0 / timing.seed_retry - 1 <= len(pings) <= 10.0 / timing.seed_retry + 1
    assert min(y - x for x, y in pairwise(pings)) == pytest.approx(timing.seed_retry)


def test_suspect_refutes_and_comes_back_alive_before_its_suspicion_times_out():
    timing = Timing()
    net, a, b = _pair(8, timing)
    net.partition(a, b)
    assert net.run_until(net.now + 2 * timing.period + 0.1, stop=lambda: state(a, b) == "suspect")
    net.heal(a, b)
    low, _ = bounds(timing, 2)
    net.run_for(low)  # each side's next probe carries the other's suspicion: it refutes
    assert converged([a, b])
    for x, y in ((a, b), (b, a)):
        assert all(new != "dead" for _, _, new in transitions(x, y))
        assert x.membership.members[y.id].info.incarnation == y.membership.me.incarnation
    assert b.membership.me.incarnation >= 1 and b.membership.counters["refuted"] >= 1


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
        # at most two periods to a failed probe, then the (two-node) suspicion timeout
        assert detected[profile] <= 2 * timing.period + bounds(timing, 2)[0] + 1e-6
    assert detected["fast"] < detected["default"] / 2


def test_unknown_profile_is_a_value_error():
    with pytest.raises(ValueError):
        Timing.profile("turbo")


def test_dead_member_is_forgotten_after_forget_after():
    timing = Timing(forget_after=10.0)
    net, a, b = _pair(10, timing)
    net.kill(b)
    assert net.run_until(net.now + 10.0, stop=lambda: state(a, b) == "dead")
    net.run_for(timing.forget_after + 1.0)
    assert b.id not in a.membership.members
    assert b.address not in a.membership._conns or b.address in a.membership.seeds


def test_restarted_node_at_the_same_address_keeps_its_connection():
    """A node restarts with a new id at the old address: forgetting the old member
    must not close the connection the new one now uses."""
    timing = Timing(forget_after=10.0)
    net, a, b = _pair(11, timing)
    net.kill(b)
    assert net.run_until(net.now + 10.0, stop=lambda: state(a, b) == "dead")
    b2 = net.add("b", timing=timing)  # same name, same address, new id
    assert b2.id != b.id and b2.address == b.address
    assert net.run_until(net.now + 5.0, stop=lambda: state(a, b2) == "alive")
    net.run_for(timing.forget_after + 2.0)
    assert b.id not in a.membership.members
    assert state(a, b2) == "alive"
    assert a.membership.members[b2.id].conn == b2.address
    assert b2.address in a.conns  # still connected
    assert a.membership.member_at(b2.address).info.id == b2.id


# ----------------------------------------------------------------------------- suspicion


def test_a_suspicion_about_ourselves_is_refuted_with_a_higher_incarnation():
    core = Membership(info(1))
    join(core, 2, 0.0)
    acts = core.receive(Ping(5, info(2), LOAD, [about(1, "suspect", 0)]), 1.0, identity=ident(2))
    assert core.me.incarnation == 1 and core.counters["refuted"] == 1
    (reply,) = [a for a in acts if isinstance(a, Reply)]
    assert reply.message.sender.incarnation == 1  # the answer itself carries the refutation
    assert about(1, "alive", 1) in core.gossip.take(8, 2)  # and it is queued for gossip
    assert core.health.score == 1  # Lifeguard: being suspected hints that we are slow
    # older news is ignored; news at our incarnation (suspect or dead) is refuted again
    core.receive(Ping(6, info(2), LOAD, [about(1, "suspect", 0), about(1, "dead", 0)]), 1.1,
                 identity=ident(2))
    assert core.me.incarnation == 1
    core.receive(Ping(7, info(2), LOAD, [about(1, "dead", 1)]), 1.2, identity=ident(2))
    assert core.me.incarnation == 2 and core.counters["refuted"] == 2
    core.receive(Ping(8, info(2), LOAD, [about(1, "alive", 2)]), 1.3, identity=ident(2))
    assert core.me.incarnation == 2


def test_a_refutation_spreads_until_everyone_sees_us_alive_again():
    timing = Timing()
    net, nodes = mesh(30, 6, timing)
    a, b, c = nodes[1], nodes[2], nodes[3]
    # c hears (from a) that b is suspect, though b is fine
    rumour = Digest(b.id, b.name, b.address, "suspect", 0, 1)
    net.do(c, c.membership.receive(Ping(9999, a.membership.me, LOAD, [rumour]), net.now,
                                   identity=bytes.fromhex(a.id)))
    assert state(c, b) == "suspect"
    start = net.now
    others = [n for n in nodes if n is not b]
    _, high = bounds(timing, len(nodes))
    assert net.run_until(start + high, stop=lambda: all(
        n.membership.members[b.id].info.incarnation == 1 and state(n, b) == "alive" for n in others))
    assert b.membership.me.incarnation == 1 and b.membership.counters["refuted"] == 1
    assert all(new != "dead" for n in others for _, _, new in transitions(n, b))
    net.run_for(high)  # and it stays so
    assert converged(nodes) and b.membership.me.incarnation == 1


@pytest.mark.parametrize("confirmations", [0, 1, 2, 3, 4])
def test_each_independent_confirmation_shrinks_the_suspicion_timeout(confirmations):
    timing = Timing()
    core = Membership(info(1), timing)
    for n in range(2, 8):
        join(core, n, 0.0)
    x = core.members[info(7).id]
    t = 1.0
    core.receive(Ping(1, info(2), LOAD, [about(7, "suspect")]), t, identity=ident(2))
    assert x.state == "suspect" and x.suspecters == {info(2).id}
    for n in range(3, 3 + confirmations):
        core.receive(Ping(n, info(n), LOAD, [about(7, "suspect")]), t, identity=ident(n))
    core.receive(Ping(99, info(2), LOAD, [about(7, "suspect")]), t, identity=ident(2))  # not new
    assert len(x.suspecters) == 1 + confirmations
    low, high = bounds(timing, 7)
    expected = min(timing.expected_confirmations, 7 - 2)
    timeout = suspicion_timeout(low, high, confirmations, expected)
    assert core._suspicion_timeout(x) == pytest.approx(timeout)
    assert core.next_timer(t) <= t + timeout
    assert not changes([(0, a) for a in core.tick(t + timeout - 1e-6)])
    assert MemberChanged(x.info.id, "n7", "suspect", "dead") in core.tick(t + timeout + 1e-6)
    if confirmations == 0:
        assert timeout == high
    if confirmations >= expected:
        assert timeout == pytest.approx(low)


def test_our_own_failed_probe_of_a_suspect_confirms_the_suspicion():
    timing = Timing()
    core = Membership(info(1), timing)
    for n in range(2, 8):
        join(core, n, 0.0)
    x = core.members[info(7).id]
    core.receive(Ping(1, info(2), LOAD, [about(7, "suspect")]), 1.0, identity=ident(2))
    before = core._suspicion_timeout(x)
    # we probe the suspect ourselves, first (it is urgent); it does not answer
    log = run_core(core, 1.0, 1.0 + timing.period, silent={7})
    assert [a.address for _, a in log if isinstance(a, Send) and isinstance(a.message, Ping)][0] == "n7:1"
    assert x.suspecters == {info(2).id, core.me.id}
    assert core._suspicion_timeout(x) < before


def test_confirmations_from_the_mesh_shrink_the_suspicion_timeout():
    """End to end: in a mesh of 6, the first survivor to declare a silent node dead has
    heard confirmations from others, so it waited less than the maximum timeout."""
    timing = Timing()
    low, high = bounds(timing, 6)
    for seed in range(5):
        net, nodes = mesh(40 + seed, 6, timing)
        victim = nodes[seed % 6]
        net.kill(victim)
        start = net.now
        others = [n for n in nodes if n is not victim]
        assert net.run_until(start + 20.0, stop=lambda: all(state(o, victim) == "dead" for o in others))  # noqa: B023
        waits = []
        for o in others:
            steps = transitions(o, victim)
            (t_suspect,) = [t for t, _, new in steps if new == "suspect"]
            (t_dead,) = [t for t, _, new in steps if new == "dead"]
            waits.append((t_dead, t_dead - t_suspect, o))
        _, first_wait, first = min(waits, key=lambda w: w[0])
        assert low - 1e-6 <= first_wait < high, seed
        assert len(first.membership.members[victim.id].suspecters) >= 2, seed


# ----------------------------------------------------------------------------- local health


def test_late_ticks_raise_local_health_and_stretch_probe_timeouts():
    timing = Timing()
    core = Membership(info(1), timing)
    for n in (2, 3, 4):
        join(core, n, 0.0)
    run_core(core, 0.0, 2.0, step=0.05)
    assert core.health.score == 0
    # our loop was starved: the next tick comes late
    now = 2.0 + timing.starved_after + 0.05
    acts = core.tick(now)
    assert core.health.score == 1
    (ping,) = [a for a in acts if isinstance(a, Send)]
    # probe timeouts and the period are stretched by 1 + score
    assert core._probe.ack_deadline == pytest.approx(now + 2 * timing.ack_timeout)
    assert core._probe.end == pytest.approx(now + 2 * timing.period)
    assert core.next_timer(now) == pytest.approx(now + 2 * timing.ack_timeout)
    assert not [a for a in core.tick(now + 1.5 * timing.ack_timeout) if isinstance(a, Send)]
    assert [a for a in core.tick(now + 2 * timing.ack_timeout) if isinstance(a, Send)]  # helpers
    # on time again, probes answered: health falls by one per successful probe
    core.receive(IndirectAck(core._probe.seq, core._probe.target), now + 0.45, via="n2:1")
    assert core.health.score == 0


def test_successful_probes_bring_local_health_down():
    timing = Timing()
    core = Membership(info(1), timing)
    for n in (2, 3, 4):
        join(core, n, 0.0)
    for _ in range(5):
        core.health.up()
    log = run_core(core, 0.0, 20.0, step=0.05, stop=lambda: core.health.score == 0)
    assert core.health.score == 0
    # one step down per answered probe, each in a period stretched by the score then
    assert log[-1][0] <= sum(timing.period * (1 + s) for s in range(1, 6)) + 0.1


def test_an_isolated_node_raises_its_health_others_do_not_and_it_recovers():
    """Probes that fail with no nack from any helper: the isolated node thinks it is
    the slow one (Lifeguard) and stretches its timeouts; the others get nacks from
    their helpers, so they keep theirs; after healing it comes back down."""
    timing = Timing()
    net, nodes = mesh(50, 6, timing)
    lonely, rest = nodes[3], [n for n in nodes if n is not nodes[3]]
    for n in rest:
        net.partition(lonely, n)
    net.run_for(10.0)
    score = lonely.membership.health.score
    assert score >= 2
    assert all(n.membership.health.score == 0 for n in rest)
    assert all(state(n, lonely) == "dead" for n in rest)
    for n in rest:
        net.heal(lonely, n)
    healed = net.now
    # slow pings reach it within seed_retry; then one answered probe per stretched period
    limit = 2 * timing.seed_retry + sum(timing.period * (1 + s) for s in range(1, score + 2))
    assert net.run_until(healed + limit, stop=lambda: converged(nodes) and lonely.membership.health.score == 0)


# ----------------------------------------------------------------------------- resets


def test_connection_lost_probes_that_member_at_once():
    timing = Timing()
    core = Membership(info(1), timing)
    for n in (2, 3, 4, 5):
        join(core, n, 0.0)
    log = run_core(core, 0.0, 1.0, step=0.05)
    probed = number([a for _, a in log if isinstance(a, Send)][-1].address)
    other = next(n for n in (2, 3, 4, 5) if n != probed)
    assert core.connection_lost(f"n{other}:1", 1.01) == []
    assert core.next_timer(1.01) == 1.01  # a tick is due at once
    (ping,) = [a for a in core.tick(1.01) if isinstance(a, Send)]
    assert ping.address == f"n{other}:1" and isinstance(ping.message, Ping)
    # a reset of an unknown address, or of a dead member, is no hint
    assert core.connection_lost("unknown:1", 1.02) == []
    assert core._probe.target == info(other).id


def test_a_reset_does_not_fail_the_probe_of_another_member_in_flight():
    """A reset arrives while our probe of another member waits for its indirect acks:
    that probe is abandoned, not failed (no suspicion, no health penalty)."""
    timing = Timing()
    core = Membership(info(1), timing)
    for n in (2, 3, 4):
        join(core, n, 0.0)
    run_core(core, 0.0, 1.0, step=0.05)
    (ping,) = [a for a in core.tick(1.0 + timing.period) if isinstance(a, Send)]
    start = 1.0 + timing.period
    target = number(ping.address)
    core.tick(start + timing.ack_timeout)  # helpers asked, their answers not yet due
    reset = next(n for n in (2, 3, 4) if n != target)
    core.connection_lost(f"n{reset}:1", start + timing.ack_timeout + 0.01)
    acts = core.tick(start + timing.ack_timeout + 0.02)
    assert not [a for a in acts if isinstance(a, MemberChanged)]
    assert core.health.score == 0 and core.counters["probe_failures"] == 0
    assert [a.address for a in acts if isinstance(a, Send)] == [f"n{reset}:1"]
    # a reset of the member we are already probing does not restart the probe
    seq = core._probe.seq
    core.connection_lost(f"n{reset}:1", start + timing.ack_timeout + 0.03)
    assert not [a for a in core.tick(start + timing.ack_timeout + 0.04) if isinstance(a, Send)]
    assert core._probe.seq == seq


def _detection(seed: int, timing: Timing, reset: bool) -> float:
    net, nodes = mesh(seed, 6, timing, settle=2.0 + random.Random(seed).random())
    victim = nodes[seed % 6]
    killed = net.now
    net.kill(victim, reset=reset)
    others = [n for n in nodes if n is not victim]
    assert net.run_until(killed + 20.0, stop=lambda: all(state(o, victim) == "dead" for o in others))
    return net.now - killed


def test_a_reset_kill_is_detected_faster_than_a_silent_kill():
    timing = Timing()
    resets = [_detection(60 + s, timing, reset=True) for s in range(10)]
    silents = [_detection(60 + s, timing, reset=False) for s in range(10)]
    assert statistics.median(resets) < statistics.median(silents)
    # every survivor probes at its next tick, fails within a period, then waits at
    # most the maximum suspicion timeout
    _, high = bounds(timing, 6)
    assert max(resets) <= MAX_TICK + timing.period + high


# ----------------------------------------------------------------------------- frozen node


def test_a_frozen_node_is_declared_dead_then_refutes_and_is_alive_everywhere():
    timing = Timing()
    low, high = bounds(timing, 5)
    for seed in range(3):
        net, nodes = mesh(70 + seed, 5, timing)
        frozen = nodes[2 + seed]
        others = [n for n in nodes if n is not frozen]
        frozen_at = net.now
        net.kill(frozen)  # no reset: a frozen process (SIGSTOP, a laptop lid, a VM pause)
        worst = 2 * (len(nodes) - 1) * timing.period + timing.period + high  # round robin wait
        assert net.run_until(frozen_at + worst, stop=lambda: all(state(o, frozen) == "dead" for o in others))  # noqa: B023
        detected = net.now - frozen_at
        net.run_for(detected + 1.0)
        woke = net.now
        net.revive(frozen)
        # everyone slow-pings it within seed_retry: each ping carries its death, it refutes
        assert net.run_until(woke + timing.seed_retry + 0.1, stop=lambda: converged(nodes)), seed  # noqa: B023
        inc = frozen.membership.me.incarnation
        assert inc >= 1
        assert all(o.membership.members[frozen.id].info.incarnation == inc for o in others)
        # nobody else paid for it
        assert all(c.node_id == frozen.id or c.new == "alive" for n in nodes for t, c in n.changes if t >= frozen_at)


# ----------------------------------------------------------------------------- timers


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["tick", "ping", "pong", "ping-req", "ack", "nack", "lost", "suspect",
                         "dead", "leave-msg", "leave"]),
        st.integers(2, 7),
        st.integers(2, 7),
        st.floats(0.0, 1.5),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_next_timer_is_never_in_the_past_and_a_tick_clears_all_that_is_due(ops):
    core = Membership(info(1), Timing(), random.Random(0), max_members=4)
    now = 0.0
    for op, n, m, dt in ops:
        now += dt
        if op == "tick":
            core.tick(now)
            for _ in range(len(core.members) + 1):
                if core.next_timer(now) > now:
                    break
                # a tick may make a suspicion due at once (our own failed probe confirms
                # it, or a death shrinks the mesh and so the other suspicions' timeouts):
                # the shell ticks again, at most once per member
                core.tick(now)
            # nothing left overdue: else the shell would wake at once, again and again
            assert core.next_timer(now) > now
        elif op == "ping":
            core.receive(Ping(n, info(n), LOAD), now, identity=ident(n))
        elif op == "pong":
            core.heard_from(info(n).id, now)
            core.receive(Pong(core._seq, info(n), LOAD), now, via=info(n).address)
        elif op == "ping-req":
            core.receive(PingReq(n, info(m).id, info(m).address, info(n)), now, identity=ident(n))
        elif op in ("ack", "nack"):
            seq = core._probe.seq if core._probe else 0
            target = core._probe.target if core._probe else info(m).id
            msg = IndirectAck(seq, target) if op == "ack" else Nack(seq, target)
            core.receive(msg, now, via=info(n).address)
        elif op == "lost":
            core.connection_lost(info(n).address, now)
        elif op in ("suspect", "dead"):
            core.receive(Ping(n, info(n), LOAD, [about(m, op)]), now, identity=ident(n))
        elif op == "leave-msg":
            core.receive(Leave(info(n).id, 0), now, identity=ident(n))
        elif op == "leave":
            core.leave()
        assert core.next_timer(now) >= now


def test_an_idle_mesh_does_not_spin():
    """The simulator, like the agent, wakes at ``next_timer``: a timer left in the past
    would make it wake at once, thousands of times a second."""
    timing = Timing()
    net, nodes = mesh(80, 4, timing)
    counts = dict.fromkeys([n.name for n in nodes], 0)
    for node in nodes:
        tick = node.membership.tick

        def counted(now, tick=tick, name=node.name):
            counts[name] += 1
            return tick(now)

        node.membership.tick = counted
    net.run_for(10.0)
    # at most: every tick_every, plus the ack deadline and end of each probe and slow pings
    per_second = 1 / nodes[0].tick_every + 2 / timing.period + 1 / timing.seed_retry
    assert max(counts.values()) <= 10.0 * per_second


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
    core = Membership(info(1))
    join(core, 2, 0.0)
    member = core.members[info(2).id]
    member.state, member.changed_at = old, 0.5
    before = (member.state, member.changed_at, member.last_heard, member.conn)
    if old == new:  # not a change: nothing to announce
        assert core._set_state(member, new, 1.0) == []
        assert (member.state, member.changed_at, member.last_heard, member.conn) == before
    elif (old, new) in TRANSITIONS:
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
    assert net.run_until(net.now + 20.0, stop=lambda: [state(a, n) for n in first] == ["dead", "dead", "alive"])
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
        join(core, n, 0.0)
    run_core(core, 0.0, 10.0, silent={1}, stop=lambda: core.members[info(1).id].state == "dead")
    assert core.members[info(1).id].state == "dead"
    assert core.members[info(2).id].state == "alive"
    acts = join(core, 3, 10.0)
    assert acts[0] == Disconnect("n1:1")
    assert MemberChanged(info(3).id, "n3", "new", "alive") in acts
    assert set(core.members) == {info(2).id, info(3).id}
    assert "n1:1" not in core._conns


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
