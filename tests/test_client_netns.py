"""A program on another host notices that its agent lost power (mesh.client.heartbeat), on
network namespaces of the harness (``bench.netns``/``harness/``): host 1 runs an agent,
host 2 a program connected to it over TCP with a call in flight. Host 1's link goes
silent (``chaos.sh isolate 1``: every frame dropped, no FIN or RST ever) and its agent is
killed. The program's call must end with AgentUnreachable within twice the detection
bound; once the link is back and a new agent serves the address, the program's next
call works. And the other way round: a result that takes longer than the bound to cross
a slow link (``chaos.sh rate``) is not taken for a dead agent.

The namespace names are machine-wide: the test holds ``/tmp/mesh-netns.lock`` (flock)
from ``netns_up.sh`` to ``netns_down.sh``, as everyone using the harness here does.
Skipped, with the reason, where the harness cannot run.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from bench.common import HARNESS, netns_unusable
from bench.netns import netns_lock
from mesh.client.heartbeat import DETECTION_S
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.agents, pytest.mark.timeout(240)]

LOCK_WAIT_S = 150.0
PORT = 46102

PROGRAM = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["root"])
from mesh.client.client import Client
from mesh.errors import AgentUnreachable


def say(**kw):
    print(json.dumps(kw), flush=True)


c = Client(cfg["agent"], timeout=20)
if cfg["mode"] == "big":  # one result that takes longer than the bound to cross the link
    t0 = time.monotonic()
    try:
        size = len(c.submit(bytes, cfg["size"]).result(120))
        say(outcome="value", size=size, seconds=round(time.monotonic() - t0, 2), pings=c.pings)
    except AgentUnreachable as exc:
        say(outcome="unreachable", error=str(exc), seconds=round(time.monotonic() - t0, 2))
    c.close()
    sys.exit(0)
fut = c.submit(time.sleep, 120)
deadline = time.monotonic() + 30
while c.query("status", timeout=5)["running"] < 1:  # (the call runs on host 1)
    if time.monotonic() > deadline:
        say(error="the call never ran")
        sys.exit(1)
    time.sleep(0.05)
say(running=True, tcp=c.local_path is None)
try:
    fut.result(150)
    say(outcome="value")
except AgentUnreachable as exc:
    say(outcome="unreachable", error=str(exc), at=time.time())
deadline = time.monotonic() + 90  # then a new agent at that address serves the next call
while True:
    try:
        if c.submit(abs, -7).result(20) == 7:
            say(after="ok", agent=c.query("status", timeout=10)["id"])
            break
    except AgentUnreachable as exc:
        if time.monotonic() > deadline:
            say(after=str(exc))
            break
        time.sleep(0.2)
c.close()
'''


def address(i: int) -> str:
    return f"10.213.0.{10 + i}"


class TwoHosts:
    """Hosts 1 and 2 of the harness; the agents and the program started in them (by PID)."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("MESH_") or k == "MESH_RUNTIME_DIR"}
        self.env["MESH_KEY_FILE"] = os.environ["MESH_KEY_FILE"]
        self.lines: queue.Queue = queue.Queue()

    def script(self, name: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(HARNESS / name), *map(str, args)], capture_output=True,
                              text=True, timeout=timeout)

    def chaos(self, *args: object) -> None:
        res = self.script("chaos.sh", *args, timeout=20)
        assert res.returncode == 0, f"chaos.sh {args}: {res.stderr}"

    def agent(self, name: str) -> tuple[subprocess.Popen, dict]:
        """An agent on host 1 at PORT; returns it and its state once it serves."""
        state = self.tmp / f"{name}.state.json"
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", "mt_h1", sys.executable, "-m", "mesh", "join", "--name", name,
             "--interface", address(1), "--comm-port", str(PORT), "--rest-port", "-1", "--no-mdns",
             "--cpus", "1", "--state-file", str(state)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        log.close()
        self.procs.append(proc)

        def ready():
            assert proc.poll() is None, (self.tmp / f"{name}.log").read_text()
            try:
                return json.loads(state.read_text())
            except (OSError, ValueError):
                return None

        st = wait_for(ready, 30, f"agent {name} in mt_h1 to serve")
        where = subprocess.run(["ip", "netns", "identify", str(proc.pid)], capture_output=True,
                               text=True, timeout=10).stdout.split()
        assert where == ["mt_h1"], f"agent {name} is in namespace {where}, not mt_h1"
        return proc, st

    def program(self, agent: str, **cfg) -> subprocess.Popen:
        """PROGRAM in mt_h2, connected to ``agent``; its lines go to ``self.lines``."""
        cfg = {"root": ROOT, "agent": agent, "mode": "power", **cfg}
        proc = subprocess.Popen(["ip", "netns", "exec", "mt_h2", sys.executable, "-c", PROGRAM,
                                 json.dumps(cfg)], stdout=subprocess.PIPE,
                                stderr=open(self.tmp / "program.stderr", "w"),
                                stdin=subprocess.DEVNULL, text=True, env=self.env, cwd=ROOT)
        self.procs.append(proc)

        def read() -> None:
            for line in proc.stdout:
                self.lines.put(json.loads(line))

        threading.Thread(target=read, daemon=True).start()
        return proc

    def line(self, timeout: float) -> dict:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            err = (self.tmp / "program.stderr").read_text(errors="replace")
            raise AssertionError(f"no line from the program within {timeout} s:\n{err[-2000:]}") from None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def two_hosts(tmp_path):
    why = netns_unusable()
    if why:
        pytest.skip(why)
    with netns_lock(wait_s=LOCK_WAIT_S):  # (the hosts' names are machine-wide: bench.netns)
        h = TwoHosts(tmp_path)
        try:
            h.script("netns_down.sh")
            up = h.script("netns_up.sh", 2)
            if up.returncode != 0:
                pytest.skip(f"netns_up.sh 2 failed ({up.returncode}): {up.stderr.strip()[-500:]}")
            yield h
        finally:
            try:
                h.close()
            finally:
                h.script("chaos.sh", "heal_all", timeout=30)
                h.script("netns_down.sh")


def test_a_program_on_another_host_fails_its_calls_when_its_agent_loses_power(two_hosts):
    h = two_hosts
    agent, st = h.agent("far")
    comm = f"{address(1)}:{PORT}"
    assert st["comm"] == comm
    h.program(comm)
    assert h.line(60) == {"running": True, "tcp": True}
    t_fault = time.time()
    h.chaos("isolate", 1)  # power loss: the link goes silent, then the agent dies
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    out = h.line(3 * DETECTION_S + 10)
    assert out["outcome"] == "unreachable", out
    assert f"no answer from the agent at {comm} for" in out["error"], out
    took = out["at"] - t_fault
    print(json.dumps({"test": "client_power_loss", "fault_to_unreachable_s": round(took, 2),
                      "detection_bound_s": DETECTION_S}))
    assert took < 2 * DETECTION_S, out
    h.chaos("unisolate", 1)  # the device comes back with a new agent at the same address
    _, st2 = h.agent("far-again")
    after = h.line(100)
    assert after == {"after": "ok", "agent": st2["id"]}, after


BIG = 12 << 20  # bytes of the slow link's result: ~6 s at 16 Mbit/s, over the bound


def test_a_big_result_on_a_slow_link_is_not_a_dead_agent(two_hosts):
    h = two_hosts
    _, st = h.agent("slow")
    h.chaos("rate", 1, 16000)  # host 1's link: 16 Mbit/s each way
    h.program(st["comm"], mode="big", size=BIG)
    out = h.line(100)
    print(json.dumps({"test": "client_slow_link", **out, "detection_bound_s": DETECTION_S}))
    assert out["outcome"] == "value" and out["size"] == BIG, out
    assert out["seconds"] > DETECTION_S  # (else the test tests nothing: the link was too fast)
