"""Chaos with real agents on separate "hosts": network namespaces of the shared harness.

`netns_up.sh 4` builds hosts mt_h1..mt_h4 (10.213.0.11..14) on one bridge; host I runs one
agent (`ip netns exec mt_hI python -m mesh join --interface 10.213.0.(10+I) --no-mdns
--peer ...`, the run's mesh key, log in tmp_path). Programs run inside a namespace too
(`ip netns exec mt_hI python prog.py`), connected to their own host's agent, and print
one JSON line: this test process never connects to a namespace address.

1. Power loss during a task graph: host 1's program submits a graph of 588 tasks (~15 ms
   each; the task functions of tests/test_chaos.py, which append one line per run to a
   shared log); once a quarter of it ran, host 3 loses power: `chaos.sh isolate 3` (its
   bridge port drops every frame: no FIN/RST ever) then SIGKILL of its agent. Checked:
   values, every task ran, the client got no late result, the origin counted each call
   done once.
2. Cut-off origin finishes alone: each host's program runs its own graph on its own
   agent; mid-run host 2's cable is pulled (`chaos.sh cut 2`). Host 2's program must still
   finish with the right values (what peers held for it comes back once it declares them
   dead), so must the other three; then the cable is healed and all four agents must see
   each other alive again.

Skipped, with the reason, where the harness cannot run (not Linux, not root, no
`ip`/`bridge`, harness scripts missing, `netns_up.sh` failing). Works inside CI's
`unshare --net` (the namespaces are created inside the private one).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.common import HARNESS, netns_unusable
from bench.netns import netns_lock
from tests.conftest import ROOT, wait_for
from tests.test_chaos import expected_tasks, expected_values

pytestmark = [pytest.mark.chaos, pytest.mark.agents, pytest.mark.timeout(240)]

PREFIX = "10.213.0"
HOSTS = 4
PORT = 46102
TEST_BUDGET_S = 115.0  # each test stays under 120 s, set-up included

# The program run inside a host's namespace. argv[1]: JSON config. Modes:
#   graph:    wait until the agent sees `peers` live peers, touch `ready`, wait for `go`,
#             run the graph (tests/test_chaos.py's tasks), print values and counters.
#   converge: wait until the agent sees `peers` live peers, print how long it took.
PROGRAM = r'''
import json, os, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["root"])
import mesh
from mesh import wait_on
from mesh.client.client import Client
from tests.conftest import wait_for as until
from tests.test_chaos import submit_graph


def peers_alive(c):
    return c.query("status", timeout=5)["peers_alive"]


t_start = time.monotonic()
if cfg["mode"] == "converge":
    with Client(cfg["agent"], timeout=10) as c:
        until(lambda: peers_alive(c) == cfg["peers"], cfg["timeout"],
              f"{cfg['agent']} to see {cfg['peers']} live peers")
        print(json.dumps({"peers_alive": peers_alive(c),
                          "waited_s": round(time.monotonic() - t_start, 2)}), flush=True)
    sys.exit(0)

L, C, S, log = cfg["leaves"], cfg["chains"], cfg["steps"], cfg["log"]
with mesh.connect(cfg["agent"], timeout=10) as client:
    until(lambda: peers_alive(client) >= cfg["peers"], cfg["timeout"],
          f"{cfg['agent']} to see {cfg['peers']} live peers")
    open(cfg["ready"], "w").close()
    until(lambda: os.path.exists(cfg["go"]), cfg["timeout"], "the go signal")
    t0, wall0 = time.monotonic(), time.time()
    futures = list(submit_graph(log, L, C, S))
    open(cfg["submitted"], "w").close()
    values = wait_on(futures)
    took, wall_end = time.monotonic() - t0, time.time()
    st = client.query("status", timeout=10)
    print(json.dumps({"values": values, "seconds": round(took, 2), "start": wall0, "end": wall_end,
                      "late_results": client.late_results, "done": st["done"],
                      "failed": st["failed"], "duplicates_dropped": st["dropped"]["duplicate_results"],
                      "peers_alive": st["peers_alive"]}), flush=True)
'''


def address(i: int) -> str:
    return f"{PREFIX}.{10 + i}"


def comm(i: int) -> str:
    return f"{address(i)}:{PORT}"


class Hosts:
    """Hosts 1..HOSTS of the harness, the agents and programs started in them (by PID)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.agents: dict[int, subprocess.Popen] = {}
        self.programs: list[subprocess.Popen] = []
        self.prog = tmp_path / "prog.py"
        self.prog.write_text(PROGRAM)
        self.env = {k: v for k, v in os.environ.items()  # (local sockets: the session's dir)
                    if not k.startswith("MESH_") or k == "MESH_RUNTIME_DIR"}
        self.env["MESH_KEY_FILE"] = os.environ["MESH_KEY_FILE"]

    def script(self, name: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(HARNESS / name), *map(str, args)], capture_output=True,
                              text=True, timeout=timeout)

    def chaos(self, *args: object) -> float:
        """Run `chaos.sh ARGS`; returns the wall time just before it."""
        t = time.time()
        res = self.script("chaos.sh", *args, timeout=20)
        assert res.returncode == 0, f"chaos.sh {args}: {res.stderr}"
        return t

    def log_path(self, i: int) -> Path:
        return self.tmp / f"h{i}.log"

    def log(self, i: int) -> str:
        try:
            return self.log_path(i).read_text(errors="replace")
        except OSError:
            return ""

    def logs_tail(self, lines: int = 40) -> str:
        out = []
        for i in sorted(self.agents):
            tail = "\n".join(self.log(i).splitlines()[-lines:])
            out.append(f"--- agent h{i} ({self.log_path(i)}), last {lines} lines:\n{tail}")
        return "\n".join(out)

    def start_agent(self, i: int, cpus: int) -> subprocess.Popen:
        state = self.tmp / f"h{i}.state.json"
        seeds = [a for j in range(1, HOSTS + 1) if j != i for a in ("--peer", comm(j))]
        cmd = ["ip", "netns", "exec", f"mt_h{i}", sys.executable, "-m", "mesh", "join",
               "--name", f"h{i}", "--interface", address(i), "--comm-port", str(PORT),
               "--rest-port", "-1", "--no-mdns", *seeds, "--cpus", str(cpus),
               "--state-file", str(state), "--log-level", "DEBUG"]
        with open(self.log_path(i), "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        self.agents[i] = proc

        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"agent h{i} exited with {proc.returncode}:\n{self.log(i)}")
            try:
                return json.loads(state.read_text())
            except (OSError, ValueError):
                return None

        st = wait_for(ready, 30, f"agent h{i} to be ready")
        # `ip netns exec` execs the interpreter: the PID we hold is the agent's, in mt_hI
        assert st["pid"] == proc.pid and st["comm"] == comm(i), st
        where = subprocess.run(["ip", "netns", "identify", str(proc.pid)], capture_output=True,
                               text=True, timeout=10).stdout.split()
        assert where == [f"mt_h{i}"], f"agent h{i} is in namespace {where}, not mt_h{i}"
        return proc

    def start_mesh(self, cpus: dict[int, int]) -> None:
        for i in range(1, HOSTS + 1):
            self.start_agent(i, cpus.get(i, 1))

    def program(self, i: int, name: str, **cfg) -> tuple[subprocess.Popen, dict]:
        """Start PROGRAM inside mt_hI, connected to host I's agent."""
        cfg = {"root": ROOT, "agent": comm(i), "peers": HOSTS - 1, "timeout": 30,
               "ready": str(self.tmp / f"{name}.ready"), "go": str(self.tmp / "go"),
               "submitted": str(self.tmp / f"{name}.submitted"),
               "log": str(self.tmp / f"{name}.runs"), **cfg}
        err = open(self.tmp / f"{name}.stderr", "w")
        proc = subprocess.Popen(["ip", "netns", "exec", f"mt_h{i}", sys.executable, str(self.prog),
                                 json.dumps(cfg)], stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True, env=self.env, cwd=ROOT)
        err.close()
        self.programs.append(proc)
        return proc, cfg

    def result(self, proc: subprocess.Popen, cfg: dict, name: str, timeout: float) -> dict:
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise AssertionError(f"program {name} did not finish within {timeout:.0f} s\n"
                                 + self.logs_tail()) from None
        err = (self.tmp / f"{name}.stderr").read_text(errors="replace")
        assert proc.returncode == 0 and out.strip(), \
            f"program {name} exited {proc.returncode}:\n{err[-3000:]}\n{self.logs_tail()}"
        return json.loads(out.strip().splitlines()[-1])

    def close(self) -> None:
        for proc in self.programs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in [*self.programs, *self.agents.values()]:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def hosts(tmp_path):
    why = netns_unusable()
    if why:
        pytest.skip(why)
    with netns_lock(wait_s=150):  # (the hosts' names are machine-wide: bench.netns)
        yield from _hosts_up(tmp_path)


def _hosts_up(tmp_path):
    h = Hosts(tmp_path)
    try:
        h.script("netns_down.sh")
        up = h.script("netns_up.sh", HOSTS)
        if up.returncode != 0:
            pytest.skip(f"netns_up.sh {HOSTS} failed ({up.returncode}): {up.stderr.strip()[-500:]}")
        yield h
    finally:
        try:
            h.close()
        finally:
            h.script("chaos.sh", "heal_all", timeout=30)
            h.script("netns_down.sh")


def runs(path: str) -> Counter:
    try:
        with open(path) as f:
            return Counter(line.split()[0] for line in f if line.strip())
    except OSError:
        return Counter()


def lines_in(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def log_time(line: str) -> float:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_line(text: str, pattern: str) -> str | None:
    return next((ln for ln in text.splitlines() if re.search(pattern, ln)), None)


POWER_GRAPH = {"leaves": 250, "chains": 30, "steps": 2}  # 588 tasks


def test_power_loss_of_a_host_during_a_task_graph(hosts, tmp_path):
    t_test = time.monotonic()
    victim = 3
    hosts.start_mesh({1: 1, 2: 1, 3: 2, 4: 1})  # host 3 (2 slots) is the likeliest tree root
    n_tasks = expected_tasks(**POWER_GRAPH)
    proc, cfg = hosts.program(1, "p1", mode="graph", **POWER_GRAPH)
    wait_for(lambda: os.path.exists(cfg["ready"]) or proc.poll() is not None, 40,
             "the program in mt_h1 to see the whole mesh")
    assert proc.poll() is None, hosts.result(proc, cfg, "p1", 5)
    (tmp_path / "go").touch()
    wait_for(lambda: proc.poll() is not None or (lines_in(cfg["log"]) >= n_tasks // 4 and any(
        ln.endswith(f" h{victim}") for ln in open(cfg["log"]).read().splitlines())), 60,
        f"a quarter of the graph to run, some of it on h{victim}")
    assert proc.poll() is None, "the graph finished before the fault"
    t_fault = hosts.chaos("isolate", victim)  # silent: no FIN/RST will ever arrive
    hosts.agents[victim].send_signal(signal.SIGKILL)
    hosts.agents[victim].wait(10)
    out = hosts.result(proc, cfg, "p1", TEST_BUDGET_S - (time.monotonic() - t_test) - 10)

    ran = runs(cfg["log"])
    origin_log = hosts.log(1)
    report = {"test": "power_loss", "tasks": n_tasks, "seconds": out["seconds"],
              "fault_to_finish_s": round(out["end"] - t_fault, 2),
              "extra_runs": sum(ran.values()) - len(ran),
              "duplicates_dropped_at_origin": out["duplicates_dropped"]}
    dead = first_line(origin_log, rf"peer h{victim} \(\w+\): \w+ -> dead")
    replaced = first_line(origin_log, rf"peer h{victim} lost: re-placed")
    report["fault_to_dead_s"] = round(log_time(dead) - t_fault, 2) if dead else None
    report["origin_reassign_line"] = replaced[24:] if replaced else None
    print(json.dumps(report))
    assert out["values"] == expected_values(**POWER_GRAPH), out
    assert len(ran) == n_tasks, f"{n_tasks - len(ran)} task(s) never ran"
    assert out["late_results"] == 0, out
    assert out["done"] == n_tasks and out["failed"] == 0, out
    assert dead is not None, f"h1 never declared h{victim} dead\n{hosts.logs_tail()}"
    assert time.monotonic() - t_test < TEST_BUDGET_S + 5


CUT_GRAPH = {"leaves": 120, "chains": 15, "steps": 2}  # 283 tasks per program


def test_cut_off_origin_finishes_its_graph_alone(hosts, tmp_path):
    t_test = time.monotonic()
    cut = 2
    hosts.start_mesh({i: 1 for i in range(1, HOSTS + 1)})
    n_tasks = expected_tasks(**CUT_GRAPH)
    # host 2's graph starts first, alone, so that its calls spread over the idle peers; the
    # other three start once peers run some of it, and the cable is pulled at once, while
    # peers still hold some of host 2's calls (checked from its log)
    progs = {i: hosts.program(i, f"p{i}", mode="graph",
                              go=str(tmp_path / ("go2" if i == cut else "go")), **CUT_GRAPH)
             for i in range(1, HOSTS + 1)}
    wait_for(lambda: all(os.path.exists(c["ready"]) or p.poll() is not None
                         for p, c in progs.values()), 40, "the 4 programs to see the whole mesh")
    for i, (p, c) in progs.items():
        assert p.poll() is None, hosts.result(p, c, f"p{i}", 5)

    def where(i: int) -> Counter:
        try:
            with open(progs[i][1]["log"]) as f:
                return Counter(ln.split()[-1] for ln in f if ln.strip())
        except OSError:
            return Counter()

    def stopped() -> bool:
        return any(p.poll() is not None for p, _ in progs.values())

    (tmp_path / "go2").touch()
    wait_for(lambda: stopped() or len(set(where(cut)) - {f"h{cut}"}) >= 2, 30,
             f"peers to run some of h{cut}'s graph")
    assert not stopped(), "a graph finished before the cut"
    before_cut = where(cut)
    (tmp_path / "go").touch()  # the other three submit their graphs as the cable is pulled
    t_cut = hosts.chaos("cut", cut)
    wait_for(lambda: stopped() or all(os.path.exists(c["submitted"]) for _, c in progs.values()),
             30, "every graph to be submitted")
    outs = {}
    for i, (p, c) in progs.items():
        outs[i] = hosts.result(p, c, f"p{i}", TEST_BUDGET_S - 35 - (time.monotonic() - t_test))

    def deaths_missing() -> list[str]:
        missing = []
        for j in range(1, HOSTS + 1):
            if j != cut:
                if not first_line(hosts.log(cut), rf"peer h{j} \(\w+\): \w+ -> dead"):
                    missing.append(f"h{cut} has not declared h{j} dead")
                if not first_line(hosts.log(j), rf"peer h{cut} \(\w+\): \w+ -> dead"):
                    missing.append(f"h{j} has not declared h{cut} dead")
        return missing

    # before healing: the cut-off host declares every other host dead, and they it
    try:
        wait_for(lambda: not deaths_missing(), max(1.0, 25 - (time.time() - t_cut)),
                 "the cut to be seen on both sides")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {deaths_missing()}\n{hosts.logs_tail()}") from None
    t_heal = hosts.chaos("heal", cut)

    report = {"test": "cut_origin", "tasks_per_graph": n_tasks,
              "h2_tasks_ran_before_cut": dict(before_cut),
              "seconds": {f"p{i}": o["seconds"] for i, o in outs.items()},
              "cut_to_finish_s": {f"p{i}": round(o["end"] - t_cut, 2) for i, o in outs.items()},
              "extra_runs": {f"p{i}": sum(runs(c["log"]).values()) - len(runs(c["log"]))
                             for i, (_, c) in progs.items()}}
    for i, (_, c) in progs.items():
        ran = runs(c["log"])
        assert outs[i]["values"] == expected_values(**CUT_GRAPH), (i, outs[i])
        assert len(ran) == n_tasks, f"p{i}: {n_tasks - len(ran)} task(s) never ran"
        assert outs[i]["late_results"] == 0, (i, outs[i])
        assert outs[i]["failed"] == 0, (i, outs[i])
    replaced = [ln[24:] for ln in hosts.log(cut).splitlines() if re.search(r"lost: re-placed", ln)]
    report["h2_replaced"] = replaced
    assert any(re.search(r"re-placed [1-9]", ln) for ln in replaced), \
        f"peers held none of h{cut}'s calls at the cut (the test proved nothing)\n{hosts.logs_tail()}"
    # healed: all four see each other alive again (each checked from inside its namespace)
    budget = min(30.0, TEST_BUDGET_S - (time.monotonic() - t_test) - 5)
    checks = {i: hosts.program(i, f"c{i}", mode="converge", timeout=budget)
              for i in range(1, HOSTS + 1)}
    waited = {}
    for i, (p, c) in checks.items():
        waited[f"h{i}"] = hosts.result(p, c, f"c{i}", budget + 15)["waited_s"]
    report["converge_waited_s"] = waited
    # when each agent logged the last peer coming back alive
    back = {}
    for i in range(1, HOSTS + 1):
        alive = [log_time(ln) for ln in hosts.log(i).splitlines()
                 if re.search(r"peer h\d \(\w+\): \w+ -> alive", ln) and log_time(ln) >= t_heal]
        back[f"h{i}"] = round(max(alive) - t_heal, 2) if alive else None
    report["heal_to_all_alive_s"] = back
    print(json.dumps(report))
    assert time.monotonic() - t_test < TEST_BUDGET_S + 5
