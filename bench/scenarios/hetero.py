"""Heterogeneous mesh: a bag of ~50 ms CPU tasks over agents of different speed (one capped like a Pi); makespan vs ideal.

Three agents on 127.0.0.1 (secure, `--no-mdns`, seeded to the first), sized so that the CPU they
can use together fits this 2-core machine; otherwise "capacity" would be fiction:
- `hub`: `--cpus 1`, not capped: one slot, about one core. The client connects here.
- `box`: `--cpus 2` inside a cgroup capped at 50% of one core (harness `cg_limit.sh`, CFS quota
  50 ms per 100 ms for the whole process tree: agent loop and its two workers): two slow slots.
- `pi`: `--cpus 1` capped at 25% of a core and 256 MB, like a Raspberry Pi.
Together at most 1.0 + 0.5 + 0.25 = 1.75 cores of task work; the last quarter core is left for
the agents' loops, this client and the OS, so every agent can get its capacity at the same time.
Without usable cgroups `pi` is skipped (reported under "skipped") and `box` runs with 1 slot
and no cap (1 + 1 slots = the 2 cores).

The task is `bench.common.spin(n)`, a pure-Python loop with n calibrated at the start of the run
so that it takes ~50 ms of CPU on one core in this process (`calib_task_cpu_s`).

Capacity is MEASURED, not assumed: before the bag and again after it, each agent alone (the
others idle) runs rounds of as many tasks as it has slots, sent by a client connected to that
agent (a free local slot always runs the call there), for >= 3 s (1 s with --quick) after one
warm-up round. An agent's capacity is slots / mean wall time of a task there (the task times
itself, so dispatch overhead is not counted as capacity), averaged over before and after:
`capacity_tasks_s`. Ideal makespan = tasks / sum of capacities (the fluid bound: perfect
balance, zero overhead). Also reported: `ideal_quota_s`, the same from the cgroup quotas and a
full core for `hub` (tasks x calibrated CPU time / 1.75 cores), and the in-run speed of each
agent (mean task wall time during the bag; an agent often idle waiting for work runs its tasks
faster than with all its slots busy, so this is not its capacity).

The machine is shared: `cpu_while_measuring_before/after` and `cpu_during_bag` give the cores
used by the whole machine, by this benchmark's processes and by everything else
(`others_cores`); workers run at nice 10, so other work at nice 0 takes their core first.
`noisy` is true when other work used more than 0.25 core in any window or the total capacity
before and after the bag differs by more than 15%: then the ratio says little.

The bag: N tasks (400; 100 with --quick) called with `@task` from a client connected to `hub`
(`mesh.connect`), then `wait_on` on all of them; makespan = first call to last value. Reported:
makespan, ideal, ratio = makespan / ideal (target <= 1.15), tasks run per agent against the
share its capacity would give it. Placement is the mesh's scheduler (mesh/sched/dispatch.py):
local first, then the peer where a call finishes earliest, with each slot's speed taken from
its cgroup quota (so `pi` gets work only while `hub`'s queue is long), load news carried by
every result, and at most one call per slot queued at a busy peer. `--profile fast` only
changes failure detection. `membership_changes` counts the suspicions and deaths each agent
logged: a capped agent's own loop waits for its quota too (up to 75 ms of every 100 ms for
`pi`), longer than the fast profile's 40 ms probe time-out.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    Agent,
    BenchError,
    CpuCap,
    MachineCpu,
    assert_loopback,
    calibrate_spin,
    cgroups_unusable,
    log,
    member_changes,
    ratio,
    spin,
    start_agent,
    start_capped_agent,
    stop_all,
    wait_members,
    workdir,
)

TASK_S = 0.05
RESULT_TIMEOUT_S = 120.0
TARGET_RATIO = 1.15
NOISY_OTHERS_CORES = 0.25  # other work on the machine beyond this: the figures are "noisy"
NOISY_DRIFT = 0.15  # total capacity before and after the bag differs more than this: "noisy"


def add_arguments(parser) -> None:
    parser.add_argument("--profile", choices=("default", "fast"), default="default",
                        help="the agents' timing profile (probe period 0.5 s / 0.1 s); "
                             "load news travels with the probes")
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks in the bag (default 400; 100 with --quick)")


def _layout(cg_reason: str | None) -> list[dict[str, Any]]:
    """name, slots, cap (% of a core, None = none), memory cap in MB."""
    if cg_reason is None:
        return [{"name": "hub", "cpus": 1, "cap_pct": None, "mem_mb": 0},
                {"name": "box", "cpus": 2, "cap_pct": 50, "mem_mb": 0},
                {"name": "pi", "cpus": 1, "cap_pct": 25, "mem_mb": 256}]
    return [{"name": "hub", "cpus": 1, "cap_pct": None, "mem_mb": 0},
            {"name": "box", "cpus": 1, "cap_pct": None, "mem_mb": 0}]


def _measure_alone(client, name: str, slots: int, n: int, min_s: float) -> dict[str, Any]:
    """Rounds of `slots` concurrent tasks sent to this agent, after one warm-up round, until
    at least `min_s` seconds and 3 rounds (at most 100 rounds)."""
    walls: list[float] = []
    cpus: list[float] = []
    elsewhere = 0
    t0, measured = 0.0, 0
    for r in range(101):
        if r == 1:
            t0 = time.perf_counter()
        elif r > 3 and time.perf_counter() - t0 >= min_s:
            break
        measured += r > 0
        futs = [client.submit(spin, n) for _ in range(slots)]
        done, not_done = wait_futures(futs, timeout=RESULT_TIMEOUT_S)
        if not_done:
            raise BenchError(f"{name}: {len(not_done)} calibration task(s) unfinished after "
                             f"{RESULT_TIMEOUT_S} s")
        for f in done:
            v = f.result()
            if v["agent"] != name:
                elsewhere += 1
            elif r > 0:
                walls.append(v["wall"])
                cpus.append(v["cpu"])
    if not walls:
        raise BenchError(f"{name}: no calibration task ran there (all delegated)")
    mean_wall = statistics.fmean(walls)
    return {"rounds": measured, "tasks": len(walls), "mean_task_wall_s": round(mean_wall, 4),
            "mean_task_cpu_s": round(statistics.fmean(cpus), 4),
            "capacity_tasks_s": slots / mean_wall, "delegated_elsewhere": elsewhere}


def _alone_all(clients, layout, n_iter: int, alone_s: float):
    window = MachineCpu()
    alone = {s["name"]: _measure_alone(clients[s["name"]], s["name"], s["cpus"], n_iter, alone_s)
             for s in layout}
    return alone, window.finish()


def run(quick: bool = False, profile: str = "default", tasks: int | None = None) -> dict[str, Any]:
    import mesh
    from mesh.client.client import Client
    from mesh.program.api import task, wait_on

    n_tasks = tasks or (100 if quick else 400)
    alone_s = 1.0 if quick else 3.0
    res: dict[str, Any] = {"scenario": "hetero", "profile": profile, "n_tasks": n_tasks,
                           "cpu_count": psutil.cpu_count(),
                           "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    log(f"calibrating the task to ~{TASK_S * 1e3:.0f} ms of CPU on one core")
    n_iter, t_cal = calibrate_spin(TASK_S)
    res["calib_iterations"] = n_iter
    res["calib_task_cpu_s"] = round(t_cal, 4)

    cg_reason = cgroups_unusable()
    layout = _layout(cg_reason)
    if cg_reason is not None:
        log(f"cgroups unusable ({cg_reason}): pi skipped, box uncapped with 1 slot")
        res["skipped"] = {"pi": cg_reason, "box_cap": cg_reason}
    agents: dict[str, Agent] = {}
    caps: dict[str, CpuCap] = {}
    clients: dict[str, Any] = {}
    extra_profile = ["--profile", profile]
    with workdir("mesh-bench-hetero-") as tmp:
        try:
            for spec in layout:
                name = spec["name"]
                extra = list(extra_profile)
                if agents:
                    extra += ["--peer", agents["hub"].comm]
                if spec["cap_pct"] is None:
                    log(f"starting {name}: {spec['cpus']} slot(s), no cap")
                    agents[name] = start_agent(tmp, name=name, cpus=spec["cpus"], extra=extra)
                else:
                    cap = CpuCap(f"hetero{os.getpid()}_{name}", spec["cap_pct"], spec["mem_mb"])
                    caps[name] = cap
                    log(f"starting {name}: {spec['cpus']} slot(s) in cgroup {cap.group} "
                        f"({cap.pct}% of a core, {cap.mem_mb or 'no'} MB cap)")
                    agents[name] = start_capped_agent(tmp, cap, name, spec["cpus"], extra)
                a = agents[name]
                clients[name] = (mesh.connect if name == "hub" else Client)(
                    a.comm, timeout=10.0, key=a.key)
            wait_members(list(clients.values()), len(agents), 30.0)
            res["agents"] = {s["name"]: {"cpus": s["cpus"], "cap_pct_of_core": s["cap_pct"],
                                         "mem_cap_mb": s["mem_mb"] or None,
                                         "pid": agents[s["name"]].pid,
                                         "ready_s": round(agents[s["name"]].ready_s, 3)}
                             for s in layout}

            log(f"measuring each agent alone: >= {alone_s} s of rounds of one task per slot")
            before, res["cpu_while_measuring_before"] = _alone_all(clients, layout, n_iter, alone_s)
            ideal_quota = n_tasks * t_cal / sum(1.0 if s["cap_pct"] is None else s["cap_pct"] / 100
                                                for s in layout)

            log(f"the bag: {n_tasks} tasks called from a client on hub")
            spin_t = task(spin)
            window = MachineCpu()
            t0 = time.perf_counter()
            futs = [spin_t(n_iter) for _ in range(n_tasks)]
            values = wait_on(futs)
            makespan = time.perf_counter() - t0
            res["cpu_during_bag"] = window.finish()
            log("measuring each agent alone again, after the bag")
            after, res["cpu_while_measuring_after"] = _alone_all(clients, layout, n_iter, alone_s)
            alone = {}
            for name in before:  # capacity: the mean of before and after the bag
                b, a = before[name], after[name]
                alone[name] = {"capacity_tasks_s": (b["capacity_tasks_s"] + a["capacity_tasks_s"]) / 2,
                               "before": b, "after": a}
            total_cap = sum(a["capacity_tasks_s"] for a in alone.values())
            for a in alone.values():
                a["cores_equiv"] = round(a["capacity_tasks_s"] * t_cal, 3)
                a["expected_share"] = round(a["capacity_tasks_s"] / total_cap, 3)
                a["capacity_tasks_s"] = round(a["capacity_tasks_s"], 3)
                for k in ("before", "after"):
                    a[k]["capacity_tasks_s"] = round(a[k]["capacity_tasks_s"], 3)
            res["alone"] = alone
            res["capacity_tasks_s"] = round(total_cap, 3)
            res["capacity_cores_equiv"] = round(total_cap * t_cal, 3)
            cap_b = sum(a["before"]["capacity_tasks_s"] for a in alone.values())
            cap_a = sum(a["after"]["capacity_tasks_s"] for a in alone.values())
            res["capacity_before_after_tasks_s"] = [round(cap_b, 3), round(cap_a, 3)]
            ideal = n_tasks / total_cap

            per_agent: dict[str, int] = {}
            walls: dict[str, list[float]] = {}
            for v in values:
                per_agent[v["agent"]] = per_agent.get(v["agent"], 0) + 1
                walls.setdefault(v["agent"], []).append(v["wall"])
            in_run = {}
            for name, w in walls.items():
                slots = next((s["cpus"] for s in layout if s["name"] == name), 1)
                in_run[name] = {"tasks": len(w), "mean_task_wall_s": round(statistics.fmean(w), 4),
                                "speed_tasks_s_if_all_slots_busy": round(slots / statistics.fmean(w), 3)}
            statuses = {name: c.query("status", timeout=5.0) for name, c in clients.items()}
            for name, a in agents.items():
                assert_loopback(a.pid, f"agent {name}")
            res.update({
                "makespan_s": round(makespan, 3),
                "ideal_s": round(ideal, 3),
                "ratio": ratio(makespan, ideal),
                "target_ratio": TARGET_RATIO,
                "met": makespan / ideal <= TARGET_RATIO,
                "ideal_quota_s": round(ideal_quota, 3),
                "ratio_to_quota_ideal": ratio(makespan, ideal_quota),
                "tasks_per_agent": {s["name"]: per_agent.get(s["name"], 0) for s in layout},
                "expected_tasks_per_agent": {name: round(a["expected_share"] * n_tasks)
                                             for name, a in alone.items()},
                "in_run": in_run,
                "forwarded_by": {name: st["forwarded"] for name, st in statuses.items()},
                "throttling": {name: cap.stat() for name, cap in caps.items()},
            })
            others = max(res[k]["others_cores"] for k in ("cpu_while_measuring_before",
                                                          "cpu_during_bag", "cpu_while_measuring_after"))
            drift = abs(cap_a - cap_b) / max(cap_a, cap_b)
            res["noisy"] = others > NOISY_OTHERS_CORES or drift > NOISY_DRIFT
            if res["noisy"]:
                res["noisy_why"] = (f"other work used up to {others:.2f} cores; capacity before/after "
                                    f"the bag differs by {100 * drift:.0f}%")
            res["membership_changes"] = {
                name: sum(1 for c in member_changes(a.child.log_path) if c.new in ("suspect", "dead"))
                for name, a in agents.items()}
            unknown = set(per_agent) - set(agents)
            if unknown:
                res["unknown_agents"] = sorted(unknown)
        finally:
            for c in clients.values():
                c.close()
            stop_all([a.child for a in agents.values()])
            res["stops"] = {name: a.child.stopped["how"] for name, a in agents.items()
                            if a.child.stopped}
            for cap in caps.values():
                cap.remove()
            left = [cap.group for cap in caps.values() if (Path("/sys/fs/cgroup/cpu") / cap.group).exists()]
            if left:
                res["cgroups_left"] = left
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["summary"] = _summary(res, quick)
    return res


def _summary(r: dict[str, Any], quick: bool) -> list[str]:
    alone = ", ".join(f"{n} {a['capacity_tasks_s']} tasks/s ({a['cores_equiv']} cores)"
                      for n, a in r["alone"].items())
    noisy = f"  NOISY: {r['noisy_why']}" if r.get("noisy") else "  (machine quiet enough)"
    got = ", ".join(f"{n} {c} (fair {r['expected_tasks_per_agent'][n]})"
                    for n, c in r["tasks_per_agent"].items())
    return [
        f"hetero ({'quick' if quick else 'full'}, profile {r['profile']}): {r['n_tasks']} tasks of "
        f"{r['calib_task_cpu_s'] * 1e3:.1f} ms CPU",
        f"  capacity measured alone (mean of before/after the bag): {alone}; total "
        f"{r['capacity_tasks_s']} tasks/s (before {r['capacity_before_after_tasks_s'][0]}, after "
        f"{r['capacity_before_after_tasks_s'][1]})",
        f"  makespan {r['makespan_s']} s, ideal {r['ideal_s']} s, ratio {r['ratio']} "
        f"(target <= {TARGET_RATIO}: {'met' if r['met'] else 'MISSED'}); from quotas: ideal "
        f"{r['ideal_quota_s']} s, ratio {r['ratio_to_quota_ideal']}",
        f"  tasks per agent: {got}; suspicions/deaths logged per agent "
        f"{r['membership_changes']}",
        noisy,
    ]
