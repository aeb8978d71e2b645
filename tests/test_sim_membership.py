"""Failure detection measured in the simulator, with the real membership core.

Seeded scenarios (one seed, one run), so every number here is reproducible. Bounds
come from ``Timing`` (periods, suspicion bounds, seed_retry); the only fixed numbers
are the project's detection targets for real agents (``TARGETS``). Run with ``-s``
to see the measured distributions.
"""

from __future__ import annotations

import math
import random

import pytest

from mesh.discovery.detector import suspicion_bounds
from mesh.discovery.membership import Timing
from mesh.sim import SimNetwork, SimNode
from mesh.sim.network import MAX_TICK
from tests.membership_helpers import converged, state

pytestmark = pytest.mark.timeout(60)

KILLS = 20
SIZE = 6
# (profile, reset) -> the project's target for the 95th percentile of the time from a
# kill to every survivor marking the node dead, in seconds
TARGETS = {
    ("default", True): 2.0,
    ("default", False): 2.5,
    ("fast", True): 0.5,
    ("fast", False): 1.0,
}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of values <= it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def bounds(timing: Timing, n: int) -> tuple[float, float]:
    return suspicion_bounds(n, timing.period, timing.suspicion_alpha, timing.suspicion_beta)


def died_at(observer: SimNode, victim: SimNode) -> float:
    return max(t for t, c in observer.changes if c.node_id == victim.id and c.new == "dead")


def detect_once(seed: int, timing: Timing, reset: bool) -> float:
    """A fresh converged mesh of SIZE nodes; kill one at a random phase; the time until
    every survivor has it dead."""
    rng = random.Random(seed)
    net = SimNetwork(seed)
    nodes = [net.add("n0", timing=timing)]
    for i in range(1, SIZE):
        nodes.append(net.add(f"n{i}", timing=timing, seeds=[nodes[0].address]))
    assert net.run_until(10.0, stop=lambda: converged(nodes))
    net.run_for(rng.uniform(2.0, 3.0))  # settle, and kill at a random point of the periods
    victim = nodes[rng.randrange(SIZE)]
    survivors = [n for n in nodes if n is not victim]
    killed = net.now
    net.kill(victim, reset=reset)
    assert net.run_until(killed + 30.0, stop=lambda: all(state(s, victim) == "dead" for s in survivors))
    return max(died_at(s, victim) for s in survivors) - killed


# ----------------------------------------------------------------------------- (a) detection


@pytest.mark.parametrize("profile, reset", [
    pytest.param(p, r, id=f"{p}-{'reset' if r else 'silent'}")
    for p in ("default", "fast") for r in (True, False)
])
def test_detection_time_of_a_killed_node(profile, reset):
    timing = Timing.profile(profile)
    times = [detect_once(1000 * (profile == "fast") + 100 * reset + k, timing, reset)
             for k in range(KILLS)]
    p50, p95 = percentile(times, 50), percentile(times, 95)
    target = TARGETS[(profile, reset)]
    print(f"\n{profile} {'reset ' if reset else 'silent'} kills={KILLS}: "
          f"p50 {p50:.3f} s  p95 {p95:.3f} s  max {max(times):.3f} s  (target p95 < {target} s)")
    low, high = bounds(timing, SIZE)
    # nobody dies before a suspicion has lasted the minimum timeout
    assert min(times) >= low
    # a reset: every survivor probes at its next tick, fails within a period, then waits
    # at most the maximum suspicion timeout; silent: add the longest round robin wait
    # (two rounds of SIZE - 1 periods)
    worst = MAX_TICK + timing.period + high
    if not reset:
        worst += 2 * (SIZE - 1) * timing.period
    assert max(times) <= worst
    assert p95 < target, f"p95 {p95:.3f} s >= target {target} s: {sorted(times)}"


def test_a_reset_is_detected_faster_than_silence():
    for profile in ("default", "fast"):
        timing = Timing.profile(profile)
        resets = [detect_once(2000 + k, timing, True) for k in range(10)]
        silents = [detect_once(2000 + k, timing, False) for k in range(10)]
        assert percentile(resets, 50) < percentile(silents, 50), profile


# ----------------------------------------------------------------------------- (b) no false deaths


def test_no_false_deaths_with_loss_and_jitter():
    """30 nodes, 5% loss, delays from 0.5 to 50 ms, 60 virtual seconds: suspicions
    happen (a direct probe and its indirect probes all lost) and are refuted; nobody
    is declared dead."""
    timing = Timing()
    net = SimNetwork(3, loss=0.05, delay=(0.0005, 0.05))
    rng = random.Random(3)
    nodes = [net.add("n0", timing=timing)]
    for i in range(1, 30):
        nodes.append(net.add(f"n{i}", timing=timing, seeds=[rng.choice(nodes).address]))
    while not converged(nodes):
        assert net.now < 30.0
        net.run_for(0.1)
    start = net.now
    net.run_for(60.0)
    suspicions = sum(1 for n in nodes for t, c in n.changes if t >= start and c.new == "suspect")
    refuted = sum(n.membership.counters["refuted"] for n in nodes)
    deaths = [(n.name, c.name, t) for n in nodes for t, c in n.changes if c.new == "dead"]
    print(f"\n30 nodes, 5% loss, 0.5-50 ms: {net.stats['lost']} messages lost, "
          f"{suspicions} suspicions, {refuted} refutations, {len(deaths)} deaths")
    sent = net.stats["lost"] + net.stats["delivered"] + net.stats["dropped"]
    assert abs(net.stats["lost"] / sent - 0.05) < 0.01
    assert deaths == []
    assert all(n.membership.members[m.id].state in ("alive", "suspect")
               for n in nodes for m in nodes if m is not n)
    assert net.run_until(net.now + bounds(timing, 30)[1], stop=lambda: converged(nodes))


def test_a_silent_member_is_found_while_members_join_faster_than_one_a_period():
    """Probe starvation: members join faster than one a protocol period, before and
    after a member falls silent. Were newcomers probed next, a node would never come
    back to the others, and the silent one would never be suspected; with SWIM's random
    insertion every member keeps its turn in the round robin."""
    timing = Timing()
    net = SimNetwork(21)
    rng = random.Random(21)
    nodes = [net.add("n0", timing=timing)]
    for i in range(1, 5):
        nodes.append(net.add(f"n{i}", timing=timing, seeds=[nodes[0].address]))
    assert net.run_until(10.0, stop=lambda: converged(nodes))
    victim, survivors = nodes[2], nodes[:2] + nodes[3:]
    gap = timing.period / 1.5  # three joins every two periods
    window = 50 * timing.period  # the joins go on all this time
    start = net.now
    kill_at = start + 6 * timing.period  # newcomers are already waiting in every round robin
    newcomers: list[SimNode] = []

    def join() -> None:
        seed = rng.choice([n for n in nodes + newcomers if n is not victim])
        newcomers.append(net.add(f"j{len(newcomers)}", timing=timing, seeds=[seed.address]))
        if net.now + gap < kill_at + window:
            net.at(net.now + gap, join)

    net.at(start, join)
    net.at(kill_at, lambda: net.kill(victim))
    net.run_until(kill_at)
    found = net.run_until(kill_at + window, stop=lambda: not victim.alive and all(
        state(s, victim) == "dead" for s in survivors))
    print(f"\n{len(newcomers)} joins in {net.now - start:.1f} s; the silent member "
          f"{'dead for all after ' + format(net.now - kill_at, '.1f') + ' s' if found else 'never found'}")
    assert found, f"not found in {window:.0f} s: {[state(s, victim) for s in survivors]}"
    assert len(newcomers) > (net.now - start) / timing.period  # faster than one a period all along


# ----------------------------------------------------------------------------- (c) partition


def test_a_partitioned_pair_is_declared_dead_then_everyone_is_alive_again():
    """2 of 10 nodes cut off for 10 s. The nodes found each other by announcement
    (mDNS), so nobody has a seed: after healing, the only way back is the slow ping
    that dead members still get every seed_retry."""
    timing = Timing()
    for seed in range(3):
        net = SimNetwork(10 + seed)
        nodes = [net.add(f"n{i}", timing=timing) for i in range(10)]
        for node in nodes[1:]:
            net.do(node, node.membership.discovered(nodes[0].id, nodes[0].address, net.now))
        assert net.run_until(10.0, stop=lambda: converged(nodes))  # noqa: B023
        assert not any(n.membership.seeds for n in nodes)
        net.run_for(2.0)
        cut, rest = nodes[-2:], nodes[:-2]
        for a in cut:
            for b in rest:
                net.partition(a, b)
        start = net.now
        net.run_for(10.0)
        assert all(state(r, c) == "dead" for r in rest for c in cut), seed
        detected = max(died_at(r, c) for r in rest for c in cut) - start
        assert state(cut[0], cut[1]) == "alive" and state(cut[1], cut[0]) == "alive"
        for a in cut:
            for b in rest:
                net.heal(a, b)
        healed = net.now
        # a slow-ping round reaches the dead, which refute in their answers; a second
        # one carries back what the other side refuted; a probe round spreads the rest
        limit = 2 * timing.seed_retry + (len(nodes) - 1) * timing.period
        assert net.run_until(healed + limit, stop=lambda: converged(nodes)), seed  # noqa: B023
        print(f"\npartition seed {seed}: dead on the other side after {detected:.2f} s, "
              f"everyone alive {net.now - healed:.2f} s after healing (bound {limit:.1f} s); "
              f"health of the cut nodes {[c.membership.health.score for c in cut]}")
        assert all(c.membership.me.incarnation >= 1 for c in cut)


# ----------------------------------------------------------------------------- (d) scale


def test_two_hundred_nodes_converge_then_detect_a_kill():
    timing = Timing()
    n = 200
    net = SimNetwork(200)
    rng = random.Random(200)
    nodes = [net.add("n0", timing=timing)]
    for i in range(1, n):
        nodes.append(net.add(f"n{i}", timing=timing, seeds=[rng.choice(nodes).address]))
    # epidemic dissemination: the informed set at least doubles every period
    limit = math.ceil(math.log2(n)) * timing.period
    while not converged(nodes):
        assert net.now <= limit, "no convergence"
        net.run_for(0.01)
    joined = net.now
    net.run_for(2.0)
    victim = nodes[rng.randrange(n)]
    survivors = [x for x in nodes if x is not victim]
    killed = net.now
    net.kill(victim)
    low, high = bounds(timing, n)
    # some survivor probes it within a few periods (199 probers, 1/e chance per period
    # that none picks it: 5 periods leave < 1%), then a period, the suspicion spreads
    # in log2(n) periods and every survivor waits at most the maximum timeout
    worst = 5 * timing.period + timing.period + math.ceil(math.log2(n)) * timing.period + high
    while not all(state(s, victim) == "dead" for s in survivors):
        assert net.now - killed <= worst, "not detected by all"
        net.run_for(0.05)
    detected = max(died_at(s, victim) for s in survivors) - killed
    first = min(died_at(s, victim) for s in survivors) - killed
    print(f"\n200 nodes: converged at {joined:.3f} s (bound {limit:.1f} s); kill detected by "
          f"the first after {first:.2f} s, by all after {detected:.2f} s (bound {worst:.1f} s)")
    assert detected >= low
    assert not [c for x in nodes for t, c in x.changes if c.node_id != victim.id and c.new != "alive"]

