"""The nemesis' world: one agent per harness host (a new one after each kill), the programs,
the faults done to them (`Nemesis`, driving a `bench.nemesis_faults` schedule), and the
recording of it all for the checker (`Recorder`).

Everything acts on processes this benchmark started, by PID, and on the harness's hosts.
Nothing here connects to a namespace address: the agents are watched through their
processes (exit codes, RSS) and, at the end, asked `status` by `mesh status` run inside
their own namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.agents import Agent, bench_key, start_agent
from bench.cgroups import PidsCap
from bench.errors import BenchError
from bench.nemesis_faults import Fault
from bench.netns import Netns
from bench.procs import MB, Child, bench_env, log, signal_abruptly, spawn, stop_all, tree

PORT = 46102
RESTART_AFTER_CRASH_S = 2.0


class Recorder:
    """The run's records (dicts with "ev"), kept in memory and appended to a JSON-lines file
    as they come (evidence that survives the benchmark's own death)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self.lock = threading.Lock()

    def add(self, ev: str, **fields: Any) -> dict:
        rec = {"ev": ev, "t": round(time.time(), 3), **fields}
        with self.lock:
            self.records.append(rec)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec


class Hosts:
    """Hosts 1..N of the harness, one agent each (name hIgG: host I, generation G), and the
    programs. Thread-safe (the nemesis and the monitor act at once)."""

    def __init__(self, run_dir: Path, netns: Netns, n: int, rec: Recorder, env: dict[str, str],
                 log_level: str = "INFO", cpus: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.netns = netns
        self.n = n
        self.rec = rec
        self.env = env
        self.log_level = log_level
        self.cpus = cpus
        self.live: dict[int, Agent] = {}
        self.gone: list[Agent] = []
        self.generation: dict[int, int] = {}
        self.ours_ended: set[int] = set()  # pids the nemesis killed or the bench stopped
        self.programs: dict[str, Child] = {}
        self.caps: dict[int, PidsCap] = {}
        self.lock = threading.RLock()
        self.rss_max: dict[str, dict[str, float]] = {}
        self.spawner = ThreadPoolExecutor(1, thread_name_prefix="spawner")

    @staticmethod
    def comm(i: int) -> str:
        return f"{Netns.address(i)}:{PORT}"

    # -- agents -------------------------------------------------------------------------

    def start(self, i: int) -> Agent:
        """A new agent on host i. Started by the one spawner thread, whatever thread asks:
        children get SIGTERM when the *thread* that started them ends (PR_SET_PDEATHSIG,
        `bench.procs.spawn`), and the spawner lives until `close`."""
        return self.spawner.submit(self._start, i).result()

    def _start(self, i: int) -> Agent:
        with self.lock:
            if i in self.live:
                raise BenchError(f"host {i} already has an agent")
            gen = self.generation[i] = self.generation.get(i, 0) + 1
        name = f"h{i}g{gen}"
        seeds = [a for j in range(1, self.n + 1) if j != i for a in ("--peer", self.comm(j))]
        agent = start_agent(self.run_dir, name=name, cpus=self.cpus, timeout=45.0, mdns=True,
                            extra=[*seeds, "--log-level", self.log_level],
                            netns=Netns.ns(i), interface=Netns.address(i), env=self.env,
                            comm_port=PORT)
        if agent.issues:
            log(f"{name}: contract issues: {agent.issues}")
        with self.lock:
            self.live[i] = agent
        self.rec.add("agent_start", agent=name, host=i, pid=agent.pid, id=agent.state["id"],
                     log=str(agent.child.log_path))
        return agent

    def agent(self, i: int) -> Agent | None:
        with self.lock:
            return self.live.get(i)

    def kill(self, i: int) -> Agent | None:
        """SIGKILL host i's agent (the nemesis' hand); None if it has none now."""
        with self.lock:
            agent = self.live.pop(i, None)
            if agent is None:
                return None
            self.ours_ended.add(agent.pid)
            self.gone.append(agent)
        signal_abruptly(agent.child)
        try:
            agent.child.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.rec.add("agent_exit", agent=agent.state["name"], host=i, pid=agent.pid,
                     rc=agent.child.popen.returncode, by_nemesis=True)
        return agent

    def signal(self, i: int, sig: int) -> bool:
        agent = self.agent(i)
        if agent is None or agent.child.popen.poll() is not None:
            return False
        os.kill(agent.pid, sig)
        return True

    def loss(self, i: int, pct: int | None) -> None:
        """`pct` % loss both ways between host i and every other host (None: undo)."""
        for j in range(1, self.n + 1):
            if j != i:
                for a, b in ((i, j), (j, i)):
                    if pct is None:
                        self.netns.chaos("unloss", a, b)
                    else:
                        self.netns.chaos("loss", a, b, pct)

    def nproc(self, i: int, headroom: int | None) -> dict:
        """Cap host i's agent tree at what it runs now plus `headroom` tasks (None: lift)."""
        cap = self.caps.setdefault(i, PidsCap(f"nem_h{i}"))
        if headroom is None:
            refused = cap.refused()
            cap.lift()
            return {"forks_refused_total": refused}
        agent = self.agent(i)
        if agent is None:
            return {"skipped": "no agent"}
        procs = tree(agent.pid)
        out: dict[str, Any] = {"limit": cap.cap([p.pid for p in procs], headroom),
                               "processes": len(procs)}
        # a worker dies (as to an OOM killer): the agent must start another, at its limit
        for worker in procs[1:2]:
            try:
                worker.kill()
                out["worker_killed"] = worker.pid
            except psutil.Error:
                pass
        return out

    def monitor(self, restart: bool) -> None:
        """One look at every agent: an exit the nemesis did not cause is recorded (and the
        host gets a new agent if `restart`); RSS is sampled."""
        with self.lock:
            items = list(self.live.items())
        for i, agent in items:
            rc = agent.child.popen.poll()
            if rc is not None:
                with self.lock:
                    if self.live.get(i) is not agent or agent.pid in self.ours_ended:
                        continue
                    del self.live[i]
                    self.gone.append(agent)
                self.rec.add("agent_exit", agent=agent.state["name"], host=i, pid=agent.pid, rc=rc,
                             by_nemesis=False, log_tail=agent.child.tail(30))
                log(f"agent {agent.state['name']} exited by itself (rc {rc})")
                if restart:
                    time.sleep(RESTART_AFTER_CRASH_S)
                    try:
                        self.start(i)
                    except BenchError as exc:
                        self.rec.add("restart_failed", host=i, error=str(exc)[:500])
                continue
            try:
                procs = tree(agent.pid)
                own = procs[0].memory_info().rss / MB if procs else 0.0
                total = sum(p.memory_info().rss for p in procs) / MB
            except (psutil.Error, IndexError):
                continue
            name = agent.state["name"]
            m = self.rss_max.setdefault(name, {"agent_mb": 0.0, "tree_mb": 0.0})
            m["agent_mb"] = max(m["agent_mb"], own)
            m["tree_mb"] = max(m["tree_mb"], total)

    def status(self, i: int, timeout: float = 10.0) -> dict | None:
        """`mesh status --json` of host i's agent, asked from inside its namespace."""
        agent = self.agent(i)
        if agent is None:
            return None
        cmd = ["ip", "netns", "exec", Netns.ns(i), sys.executable, "-m", "mesh", "status",
               "--agent", agent.comm, "--timeout", str(timeout), "--json",
               "--key-file", str(bench_key(self.run_dir)[0])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 20,
                                  env=bench_env(self.env), cwd=self.run_dir)
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return None

    def stop_agents(self) -> None:
        """SIGTERM every live agent (graceful leave), bounded; how each ended is recorded."""
        with self.lock:
            items = list(self.live.items())
            self.live.clear()
            for _, a in items:
                self.ours_ended.add(a.pid)
        stop_all([a.child for _, a in items], timeout=15)
        for i, a in items:
            self.rec.add("agent_stop", agent=a.state["name"], host=i, pid=a.pid, **(a.child.stopped or {}))
        stop_all([a.child for a in self.gone], timeout=5)  # (leftover workers of killed agents)
        self.spawner.shutdown(wait=False)

    # -- programs -----------------------------------------------------------------------

    def start_program(self, name: str, host: int, cfg: dict) -> Child:
        cmd = ["ip", "netns", "exec", Netns.ns(host), sys.executable, "-m", "bench.nemesis_prog",
               json.dumps(cfg)]
        child = spawn(f"prog-{name}", cmd, self.run_dir, env=bench_env(self.env))
        self.programs[name] = child
        self.rec.add("program_start", p=name, host=host, pid=child.pid, agent=cfg["agent"],
                     local=cfg["local"])
        return child

    def signal_program(self, name: str, sig: int) -> bool:
        child = self.programs.get(name)
        if child is None or child.popen.poll() is not None:
            return False
        os.kill(child.pid, sig)
        return True

    def cleanup(self) -> None:
        for child in self.programs.values():
            if child.popen.poll() is None:
                try:
                    child.popen.send_signal(signal.SIGCONT)
                    child.popen.kill()
                except ProcessLookupError:
                    pass
        for cap in self.caps.values():
            cap.lift()


class Nemesis(threading.Thread):
    """Applies a schedule of faults from wall time `t0` (each undone `seconds` later), and
    records each as it really happened: {"ev": "fault", kind, target, t0, t1, ...}."""

    def __init__(self, hosts: Hosts, faults: list[Fault], t0: float) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.hosts = hosts
        self.faults = faults
        self.t0 = t0
        self.stopping = threading.Event()
        self.active: dict[Fault, dict] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        timeline = sorted([(f.at, 1, f) for f in self.faults] + [(f.end, 0, f) for f in self.faults],
                          key=lambda e: (e[0], e[1]))
        for at, apply, f in timeline:
            if self.stopping.wait(max(0.0, self.t0 + at - time.time())):
                break
            if apply:
                self._apply(f)
            elif f in self.active:
                self._undo(f)
        self.undo_all()

    def stop(self) -> None:
        self.stopping.set()

    def undo_all(self) -> None:
        for f in list(self.active):
            self._undo(f)

    def _apply(self, f: Fault) -> None:
        h = self.hosts
        i = int(f.target[1:]) if f.target.startswith("h") else None
        rec: dict[str, Any] = {"kind": f.kind, "target": f.target, "planned_at": f.at,
                               "seconds": f.seconds, "param": f.param}
        try:
            rec["t0"] = time.time()
            if f.kind == "kill":
                agent = h.kill(i)
                ok = agent is not None
                if ok:
                    rec["agent"] = agent.state["name"]
            elif f.kind == "freeze":
                ok = h.signal(i, signal.SIGSTOP)
            elif f.kind == "isolate":
                h.netns.chaos("isolate", i)
                ok = True
            elif f.kind == "loss":
                h.loss(i, f.param)
                ok = True
            elif f.kind == "nproc":
                got = h.nproc(i, f.param)
                rec.update(got)
                ok = "skipped" not in got
            elif f.kind == "stall":
                ok = h.signal_program(f.target, signal.SIGSTOP)
            else:
                raise BenchError(f"unknown fault kind {f.kind}")
        except Exception as exc:  # noqa: BLE001 - a fault that could not be applied is recorded
            self.errors.append(f"{f.kind} {f.target}: {exc}")
            log(f"nemesis: {f.kind} {f.target} failed: {exc}")
            h.rec.add("fault_error", fault=rec, error=str(exc)[:500])
            return
        if not ok:
            h.rec.add("fault_skipped", fault=rec)
            return
        log(f"nemesis: {f.kind} {f.target}" + (f" {f.param}" if f.param else "")
            + f" for {f.seconds:.1f} s")
        self.active[f] = rec

    def _undo(self, f: Fault) -> None:
        h = self.hosts
        rec = self.active.pop(f)
        i = int(f.target[1:]) if f.target.startswith("h") else None
        try:
            if f.kind == "kill":
                h.start(i)
            elif f.kind == "freeze":
                h.signal(i, signal.SIGCONT)
            elif f.kind == "isolate":
                h.netns.chaos("unisolate", i)
            elif f.kind == "loss":
                h.loss(i, None)
            elif f.kind == "nproc":
                rec.update(h.nproc(i, None))
            elif f.kind == "stall":
                h.signal_program(f.target, signal.SIGCONT)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"undo {f.kind} {f.target}: {exc}")
            log(f"nemesis: undoing {f.kind} {f.target} failed: {exc}")
            rec["undo_error"] = str(exc)[:500]
        rec["t1"] = time.time()
        h.rec.add("fault", **rec)
