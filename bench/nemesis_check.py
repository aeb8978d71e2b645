"""The nemesis' checker: a pure function from a run's history to its verdict (Jepsen's
total-queue, for calls instead of queue elements).

A history is a list of records (dicts with an "ev" key), in any order:
- `submit` {p, cid, t, op, args, via}: program p made call cid (`bench.nemesis_model` spec);
- `outcome` {p, cid, t, ok, value | kind, msg, after_hung?}: what the program got for it, a
  value digest or an error kind (`RemoteError:TYPE` for a `RemoteError`, else the exception's
  class name);
- `hung` {p, cid, t}: the program's bounded wait for cid ran out (it stops waiting); an
  outcome after it marked `self_inflicted` (the program closed that client) is no answer;
- `exec` {cid, agent, pid, t}: a task body started (the side channel, `bench.nemesis_tasks`);
- `fault` {kind, target, t0, t1}: the nemesis applied a fault from t0 to t1;
- `agent_exit` {agent, host, pid, rc, t, by_nemesis}: an agent process ended;
- `rss` {agent, host, mb}: one sample of an agent's resident memory;
- `liveness` {agent, responsive}: whether a live agent answered `status` at the end;
- `end` {p, late_results, ...} / `program_exit` {p, rc}: a program's last words and exit.

Each submitted call ends up in exactly one of:
- ok: its first outcome equals the model's (the value's digest, or the error the model
  expects: `boom` raises NemesisBoom, a `slow` well past its time_out raises TaskTimedOut,
  a task reading a failed input is TaskCancelled);
- failed, by kind: any other outcome. A documented kind (`DOCUMENTED`: errors that say why a
  call could not be done) is a failure the mesh owns up to; `wrong_value` (a value that is
  not the model's, or a value where the model expects an error) and `unexpected:KIND` (any
  error not documented) are the bugs among them;
- hung: no outcome before the program's bound (its first terminal record is `hung`);
- lost: no outcome and no `hung` either (the program died or never accounted for it).
So submitted == ok + failed + hung + lost. Besides: `duplicated` calls got more than one
outcome; `late_after_hung` came after their program gave up on them; executions beyond one
per call id (beyond zero for a task that must never run) are `extra_executions`, each
attributed to the latest fault that started before it and ended at most `ATTRIBUTION_S`
earlier ("none" if no fault was that near); `phantom_executions` ran a call id nobody
submitted; an agent that exited without the nemesis killing it is an `agent_crash`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from bench import nemesis_model as model

# Errors a call may end with when the mesh could not do it, and says why:
# mesh.errors / mesh.program.taskexec (what the program's API raises), and the agents' own
# failures, which reach a program as RemoteError(type_name) (mesh/sched/dispatch.py,
# placement.py, peer_failures.py, mesh/agent/pool.py), and ObjectLost (mesh/sched/objects.py)
DOCUMENTED = frozenset({
    "TaskFailed", "TaskCancelled", "TaskTimedOut", "AgentUnreachable", "ObjectLost",
    "RemoteError:NoSuitableAgent", "RemoteError:NoCapacity", "RemoteError:PeerLost",
    "RemoteError:WorkerDied", "RemoteError:Overloaded", "RemoteError:AgentLeaving",
    "RemoteError:ObjectLost",
})
ATTRIBUTION_S = 20.0  # an extra execution this long after a fault ended is still its doing
NEAR_S = 5.0  # faults this near a call's lifetime are listed as its evidence


def _same_error(expected: str, kind: str) -> bool:
    """The model's expected error `expected` and an observed kind: the task's own exception
    may come rebuilt (NemesisBoom) or as RemoteError:NemesisBoom."""
    return kind == expected or kind == f"RemoteError:{expected}"


def _fault_window(f: dict) -> tuple[float, float]:
    return f["t0"], f.get("t1") or f["t0"]


def attribute(t: float, faults: list[dict], after_s: float = ATTRIBUTION_S) -> dict | None:
    """The latest fault that started at or before `t` and ended at most `after_s` before it."""
    best = None
    for f in faults:
        t0, t1 = _fault_window(f)
        if t0 - 1.0 <= t <= t1 + after_s and (best is None or t0 > best["t0"]):
            best = f
    return best


def near(t_start: float, t_end: float, faults: list[dict]) -> list[str]:
    out = []
    for f in faults:
        t0, t1 = _fault_window(f)
        if t0 <= t_end + NEAR_S and t1 >= t_start - NEAR_S:
            out.append(f"{f['kind']}({f['target']}) {t0:.1f}-{t1:.1f}")
    return out


def check(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict over `history` (see the module docstring): counts, and one evidence
    entry per anomaly (lost, hung, duplicated, wrong, unexpected, crash, extra execution)."""
    by_ev: dict[str, list[dict]] = defaultdict(list)
    for r in history:
        by_ev[r["ev"]].append(r)
    faults = sorted(by_ev["fault"], key=lambda f: f["t0"])
    submits: dict[str, dict] = {}
    specs_by_prog: dict[str, dict[str, dict]] = defaultdict(dict)
    anomalies: list[dict] = []
    for s in by_ev["submit"]:
        if s["cid"] in submits:
            anomalies.append({"what": "resubmitted_cid", "cid": s["cid"]})
            continue
        submits[s["cid"]] = s
        specs_by_prog[s["p"]][s["cid"]] = s
    terminal: dict[str, list[dict]] = defaultdict(list)  # cid -> outcome/hung records, in time order
    for r in sorted(by_ev["outcome"] + by_ev["hung"], key=lambda r: r["t"]):
        if not r.get("self_inflicted"):  # (the program closed its client: no answer)
            terminal[r["cid"]].append(r)
    execs: dict[str, list[dict]] = defaultdict(list)
    for e in sorted(by_ev["exec"], key=lambda e: e["t"]):
        execs[e["cid"]].append(e)

    counts: dict[str, Any] = {"submitted": len(submits), "ok": 0, "failed_total": 0, "lost": 0,
                              "hung": 0, "duplicated": 0, "wrong_values": 0, "unexpected": 0,
                              "late_after_hung": 0}
    failed: Counter = Counter()
    memo: dict[str, dict] = defaultdict(dict)
    for cid, s in submits.items():
        recs = terminal.get(cid, [])
        outcomes = [r for r in recs if r["ev"] == "outcome"]
        evidence = {"cid": cid, "p": s["p"], "op": s["op"], "via": s.get("via"), "t_submit": s["t"],
                    "execs": [f"{e['agent']}@{e['t']:.1f}" for e in execs.get(cid, [])]}
        if len(outcomes) > 1:
            counts["duplicated"] += 1
            anomalies.append({"what": "duplicated", **evidence,
                              "outcomes": [_show(o) for o in outcomes],
                              "faults": near(s["t"], outcomes[-1]["t"], faults)})
        if not recs:
            counts["lost"] += 1
            anomalies.append({"what": "lost", **evidence, "faults": near(s["t"], s["t"] + 60, faults)})
            continue
        first = recs[0]
        if first["ev"] == "hung":
            counts["hung"] += 1
            late = [o for o in outcomes if o["t"] >= first["t"]]
            counts["late_after_hung"] += bool(late)
            anomalies.append({"what": "hung", **evidence, "gave_up_at": first["t"],
                              "answered_later": [_show(o) for o in late],
                              "faults": near(s["t"], first["t"], faults)})
            continue
        try:
            want = model.expect(cid, specs_by_prog[s["p"]], memo[s["p"]])
        except (KeyError, ValueError) as exc:
            want = ("model_error", str(exc))
        kind = _kind_of(first, want)
        if kind == "ok":
            counts["ok"] += 1
            continue
        failed[kind] += 1
        counts["failed_total"] += 1
        if kind == "wrong_value" or kind.startswith("unexpected:"):
            counts["wrong_values" if kind == "wrong_value" else "unexpected"] += 1
            anomalies.append({"what": kind, **evidence, "expected": list(want), "got": _show(first),
                              "faults": near(s["t"], first["t"], faults)})

    # executions: beyond one per submitted call id (or per nested subtask), or any at all
    # for a task whose input must have failed
    extra: Counter = Counter()
    phantom = 0
    ok_without_exec = 0
    for cid, es in execs.items():
        parent = cid.rsplit(".", 1)[0] if cid not in submits else cid
        if parent not in submits:
            phantom += len(es)
            anomalies.append({"what": "phantom_execution", "cid": cid,
                              "execs": [f"{e['agent']}@{e['t']:.1f}" for e in es]})
            continue
        allowed = 0 if submits[parent]["op"] == "after" and parent == cid else 1
        causes = [attribute(e["t"], faults) for e in es[allowed:]]
        for f in causes:
            extra[f["kind"] if f else "none"] += 1
        if any(f is None for f in causes):
            anomalies.append({"what": "extra_execution_without_fault", "cid": cid,
                              "execs": [f"{e['agent']}@{e['t']:.1f}" for e in es]})
    for cid in submits:
        recs = terminal.get(cid, [])
        if recs and recs[0]["ev"] == "outcome" and recs[0].get("ok") and not execs.get(cid):
            ok_without_exec += 1

    crashes = [a for a in by_ev["agent_exit"] if not a.get("by_nemesis")]
    for a in crashes:
        anomalies.append({"what": "agent_crash", "agent": a["agent"], "rc": a.get("rc"), "t": a["t"],
                          "faults": near(a["t"] - 30, a["t"], faults)})
    unresponsive = [x["agent"] for x in by_ev["liveness"] if not x.get("responsive")]
    for name in unresponsive:
        anomalies.append({"what": "agent_unresponsive_at_end", "agent": name})
    rss: dict[str, float] = {}
    for r in by_ev["rss"]:
        rss[r["agent"]] = max(rss.get(r["agent"], 0.0), r["mb"])
    program_crashes = [x for x in by_ev["program_exit"] if x.get("rc") not in (0, None)]
    for x in program_crashes:
        anomalies.append({"what": "program_crash", "p": x["p"], "rc": x.get("rc")})

    counts.update({
        "failed": dict(sorted(failed.items())),
        "agent_crashes": len(crashes),
        "agents_unresponsive": len(unresponsive),
        "program_crashes": len(program_crashes),
        "extra_executions": dict(sorted(extra.items())),
        "phantom_executions": phantom,
        "ok_without_execution": ok_without_exec,
        "late_results": sum(e.get("late_results", 0) for e in by_ev["end"]),
        "faults": dict(sorted(Counter(f["kind"] for f in faults).items())),
        "max_rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
    })
    return {"counts": counts, "anomalies": anomalies}


def _kind_of(outcome: dict, want: tuple[str, str]) -> str:
    """"ok", or the failure kind of a first outcome against the model's `want`."""
    if want[0] == "model_error":
        return "unexpected:model_error"
    if outcome.get("ok"):
        if want[0] == "value" and outcome.get("value") == want[1]:
            return "ok"
        return "wrong_value"
    kind = outcome.get("kind", "?")
    if want[0] == "raise" and _same_error(want[1], kind):
        return "ok"
    if kind in DOCUMENTED:
        return kind
    return f"unexpected:{kind}"


def _show(o: dict) -> str:
    if o["ev"] == "hung":
        return f"hung@{o['t']:.1f}"
    if o.get("ok"):
        return f"value {o.get('value')}@{o['t']:.1f}"
    return f"{o.get('kind')}: {str(o.get('msg', ''))[:200]}@{o['t']:.1f}"
