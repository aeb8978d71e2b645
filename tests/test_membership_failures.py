"""Tests for mesh.discovery.membership: suspicion, death and refutation, a frozen node.

Drivers, and how the cores are driven: ``tests/membership_helpers.py``.
"""

from __future__ import annotations

from itertools import pairwise

import pytest

from mesh.discovery.detector import suspicion_timeout
from mesh.discovery.membership import MemberChanged, Membership, Reply, Send, Timing
from mesh.sim import SimNetwork, SimNode
from mesh.wire.messages import Digest, Ping
from tests.membership_helpers import (
    LOAD,
    about,
    bounds,
    changes,
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
    assert a.forgotten == []
    net.run_for(timing.forget_after + 1.0)
    assert b.id not in a.membership.members
    assert b.address not in a.membership.dialer.conns or b.address in a.membership.seeds
    assert [node for _, node in a.forgotten] == [b.id]  # the other parts drop it too


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
    assert core.prober.suspicion_timeout(x) == pytest.approx(timeout)
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
    before = core.prober.suspicion_timeout(x)
    # we probe the suspect ourselves, first (it is urgent); it does not answer
    log = run_core(core, 1.0, 1.0 + timing.period, silent={7})
    assert [a.address for _, a in log if isinstance(a, Send) and isinstance(a.message, Ping)][0] == "n7:1"
    assert x.suspecters == {info(2).id, core.me.id}
    assert core.prober.suspicion_timeout(x) < before


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
