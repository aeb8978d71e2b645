"""CPU cost of the pure cores at scale, in their simulators: membership (200 nodes) and the latency tree (1,000 nodes, churn).

The scaled runs of `tests/test_sim_membership.py` and `tests/test_tree_sim.py`, measured
(the tests check what they do, never how fast). Both are seeded: one seed, one run, so
the work is the same from run to run and only the CPU time moves.

- `membership`: 200 nodes, each seeding a random earlier one, until every one has every
  other alive; then 2 s, a silent kill, and until every survivor has the victim dead
  (`test_two_hundred_nodes_converge_then_detect_a_kill`).
- `tree`: 1,000 nodes (`tree_sim.grow`, seed 2, 1% loss) for 30 s, then 300 s of churn
  (a kill, a leave or a join every second on average, the root killed at 150 s), then
  30 s (`test_three_hundred_churn_events_never_loop_and_repair_fast`); 60 s of churn
  with --quick.

Figures per part: CPU seconds of this process (`time.process_time`), virtual seconds,
messages delivered, CPU microseconds per delivered message, and the simulator's event
counts. To compare two commits, run this on each (`PYTHONPATH` at each checkout),
alternating: the figures move with the machine's other load, pairs taken close together
do not.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from bench.common import log


def add_arguments(parser) -> None:
    parser.add_argument("--part", choices=("membership", "tree", "both"), default="both",
                        help="which simulator to run (default both)")


def _membership() -> dict[str, Any]:
    from mesh.discovery.membership import Timing
    from mesh.sim import SimNetwork

    def state(of, about) -> str | None:
        member = of.membership.members.get(about.id)
        return None if member is None else member.state

    cpu = time.process_time()
    n, net, rng = 200, SimNetwork(200), random.Random(200)
    nodes = [net.add("n0", timing=Timing())]
    for i in range(1, n):
        nodes.append(net.add(f"n{i}", timing=Timing(), seeds=[rng.choice(nodes).address]))
    while not all(state(a, b) == "alive" for a in nodes for b in nodes if a is not b):
        if net.now > 60.0:
            raise RuntimeError("no convergence in 60 virtual seconds")
        net.run_for(0.01)
    converged = net.now
    net.run_for(2.0)
    victim = nodes[rng.randrange(n)]
    killed = net.now
    net.kill(victim)
    while not all(state(s, victim) == "dead" for s in nodes if s is not victim):
        if net.now - killed > 60.0:
            raise RuntimeError("the kill was not detected in 60 virtual seconds")
        net.run_for(0.05)
    cpu = time.process_time() - cpu
    delivered = net.stats["delivered"]
    return {"cpu_s": round(cpu, 2), "virtual_s": round(net.now, 2), "converged_s": round(converged, 2),
            "detected_s": round(net.now - killed, 2), "delivered": delivered,
            "cpu_us_per_message": round(1e6 * cpu / delivered, 1), "stats": dict(net.stats)}


def _tree(quick: bool) -> dict[str, Any]:
    from mesh.sim.tree_sim import churn, grow

    cpu = time.process_time()
    sim = grow(1000, seed=2, loss=0.01)
    sim.run_until(30.0)
    events, _ = churn(sim, 60.0 if quick else 300.0, random.Random(2), mean_gap=1.0,
                      root_kills=(30.0 if quick else 150.0,))
    sim.run_for(30.0)
    cpu = time.process_time() - cpu
    delivered = sim.stats["delivered"]
    return {"cpu_s": round(cpu, 2), "virtual_s": round(sim.now, 2), "events": dict(events),
            "delivered": delivered, "cpu_us_per_message": round(1e6 * cpu / max(delivered, 1), 1),
            "stats": dict(sim.stats), "alive": len(sim.alive),
            "roots": len(sim.roots()), "repairs": len(sim.repairs),
            "max_repair_s": round(max((s for _, s in sim.repairs), default=math.nan), 3)}


def run(quick: bool = False, part: str = "both") -> dict[str, Any]:
    res: dict[str, Any] = {"scenario": "sims", "quick": quick}
    if part in ("membership", "both"):
        log("membership: 200 nodes")
        res["membership"] = _membership()
        log(f"membership: {res['membership']['cpu_s']} s of CPU, "
            f"{res['membership']['cpu_us_per_message']} us a message")
    if part in ("tree", "both"):
        log("tree: 1,000 nodes under churn")
        res["tree"] = _tree(quick)
        log(f"tree: {res['tree']['cpu_s']} s of CPU, {res['tree']['cpu_us_per_message']} us a message")
    return res
