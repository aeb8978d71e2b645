"""Tests for mesh.discovery.membership: indirect probes, local health, connection resets, timers.

Drivers, and how the cores are driven: ``tests/membership_helpers.py``.
"""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.discovery.membership import Connect, MemberChanged, Membership, Reply, Send, Timing
from mesh.sim.network import MAX_TICK
from mesh.wire.messages import IndirectAck, Leave, Nack, Ping, PingReq, Pong
from tests.membership_helpers import (
    LOAD,
    about,
    bounds,
    converged,
    ident,
    info,
    join,
    mesh,
    number,
    run_core,
    state,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- indirect probes


@pytest.mark.parametrize("members, helpers", [(1, 0), (2, 1), (3, 2), (6, 3)])
def test_a_failed_direct_probe_asks_up_to_indirect_helpers(members, helpers):
    timing = Timing()
    core = Membership(info(1), timing)
    for n in range(2, 2 + members):
        join(core, n, 0.0)
    (ping,) = [a for a in core.tick(1.0) if isinstance(a, Send)]
    probe = core.prober.probe
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
    assert not core.prober.probe.acked
    core.receive(Nack(req.seq, req.target), 1.3, via=sends[1].address)
    assert core.prober.probe.nacks == 1
    core.receive(IndirectAck(req.seq, req.target), 1.35, via=sends[0].address)
    assert core.prober.probe.acked
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
    assert core.prober.probe.ack_deadline == pytest.approx(now + 2 * timing.ack_timeout)
    assert core.prober.probe.end == pytest.approx(now + 2 * timing.period)
    assert core.next_timer(now) == pytest.approx(now + 2 * timing.ack_timeout)
    assert not [a for a in core.tick(now + 1.5 * timing.ack_timeout) if isinstance(a, Send)]
    assert [a for a in core.tick(now + 2 * timing.ack_timeout) if isinstance(a, Send)]  # helpers
    # on time again, probes answered: health falls by one per successful probe
    core.receive(IndirectAck(core.prober.probe.seq, core.prober.probe.target), now + 0.45, via="n2:1")
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
    assert core.prober.probe.target == info(other).id


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
    seq = core.prober.probe.seq
    core.connection_lost(f"n{reset}:1", start + timing.ack_timeout + 0.03)
    assert not [a for a in core.tick(start + timing.ack_timeout + 0.04) if isinstance(a, Send)]
    assert core.prober.probe.seq == seq


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
            core.receive(Pong(core.outbox.last_seq, info(n), LOAD), now, via=info(n).address)
        elif op == "ping-req":
            core.receive(PingReq(n, info(m).id, info(m).address, info(n)), now, identity=ident(n))
        elif op in ("ack", "nack"):
            seq = core.prober.probe.seq if core.prober.probe else 0
            target = core.prober.probe.target if core.prober.probe else info(m).id
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
