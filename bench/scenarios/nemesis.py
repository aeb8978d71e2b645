"""Nemesis: 6 namespace hosts, programs submitting mixed task graphs while a seeded schedule kills, freezes, isolates, drops frames, stalls a program and caps processes; a checker counts lost, duplicated, hung and wrong calls.

Theory of operation
-------------------
World. `netns_up.sh 6` (`--hosts N`); host I runs one agent (`mesh join --interface
10.213.0.(10+I) --comm-port 46102`, mDNS on, pinned to that address, every other host as a
seed, 1 slot, the run's mesh key), named hIgG (generation G: a killed agent is replaced by a
new one on the same host and address, so the mesh keeps its members over time). The
harness's lock (`/tmp/mesh-netns.lock`, `bench.netns.netns_lock`) is held throughout.
Three programs (`bench.nemesis_prog`) run inside hosts: P1 on host 1 uses its agent's local
socket, P2 on the middle host uses TCP to its own agent, P3 on the last host uses TCP to the
agent of the host before it (a program on another device). Until the run's end each submits,
about once per `--pace` seconds while fewer than 40 of its calls are in flight, a graph of
mixed calls through the public API (`@task` with dependencies, multi-MB outputs kept at
agents and read by other tasks, nested tasks, a `time_out`, a task that raises and one that
reads its output; `client.submit` and `client.call`), writing every call and its outcome to
its history; each wait is bounded (`--hang-s`), so a hang is recorded, not waited for.
Every task body appends its call id to a per-agent file (`exec-AGENT.log`): executions are
counted by a side channel independent of the mesh.

Schedule. `bench.nemesis_faults.schedule(seed, ...)`: faults 3-9 s apart, at most two at once,
never two on one target, all ended 5 s before the end: kill -9 of an agent (a new one
2-10 s later), SIGSTOP for 1-8 s, isolation of a host's link for 2-10 s (silent loss, `chaos.sh
isolate`), 5-30 % frame loss between a host and all others for 5-15 s (`chaos.sh loss`), an
agent's process tree capped at what it runs now (+0-2) for 5-15 s (a cgroup v1 `pids.max`:
RLIMIT_NPROC is not applied to root, the agents' user here) with one of its workers killed at
once (the agent must start another at its limit), and a program stopped (SIGSTOP)
for 2-10 s, so that it does not read its socket. `Nemesis` applies them at their times and
records when each really began and ended. A monitor samples each agent's RSS every second and
notes every agent exit the nemesis did not cause (that agent is replaced too).

End. At the end time the programs stop submitting and drain (each call keeps its own deadline),
the nemesis undoes what is active, a program still running 30 s after that bound is asked for
its threads' stacks (SIGUSR1: faulthandler, into its log) and killed (what it had not
accounted for is lost), each
live agent is asked `status` from inside its namespace (unresponsive: counted), agents leave
(SIGTERM), the namespaces go down, the lock is released: also on error or Ctrl+C. Everything
is bounded: `--duration` (600 s; 60 with --quick), the drain (`--hang-s`), every start and stop.

Checker. `bench.nemesis_check.check(history)`, a pure function over the merged records
(programs' histories, executions, faults, agent exits, RSS, liveness): every submitted call is
exactly one of ok (the outcome the sequential model `bench.nemesis_model` gives), failed (by
kind: documented errors, `wrong_value`, `unexpected:KIND`), hung or lost; duplicated outcomes,
extra executions (attributed to the fault nearest before them), agent crashes and RSS maxima
are reported besides. The run directory (`--run-dir`, default /tmp/nemesis-SEED) keeps the
agents' logs (agent-hIgG.log), the programs' histories (hist-P*.jsonl) and stderr
(prog-P*.log), the executions, events.jsonl, schedule.json and verdict.json (every anomaly
with its evidence: the call, its executions, the faults near it).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.cgroups import PidsCap
from bench.common import (
    BenchError,
    Netns,
    bench_key,
    log,
    member_changes,
    member_view,
    netns_unusable,
)
from bench.nemesis_check import check
from bench.nemesis_faults import KINDS, schedule
from bench.nemesis_hosts import Hosts, Nemesis, Recorder

MARKER = ".nemesis-run"
CONVERGE_S = 60.0
PROGRAM_GRACE_S = 30.0  # beyond the drain bound, before a program is killed
MAX_INFLIGHT = 40


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, help="seed of the fault schedule and the workload (default: random)")
    parser.add_argument("--duration", type=float, help="seconds of load and faults (default 600; 60 with --quick)")
    parser.add_argument("--faults", type=int, help="at most this many faults (default: as the schedule gives)")
    parser.add_argument("--hosts", type=int, default=6, choices=range(3, 7), metavar="{3..6}",
                        help="namespace hosts, one agent each (default 6)")
    parser.add_argument("--hang-s", type=float, default=40.0,
                        help="a call with no outcome this long after it was made is hung (default 40)")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="seconds between two graphs of one program (default 1.0)")
    parser.add_argument("--run-dir", help="where logs and histories are kept (default /tmp/nemesis-SEED)")
    parser.add_argument("--lock-wait", type=float, default=900.0,
                        help="seconds to wait for the namespace harness's lock (default 900)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"),
                        help="the agents' log level (default INFO)")


def _prepare(run_dir: Path) -> None:
    if run_dir.exists():
        if any(run_dir.iterdir()) and not (run_dir / MARKER).exists():
            raise BenchError(f"{run_dir} exists and is not a nemesis run directory: not wiping it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / MARKER).touch()
    (run_dir / "run").mkdir(mode=0o700)


def _programs(n: int) -> list[tuple[str, int, int, bool]]:
    """(name, host it runs on, host of its agent, local socket)."""
    mid = (n + 1) // 2
    return [("P1", 1, 1, True), ("P2", mid, mid, False), ("P3", n, n - 1, False)]


def _wait_converged(hosts: Hosts, timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        agents = [hosts.agent(i) for i in range(1, hosts.n + 1)]
        missing = []
        for a in agents:
            view = member_view(member_changes(a.child.log_path))
            for b in agents:
                if b is not a and view.get(b.state["id"][:8]) != "alive":
                    missing.append(f"{a.state['name']}: {b.state['name']} is {view.get(b.state['id'][:8], 'unknown')}")
        if not missing:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"the mesh did not converge within {timeout:.0f} s: {'; '.join(missing[:6])}")
        time.sleep(0.1)


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # (a line cut by a kill)
    except OSError:
        pass
    return out


def _read_execs(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted(run_dir.glob("exec-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4:
                try:
                    out.append({"ev": "exec", "cid": parts[0], "agent": parts[1], "pid": int(parts[2]),
                                "t": float(parts[3])})
                except ValueError:
                    pass
    return out


def run(quick: bool = False, seed: int | None = None, duration: float | None = None,
        faults: int | None = None, hosts: int = 6, hang_s: float = 40.0, pace: float = 1.0,
        run_dir: str | None = None, lock_wait: float = 900.0,
        log_level: str = "INFO") -> dict[str, Any]:
    why = netns_unusable()
    if why:
        raise BenchError(f"the namespace harness cannot run here: {why}")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    duration = duration or (60.0 if quick else 600.0)
    rdir = Path(run_dir or f"/tmp/nemesis-{seed}").resolve()
    _prepare(rdir)
    programs = _programs(hosts)
    kinds, skipped = dict(KINDS), {}
    if shutil.which("nft") is None:
        skipped["loss"] = "no `nft` command (nftables), which chaos.sh loss needs"
    why_not = PidsCap.usable()
    if why_not:
        skipped["nproc"] = why_not
    for kind in skipped:
        kinds.pop(kind)
        log(f"nemesis: no {kind} faults here: {skipped[kind]}")
    plan = schedule(seed, duration, hosts, [p[0] for p in programs], faults, kinds)
    (rdir / "schedule.json").write_text(json.dumps([f.to_json() for f in plan], indent=1))
    log(f"nemesis: seed {seed}, {hosts} hosts, {duration:.0f} s, {len(plan)} faults planned; "
        f"run directory {rdir}")
    rec = Recorder(rdir / "events.jsonl")
    env = {"MESH_RUNTIME_DIR": str(rdir / "run"), "MESH_KEY_FILE": str(bench_key(rdir)[0])}
    res: dict[str, Any] = {"scenario": "nemesis", "seed": seed, "hosts": hosts, "duration_s": duration,
                           "hang_s": hang_s, "run_dir": str(rdir), "faults_planned": len(plan),
                           "fault_kinds_skipped": skipped}
    statuses: dict[str, Any] = {}
    nemesis = None
    world: Hosts | None = None
    try:
        with Netns(hosts, lock_wait=lock_wait) as netns, ExitStack() as stack:
            world = Hosts(rdir, netns, hosts, rec, env, log_level=log_level)
            stack.callback(world.stop_agents)
            stack.callback(world.cleanup)
            t_up = time.monotonic()
            for i in range(1, hosts + 1):
                world.start(i)
            converged = _wait_converged(world, CONVERGE_S)
            log(f"{hosts} agents up in {time.monotonic() - t_up:.1f} s, converged in {converged:.1f} s")
            t0 = time.time() + 3.0
            end = t0 + duration
            for name, host, target, local in programs:
                world.start_program(name, host, {
                    "name": name, "agent": Hosts.comm(target), "local": local, "dir": str(rdir),
                    "history": str(rdir / f"hist-{name}.jsonl"), "seed": seed, "end": end,
                    "hang_s": hang_s, "peers": hosts - 1, "pace_s": pace, "max_inflight": MAX_INFLIGHT})
            nemesis = Nemesis(world, plan, t0)
            nemesis.start()
            stop_monitor = threading.Event()

            def watch() -> None:
                while not stop_monitor.wait(1.0):
                    world.monitor(restart=time.time() < end)

            monitor = threading.Thread(target=watch, name="monitor", daemon=True)
            monitor.start()
            stack.callback(stop_monitor.set)
            # the run, then the programs' drain
            give_up = end + hang_s + PROGRAM_GRACE_S
            while time.time() < end:
                time.sleep(0.5)
            log("nemesis: end of the load; programs drain")
            nemesis.stop()
            nemesis.join(120)
            for name, child in world.programs.items():
                try:
                    child.popen.wait(max(0.1, give_up - time.time()))
                except Exception:  # noqa: BLE001 - still running: its stacks, then killed
                    child.popen.send_signal(signal.SIGUSR1)  # (faulthandler: to its log)
                    time.sleep(1.0)
                    child.popen.kill()
                    child.popen.wait(10)
                    log(f"program {name} still ran {give_up - end:.0f} s after the end: killed")
                rec.add("program_exit", p=name, rc=child.popen.returncode)
            stop_monitor.set()
            monitor.join(60)
            world.monitor(restart=False)
            for i in range(1, hosts + 1):
                a = world.agent(i)
                if a is None:
                    continue
                st = world.status(i)
                rec.add("liveness", agent=a.state["name"], host=i, responsive=st is not None)
                statuses[a.state["name"]] = st
            for name, m in world.rss_max.items():
                rec.add("rss", agent=name, mb=round(m["agent_mb"], 1), tree_mb=round(m["tree_mb"], 1))
            world.stop_agents()
    finally:
        if nemesis is not None:
            nemesis.stop()
        if world is not None:
            for cap in world.caps.values():
                cap.remove()
    history = list(rec.records)
    for name, *_ in programs:
        history += _read_jsonl(rdir / f"hist-{name}.jsonl")
    history += _read_execs(rdir)
    verdict = check(history)
    (rdir / "verdict.json").write_text(json.dumps(verdict, indent=1, default=str))
    (rdir / "statuses.json").write_text(json.dumps(statuses, indent=1, default=str))
    counts = verdict["counts"]
    kinds: dict[str, int] = {}
    for a in verdict["anomalies"]:
        kinds[a["what"]] = kinds.get(a["what"], 0) + 1
    stops = [r for r in rec.records if r["ev"] == "agent_stop"]
    res.update(counts)
    res.update({
        "max_tree_rss_mb": {k: round(v["tree_mb"], 1) for k, v in sorted(world.rss_max.items())},
        "unclean_stops": [f"{r['agent']}: {r.get('how')} rc {r.get('returncode')}" for r in stops
                          if r.get("how") != "graceful" or r.get("returncode") not in (0, None)],
        "fault_errors": nemesis.errors if nemesis is not None else [],
        "anomalies": kinds,
        "examples": [_short(a) for a in verdict["anomalies"][:8]],
    })
    res["clean"] = not (counts["lost"] or counts["duplicated"] or counts["hung"] or counts["wrong_values"]
                        or counts["unexpected"] or counts["agent_crashes"] or counts["agents_unresponsive"])
    res["summary"] = [
        f"nemesis seed {seed}: {counts['submitted']} calls: {counts['ok']} ok, {counts['failed_total']} "
        f"failed {counts['failed']}, {counts['hung']} hung, {counts['lost']} lost, "
        f"{counts['duplicated']} duplicated; {counts['agent_crashes']} agent crashes; faults "
        f"{counts['faults']}; extra executions {counts['extra_executions']}",
        f"evidence: {rdir / 'verdict.json'} (anomalies {kinds}), agents' logs {rdir}/agent-*.log",
    ]
    return res


def _short(a: dict) -> dict:
    out = {}
    for k, v in a.items():
        if isinstance(v, list):
            v = v[:4]
        if isinstance(v, str) and len(v) > 300:
            v = v[:300] + "..."
        out[k] = v
    return out
