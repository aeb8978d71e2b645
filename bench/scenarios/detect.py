"""Failure detection: time from a fault (SIGKILL on loopback, or silent loss in namespaces) to every survivor marking the victim dead, per timing profile.

Options: `--mode kill|silent` and `--profile default|fast` pick one series; with neither, all
four (mode, profile) series run and are reported side by side. `--rounds N` (default 20, 4 with
--quick), `--seed S` (victim choice; random by default and reported).

A series: 6 agents (1 slot each, secure, mDNS and REST off, `--profile P`) form a mesh through
seeds. Each round picks a victim (shuffled cycles over the 6 slots, so the first seed is a
victim as often as any other, and never the same slot twice in a row), injects the fault at
wall time t0 and waits until every survivor's log has the victim's `-> dead` line; the round's
figure is the latest of those timestamps minus t0 (`detect_s`). A replacement agent then joins
the same slot through a randomly chosen live member, and the next round starts only when all
6 agents see each other alive (again from their logs), after a random pause of 0.5-2.5 s: the
fault hits a random phase of the agents' probe cycles, not always the moment a join settled.
- kill: agents on 127.0.0.1, the victim gets SIGKILL (the kernel closes its TCP connections,
  so survivors get a reset they may use as a hint).
- silent: `netns_up.sh 6`, agent I in namespace mt_hI at 10.213.0.(10+I); t0 is just before
  `chaos.sh isolate I` (its bridge port drops every frame: no FIN/RST ever arrives; how long
  that command took, within which the fault took effect, is `isolate_cmd_s`), then the
  victim is SIGKILLed, and after the round `chaos.sh unisolate I`. Skipped, with the reason in
  the JSON, where the harness cannot run (not root, no `ip netns`).
Log timestamps have 1 ms resolution (truncated); agents and bench read the same wall clock.
Also reported per series: when the first survivor suspected / declared the victim
(`first_suspect_s`, `first_dead_s`), suspicions of members that were never harmed
(`false_suspicions`), refutations seen (`suspect -> alive` lines), false deaths, and the live
agents' summed `status` membership counters at the end (agents killed earlier took theirs).
"""

from __future__ import annotations

import random
import time
from contextlib import ExitStack
from typing import Any

from bench.common import BenchError, Netns, log, netns_unusable, spread, workdir
from bench.fleet import Fleet, sum_counters, tally, victim_order

MODES = ("kill", "silent")
PROFILES = ("default", "fast")
AGENTS = 6
TARGET_P95_S = {("kill", "default"): 2.0, ("kill", "fast"): 0.5,
                ("silent", "default"): 2.5, ("silent", "fast"): 1.0}
DETECT_TIMEOUT_S = {"default": 20.0, "fast": 10.0}  # a survivor silent for longer: "missed"
CONVERGE_TIMEOUT_S = 30.0
SETTLE_S = (0.5, 2.5)  # random pause between convergence and the next fault


def add_arguments(parser) -> None:
    parser.add_argument("--mode", choices=MODES, help="only this fault (default: both)")
    parser.add_argument("--profile", choices=PROFILES, help="only this profile (default: both)")
    parser.add_argument("--rounds", type=int, help="rounds per series (default 20; 4 with --quick)")
    parser.add_argument("--seed", type=int, help="seed of the victim choice (default: random)")


def run(quick: bool = False, mode: str | None = None, profile: str | None = None,
        rounds: int | None = None, seed: int | None = None) -> dict[str, Any]:
    modes = [mode] if mode else list(MODES)
    profiles = [profile] if profile else list(PROFILES)
    rounds = rounds or (4 if quick else 20)
    if rounds < 1:
        raise BenchError("--rounds must be at least 1")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    res: dict[str, Any] = {"scenario": "detect", "agents": AGENTS, "rounds": rounds, "seed": seed,
                           "targets_p95_s": {f"{m}/{p}": TARGET_P95_S[m, p]
                                             for m in modes for p in profiles},
                           "series": {}}
    summary, errors = [], []
    for m in modes:
        for p in profiles:
            key = f"{m}/{p}"
            why = netns_unusable() if m == "silent" else None
            if why:
                log(f"{key}: skipped: {why}")
                res["series"][key] = {"skipped": why}
                summary.append(f"{key:<15} skipped: {why}")
                continue
            log(f"=== {key}: {rounds} rounds ===")
            try:
                out = _series(m, p, rounds, random.Random(f"{seed}/{key}"))
            except BenchError as exc:
                log(f"{key}: FAILED: {exc}")
                errors.append(f"{key}: {exc}")
                res["series"][key] = {"error": str(exc)}
                summary.append(f"{key:<15} FAILED: {str(exc).splitlines()[0]}")
                continue
            res["series"][key] = out
            d, target = out["detect_s"], TARGET_P95_S[m, p]
            summary.append(
                f"{key:<15} detect p50 {d['p50']} s  p95 {d['p95']} s  max {d['max']} s  "
                f"(target p95 <= {target} s: {'met' if out['target_met'] else 'MISSED'})  "
                f"missed {out['missed']}, false suspicions {out['log']['false_suspicions']}, "
                f"refutations {out['log']['refutations_seen']}, false deaths {out['log']['false_deaths']}")
    ran = [s for s in res["series"].values() if "target_met" in s]
    res["all_targets_met"] = bool(ran) and all(s["target_met"] for s in ran) and not errors
    res["summary"] = summary
    if errors:
        res["error"] = "; ".join(errors)
    return res


def _series(mode: str, profile: str, rounds: int, rng: random.Random) -> dict[str, Any]:
    netns = Netns(AGENTS) if mode == "silent" else None
    with workdir(f"mesh-bench-detect-{mode}-{profile}-") as tmp, \
            ExitStack() as stack:
        if netns is not None:
            stack.enter_context(netns)  # netns_down.sh before and (on exit) after
        fleet = Fleet(tmp, profile=profile, cpus=1, netns=netns)
        stack.callback(fleet.close)  # runs before netns_down.sh
        t_start = time.monotonic()
        fleet.start_all(AGENTS)
        first_converge = fleet.wait_converged(CONVERGE_TIMEOUT_S)
        log(f"{AGENTS} agents up and converged ({time.monotonic() - t_start:.1f} s)")
        detect, first_suspect, first_dead, converge = [], [], [], []
        per_round: list[float | None] = []
        round_suspect: list[float | None] = []
        round_first_dead: list[float | None] = []
        victims, seeds, missed, victim_ids = [], [], 0, set()
        isolate_cmd: list[float] = []
        for r, slot in enumerate(victim_order(rng, AGENTS, rounds), 1):
            time.sleep(rng.uniform(*SETTLE_S))  # the fault comes at a random phase of the probe cycles
            victim = fleet.live[slot]
            vid = fleet.id8(victim)
            victim_ids.add(vid)
            survivors = [a for a in fleet.agents() if a is not victim]
            if netns is None:
                t0 = fleet.kill(slot)
            else:
                t0 = time.time()
                netns.chaos("isolate", slot)
                isolate_cmd.append(time.time() - t0)  # the fault took effect within this
                fleet.kill(slot)
            try:
                seen = fleet.wait_everywhere(vid, "dead", t0, DETECT_TIMEOUT_S[profile], among=survivors)
            finally:
                if netns is not None:
                    netns.chaos("unisolate", slot)
            fleet.retire(victim)
            times = [c.t - t0 for c in seen.values() if c is not None]
            n_missed = sum(1 for c in seen.values() if c is None)
            missed += n_missed
            suspected = []
            for a in survivors:
                for c in fleet.changes(a):
                    if c.id8 == vid and c.new == "suspect" and c.t >= t0 - 0.001:
                        suspected.append(c.t - t0)
                        break
            per_round.append(round(max(times), 3) if n_missed == 0 else None)
            round_suspect.append(round(min(suspected), 3) if suspected else None)
            round_first_dead.append(round(min(times), 3) if times else None)
            if n_missed == 0:
                detect.append(max(times))
            if times:
                first_dead.append(min(times))
            if suspected:
                first_suspect.append(min(suspected))
            victims.append(victim.state["name"])
            seed_agent = rng.choice(survivors)
            seeds.append(seed_agent.state["name"])
            fleet.start(slot, seed_agent.comm)
            converge.append(fleet.wait_converged(CONVERGE_TIMEOUT_S))
            log(f"round {r}/{rounds}: victim {victim.state['name']} dead everywhere after "
                + (f"{max(times):.3f} s" if n_missed == 0 else f"- ({n_missed} survivors never saw it)")
                + f" (first suspicion {min(suspected) if suspected else float('nan'):.3f} s); "
                f"replacement joined via {seed_agent.state['name']}, converged in {converge[-1]:.2f} s")
        statuses = [fleet.status(a) for a in fleet.agents()]
        logs = {a.state["name"]: fleet.changes(a) for a in [*fleet.gone, *fleet.agents()]}
    target = TARGET_P95_S[mode, profile]
    d = spread(detect)
    return {
        "mode": mode, "profile": profile, "rounds": rounds,
        "detect_s": d, "target_p95_s": target,
        "target_met": missed == 0 and d["p95"] is not None and d["p95"] <= target,
        "missed": missed,
        "first_suspect_s": spread(first_suspect), "first_dead_s": spread(first_dead),
        "per_round": {"victim": victims, "detect_s": per_round,
                      "first_suspect_s": round_suspect, "first_dead_s": round_first_dead,
                      "replacement_seed": seeds},
        "converge_s": spread([first_converge, *converge], 2),
        **({"isolate_cmd_s": spread(isolate_cmd)} if isolate_cmd else {}),
        "log": tally(logs, victim_ids),
        "counters_live_agents": sum_counters(statuses),
    }
