"""Busy mesh: 6 agents x 2 slots, every slot burning CPU for 30 s (10 s with --quick); no member may be marked dead. Counts suspicions and refutations.

6 agents on 127.0.0.1 (secure, mDNS and REST off, `--profile default` unless `--profile fast`)
form a mesh; once all see each other alive, each agent is sent 2 calls of
`mesh.demo_tasks:where(i, S)` (a busy loop of S wall-clock seconds), filling all 12 slots at
once, on however few cores the machine has. While they run, every agent's `status` is sampled
each second (lowest `peers_alive`, highest `local_health`); CPU use of all agent trees is
measured over the window. Afterwards: members ever marked dead in any agent's log (must be
0), suspicions, refutations seen (`suspect -> alive` lines), and the summed membership
counters (probes, probe_failures, suspicions, refuted, deaths; local_health the maximum).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Any

from bench.common import BenchError, CpuWindow, log, workdir
from bench.fleet import Fleet, sum_counters, tally

AGENTS = 6
SLOTS = 2
CONVERGE_TIMEOUT_S = 30.0


def add_arguments(parser) -> None:
    parser.add_argument("--profile", choices=("default", "fast"), default="default",
                        help="failure-detection timings of the agents (default: default)")
    parser.add_argument("--seconds", type=float, help="CPU burn per call (default 30; 10 with --quick)")


def run(quick: bool = False, profile: str = "default", seconds: float | None = None) -> dict[str, Any]:
    seconds = seconds or (10.0 if quick else 30.0)
    res: dict[str, Any] = {"scenario": "busy", "agents": AGENTS, "slots_each": SLOTS,
                           "profile": profile, "burn_s": seconds, "cores": os.cpu_count()}
    with workdir("mesh-bench-busy-") as tmp, ExitStack() as stack:
        fleet = Fleet(tmp, profile=profile, cpus=SLOTS)
        stack.callback(fleet.close)
        fleet.start_all(AGENTS)
        fleet.wait_converged(CONVERGE_TIMEOUT_S)
        agents = fleet.agents()
        log(f"{AGENTS} agents converged; submitting {AGENTS * SLOTS} calls of {seconds:.0f} s")
        res["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
        window = CpuWindow({a.state["name"]: a.pid for a in agents})
        t0 = time.monotonic()
        calls = []
        for a in agents:
            for _ in range(SLOTS):
                i = len(calls)
                calls.append((a.state["name"], fleet.client(a).call("mesh.demo_tasks:where", (i, seconds))))
        min_alive, max_health, samples = AGENTS - 1, 0, 0
        deadline = t0 + seconds * 3 + 60
        while not all(f.done() for _, f in calls):
            if time.monotonic() > deadline:
                raise BenchError(f"calls not done {deadline - t0:.0f} s after submission")
            for a in agents:
                st = fleet.status(a, timeout=5.0)
                if st is None:
                    min_alive = -1  # no answer within 5 s: as bad as it gets
                    continue
                min_alive = min(min_alive, st.get("peers_alive", 0))
                max_health = max(max_health, (st.get("membership") or {}).get("local_health", 0))
            samples += 1
            time.sleep(1.0)
        wall = time.monotonic() - t0
        cpu = window.finish()
        results = []
        for name, f in calls:
            try:
                results.append((name, f.result(0)))
            except Exception as exc:
                raise BenchError(f"a call submitted to {name} failed: {type(exc).__name__}: {exc}") from None
        time.sleep(2.0)  # late suspicions born during the burn still get logged
        statuses = [fleet.status(a) for a in agents]
        logs = {a.state["name"]: fleet.changes(a) for a in agents}
    ran_on = {}
    for _, r in results:
        ran_on[r.get("agent", "?")] = ran_on.get(r.get("agent", "?"), 0) + 1
    counts = tally(logs, victims=set())
    res.update({
        "calls": len(results),
        "calls_wall_s": round(wall, 2),
        "ran_on": dict(sorted(ran_on.items())),
        "agents_cpu_pct": round(sum(v for k, v in cpu.items() if k != "window_s"), 1),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "members_marked_dead": counts["false_deaths"],
        "suspicions": counts["false_suspicions"],
        "refutations_seen": counts["refutations_seen"],
        "dead_to_alive": counts["dead_to_alive"],
        "status_samples": samples,
        "min_peers_alive_seen": min_alive,
        "max_local_health_seen": max_health,
        "counters": sum_counters(statuses),
        "ok": counts["false_deaths"] == 0,
    })
    res["summary"] = [
        f"busy: {len(results)} calls of {seconds:.0f} s on {AGENTS}x{SLOTS} slots ({os.cpu_count()} cores, "
        f"agents' trees {res['agents_cpu_pct']}% CPU): members marked dead {counts['false_deaths']} "
        f"(must be 0: {'ok' if res['ok'] else 'FAILED'}), suspicions {counts['false_suspicions']}, "
        f"refutations {counts['refutations_seen']}, max local health {max_health}"]
    return res
