"""Where a call's time goes: CPU per call by process and thread, the mesh alone (round trips, @task no-ops).

The profiling harness behind the `tasks` scenario's figures, kept so that a change to the
hot path can be measured the same way before and after (run it on the old commit in a
`git worktree` and on the new one, alternating: on a small shared machine the absolute
figures move by a quarter from run to run, pairs taken close together do not).

One agent with a mesh key and 2 slots on 127.0.0.1 (mDNS and REST off); this process is
the program (`mesh.connect`). Two workloads, each in rounds (3 rounds of 3,000 round trips
and 3 of 5,000 no-ops; 1 round of 500 and 1,000 with --quick):
- `rtt`: sequential `Client.submit(noop).result()`;
- `task`: `@task` no-op calls, then `barrier()`.
Per round: wall time per call, and the CPU time per call (user + system, microseconds) of
every process (program, agent, each worker) and of every thread of the program and of the
agent (by name where Python named it, else `other-N`: ZeroMQ's I/O threads among them),
plus the program's voluntary context switches per call. The median round of each workload
is in the summary; every round is in the JSON. For where the time goes inside a process,
run py-spy on it meanwhile (`py-spy record --gil -p PID`; the JSON names the PIDs).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench import taskfns
from bench.common import log, start_agent, stop, workdir


def _threads(proc: psutil.Process, names: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    others = 0
    for t in proc.threads():
        name = names.get(t.id)
        if name is None:
            others += 1
            name = f"other-{others}"
        out[name] = t.user_time + t.system_time
    return out


def _cpu(procs: dict[str, psutil.Process], names: dict[int, str]) -> dict[str, float]:
    out = {}
    for label, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[label] = times.user + times.system
            for tname, secs in _threads(proc, names if label == "program" else {proc.pid: "main"}).items():
                out[f"{label}/{tname}"] = secs
        except psutil.NoSuchProcess:
            pass
    return out


def _round(kind: str, n: int, client, noop_task, api, procs, names) -> dict[str, Any]:
    me = procs["program"]
    c0, x0 = _cpu(procs, names), me.num_ctx_switches().voluntary
    t0 = time.perf_counter()
    if kind == "rtt":
        for _ in range(n):
            client.submit(taskfns.noop).result(60)
    else:
        for i in range(n):
            noop_task(i)
        api.barrier()
    wall = time.perf_counter() - t0
    c1, x1 = _cpu(procs, names), me.num_ctx_switches().voluntary
    per = {k: round((c1[k] - c0.get(k, 0.0)) * 1e6 / n, 1) for k in c1}
    return {"per_call_us": round(wall * 1e6 / n, 1), "calls_per_s": round(n / wall),
            "cpu_us": {k: v for k, v in per.items() if "/" not in k},
            "thread_cpu_us": {k: v for k, v in per.items() if "/" in k and v > 0},
            "cpu_total_us": round(sum(v for k, v in per.items() if "/" not in k), 1),
            "program_voluntary_switches": round((x1 - x0) / n, 3)}


def run(quick: bool = False) -> dict[str, Any]:
    from mesh.client.client import connect
    from mesh.program import api

    rounds = 1 if quick else 3
    sizes = {"rtt": 500 if quick else 3000, "task": 1000 if quick else 5000}
    res: dict[str, Any] = {"scenario": "hotpath", "rounds": rounds, "calls": sizes}
    with workdir("hotpath") as wd:
        agent = start_agent(Path(wd), name="hot", cpus=2, secure=True)
        try:
            client = connect(agent.comm, timeout=10.0, key=agent.key)
            try:
                noop_task = api.task(taskfns.noop)
                for _ in range(100):  # warm: workers started, functions resolved, depth learnt
                    client.submit(taskfns.noop).result(60)
                for i in range(300):
                    noop_task(i)
                api.barrier()
                agent_proc = psutil.Process(agent.pid)
                procs = {"program": psutil.Process(), "agent": agent_proc}
                for i, w in enumerate(agent_proc.children()):
                    procs[f"worker{i}"] = w
                names = {t.native_id: t.name for t in threading.enumerate()
                         if t.native_id is not None}
                res["pids"] = {k: p.pid for k, p in procs.items()}
                for kind, n in sizes.items():
                    log(f"{kind}: {rounds} round(s) of {n} calls")
                    runs = [_round(kind, n, client, noop_task, api, procs, names)
                            for _ in range(rounds)]
                    med = sorted(runs, key=lambda r: r["per_call_us"])[len(runs) // 2]
                    res[kind] = {"median_round": med, "rounds": runs,
                                 "per_call_us_runs": [r["per_call_us"] for r in runs],
                                 "per_call_us_median": statistics.median(
                                     r["per_call_us"] for r in runs)}
            finally:
                client.close()
        finally:
            res["agent_stop"] = stop(agent.child)["how"]
    res["summary"] = _summary(res)
    return res


def _summary(res: dict[str, Any]) -> list[str]:
    lines = ["hotpath: CPU per call (us, user+system) by process, median round"]
    for kind in ("rtt", "task"):
        r = res[kind]["median_round"]
        cpu = ", ".join(f"{k} {v:g}" for k, v in r["cpu_us"].items())
        lines.append(f"  {kind}: {r['per_call_us']:g} us per call ({r['calls_per_s']}/s); "
                     f"CPU {cpu}; total {r['cpu_total_us']:g}; program switches per call "
                     f"{r['program_voluntary_switches']:g}")
    return lines
