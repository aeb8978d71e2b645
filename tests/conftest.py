"""Fixtures that start real agent processes on 127.0.0.1 and stop them by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from mesh import keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status(agent) -> dict:
    """The agent's ``status`` query, over a client of its own."""
    from mesh.client.client import Client

    with Client(agent.comm) as c:
        return c.query("status")


def sees(agent, name: str) -> bool:
    """Whether ``agent`` holds the member called ``name`` alive."""
    from mesh.client.client import Client

    with Client(agent.comm) as c:
        return any(p["name"] == name and p["state"] == "alive" for p in c.query("peers"))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02, explain=None):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes.
    ``explain``: called on a timeout, its text goes into the failure (e.g. agents' logs)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the condition may fail while things start
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else "")
                         + (f"\n{explain()}" if explain is not None else ""))


@pytest.fixture(scope="session", autouse=True)
def mesh_key(tmp_path_factory):
    """Every test runs with a mesh key (the secure default): MESH_KEY_FILE is set for
    the test process, the CLI commands it runs and the agents it starts."""
    key = keys.MeshKey.generate()
    path = str(tmp_path_factory.mktemp("key") / "key")
    keys.write(path, key)
    old = os.environ.get("MESH_KEY_FILE")
    os.environ["MESH_KEY_FILE"] = path
    yield key
    if old is None:
        os.environ.pop("MESH_KEY_FILE", None)
    else:
        os.environ["MESH_KEY_FILE"] = old


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory):
    """Agents' local sockets (``mesh.wire.localsock``) go to a private directory of this test
    session, not to the machine's ``<tmp>/mesh-<uid>``."""
    path = tmp_path_factory.mktemp("run")
    os.chmod(path, 0o700)
    old = os.environ.get("MESH_RUNTIME_DIR")
    os.environ["MESH_RUNTIME_DIR"] = str(path)
    yield str(path)
    if old is None:
        os.environ.pop("MESH_RUNTIME_DIR", None)
    else:
        os.environ["MESH_RUNTIME_DIR"] = old


def mesh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mesh", *args]


def run_cli(*args: str, timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    for k in ("MESH_PEERS", "MESH_AGENT"):
        if env is None or k not in env:
            full_env.pop(k, None)
    return subprocess.run(mesh_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=ROOT)


@dataclass
class AgentProc:
    name: str
    proc: subprocess.Popen
    state_file: str
    log_file: str
    state: dict | None = None

    @property
    def comm(self) -> str:
        return self.state["comm"]

    @property
    def id(self) -> str:
        return self.state["id"]

    def log(self) -> str:
        with open(self.log_file) as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class AgentFactory:
    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.agents: list[AgentProc] = []

    def start(self, name: str, *args: str, mdns: bool = False, cpus: int = 1, wait: bool = True,
              env: dict | None = None, secure: bool = True) -> AgentProc:
        state_file = str(self.tmp_path / f"{name}.state.json")
        log_file = str(self.tmp_path / f"{name}.log")
        cmd = mesh_cmd("join", "--name", name, "--interface", "127.0.0.1", "--comm-port", "0",
                       "--rest-port", "-1", "--cpus", str(cpus), "--state-file", state_file,
                       "--log-level", "DEBUG", *args)
        if not mdns:
            cmd.append("--no-mdns")
        if not secure:
            cmd.append("--insecure")
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("MESH_") or k in ("MESH_RUNTIME_DIR", "MESH_LOCAL_SOCKET")}
        if secure:
            full_env["MESH_KEY_FILE"] = os.environ["MESH_KEY_FILE"]
        full_env.update(env or {})
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=full_env, cwd=ROOT)
        agent = AgentProc(name, proc, state_file, log_file)
        self.agents.append(agent)
        if wait:
            self.wait_ready(agent)
        return agent

    def wait_ready(self, agent: AgentProc, timeout: float = 20) -> AgentProc:
        def ready():
            if agent.proc.poll() is not None:
                raise AssertionError(f"agent {agent.name} exited with {agent.proc.returncode}:\n{agent.log()}")
            try:
                with open(agent.state_file) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None

        agent.state = wait_for(ready, timeout, f"agent {agent.name} to be ready")
        return agent

    def stop_all(self) -> None:
        for a in self.agents:
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGTERM)
        for a in self.agents:
            try:
                a.proc.wait(15)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait(5)


@pytest.fixture
def agents(tmp_path):
    factory = AgentFactory(tmp_path)
    yield factory
    factory.stop_all()
