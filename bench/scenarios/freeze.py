"""Frozen agent: 4 agents, SIGSTOP one for 10 s (4 s with --quick), then SIGCONT: time to dead everywhere, time back to alive everywhere, incarnation before/after (must rise).

4 agents on 127.0.0.1 (secure, 1 slot, mDNS and REST off, `--profile default` unless
`--profile fast`). Each round (3; 1 with --quick; `--rounds N`) freezes a different agent: its
connections stay open but nothing answers. Figures per round, from the survivors' logs
(wall-clock, 1 ms): `dead_s`, SIGSTOP to the last survivor's `-> dead` line; `alive_s`,
SIGCONT to the last survivor's `-> alive` line about it; the victim's own incarnation (its
`status`) and the incarnation the survivors hold for it (`peers`) before and after, which must
be higher after: it refuted its death. Also: suspicions of members that were never frozen
(e.g. the thawed agent failing a probe that was in flight when it stopped), refutations seen,
and the live agents' summed membership counters.
"""

from __future__ import annotations

import os
import random
import signal
import time
from contextlib import ExitStack
from typing import Any

from bench.common import BenchError, log, signal_abruptly, spread, workdir
from bench.fleet import Fleet, sum_counters, tally, victim_order

AGENTS = 4
CONVERGE_TIMEOUT_S = 30.0
BACK_TIMEOUT_S = 30.0


def add_arguments(parser) -> None:
    parser.add_argument("--profile", choices=("default", "fast"), default="default",
                        help="failure-detection timings of the agents (default: default)")
    parser.add_argument("--seconds", type=float, help="how long the victim stays frozen (default 10; 4 with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds, each freezing another agent (default 3; 1 with --quick)")


def _held_incarnations(fleet: Fleet, survivors: list, vid: str) -> list[int | None]:
    out = []
    for a in survivors:
        peers = fleet.peers(a) or []
        out.append(next((p.get("incarnation") for p in peers if str(p.get("id", "")).startswith(vid)), None))
    return out


def _incarnation(fleet: Fleet, agent) -> int | None:
    st = fleet.status(agent)
    return None if st is None else (st.get("membership") or {}).get("incarnation")


def run(quick: bool = False, profile: str = "default", seconds: float | None = None,
        rounds: int | None = None) -> dict[str, Any]:
    freeze_s = seconds or (4.0 if quick else 10.0)
    rounds = rounds or (1 if quick else 3)
    res: dict[str, Any] = {"scenario": "freeze", "agents": AGENTS, "profile": profile,
                           "freeze_s": freeze_s, "rounds": rounds}
    per_round: list[dict[str, Any]] = []
    with workdir("mesh-bench-freeze-") as tmp, ExitStack() as stack:
        fleet = Fleet(tmp, profile=profile, cpus=1)
        stack.callback(fleet.close)
        fleet.start_all(AGENTS)
        fleet.wait_converged(CONVERGE_TIMEOUT_S)
        victims = set()
        for r, slot in enumerate(victim_order(random.Random(), AGENTS, rounds), 1):
            victim = fleet.live[slot]
            vid = fleet.id8(victim)
            victims.add(vid)
            survivors = [a for a in fleet.agents() if a is not victim]
            inc_before = _incarnation(fleet, victim)
            held_before = _held_incarnations(fleet, survivors, vid)
            t_stop = signal_abruptly(victim.child, signal.SIGSTOP)
            try:
                dead = fleet.wait_everywhere(vid, "dead", t_stop, freeze_s, among=survivors)
                time.sleep(max(0.0, t_stop + freeze_s - time.time()))
            finally:
                t_cont = time.time()
                os.kill(victim.pid, signal.SIGCONT)
            back = fleet.wait_everywhere(vid, "alive", t_cont, BACK_TIMEOUT_S, among=survivors)
            fleet.wait_converged(CONVERGE_TIMEOUT_S)
            inc_after = _incarnation(fleet, victim)
            held_after = _held_incarnations(fleet, survivors, vid)
            dead_t = [c.t - t_stop for c in dead.values() if c is not None]
            back_t = [c.t - t_cont for c in back.values() if c is not None]
            row = {
                "victim": victim.state["name"],
                "dead_everywhere_s": round(max(dead_t), 3) if len(dead_t) == len(survivors) else None,
                "dead_first_s": round(min(dead_t), 3) if dead_t else None,
                "not_dead_when_thawed": sum(1 for c in dead.values() if c is None),
                "alive_everywhere_s": round(max(back_t), 3) if len(back_t) == len(survivors) else None,
                "back_from": sorted({c.old for c in back.values() if c is not None}),
                "incarnation_before": inc_before, "incarnation_after": inc_after,
                "held_before": held_before, "held_after": held_after,
                "logged_incarnation_after": sorted({c.incarnation for c in back.values() if c is not None}),
            }
            row["incarnation_rose"] = (inc_before is not None and inc_after is not None
                                       and inc_after > inc_before
                                       and all(h is not None and h > inc_before for h in held_after))
            per_round.append(row)
            log(f"round {r}/{rounds}: {row['victim']} frozen: dead everywhere after "
                f"{row['dead_everywhere_s']} s; thawed: alive everywhere after {row['alive_everywhere_s']} s; "
                f"incarnation {inc_before} -> {inc_after} (survivors hold {held_after})")
            time.sleep(1.0)  # let the refutation's gossip settle before the next freeze
        statuses = [fleet.status(a) for a in fleet.agents()]
        logs = {a.state["name"]: fleet.changes(a) for a in fleet.agents()}
    if not per_round:
        raise BenchError("no round ran")
    counts = tally(logs, victims)
    dead_all = [r["dead_everywhere_s"] for r in per_round]
    alive_all = [r["alive_everywhere_s"] for r in per_round]
    ok = (all(x is not None for x in dead_all + alive_all)
          and all(r["incarnation_rose"] for r in per_round))
    res.update({
        "dead_everywhere_s": spread([x for x in dead_all if x is not None]),
        "alive_everywhere_s": spread([x for x in alive_all if x is not None]),
        "per_round": per_round,
        "false_suspicions": counts["false_suspicions"],
        "refutations_seen": counts["refutations_seen"],
        "false_deaths": counts["false_deaths"],
        "counters": sum_counters(statuses),
        "ok": ok,
    })
    res["summary"] = [
        f"freeze {freeze_s:.0f} s x {rounds}: dead everywhere after {dead_all} s, alive everywhere "
        f"{alive_all} s after SIGCONT, incarnation "
        + ", ".join(f"{r['incarnation_before']}->{r['incarnation_after']}" for r in per_round)
        + f" ({'ok' if ok else 'FAILED'}); false suspicions {counts['false_suspicions']}, "
        f"false deaths {counts['false_deaths']}"]
    return res
