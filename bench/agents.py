"""Mesh agents a benchmark starts: the run's mesh key, the `python -m mesh join` command line,
`start_agent` (loopback, or inside a harness namespace) and waiting for a mesh to form."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.netns import assert_in_netns
from bench.procs import (
    Child,
    assert_loopback,
    bench_env,
    read_json,
    spawn,
    stop,
    wait_until,
)

STATE_KEYS = ("id", "name", "comm", "rest", "pid")


@dataclass
class Agent:
    child: Child
    state: dict
    ready_s: float
    issues: list[str] = field(default_factory=list)
    key: Any = None  # the mesh.keys.MeshKey clients need (None: the agent runs --insecure)
    mdns: bool = False

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def comm(self) -> str:
        return self.state["comm"]


KEY_FILE = "mesh.key"


def bench_key(workdir: Path) -> tuple[Path, Any]:
    """The mesh key of this benchmark run: `workdir/mesh.key`, made (mode 0600) on first use,
    so every secure agent started in one workdir belongs to the same mesh."""
    from mesh import keys

    path = Path(workdir) / KEY_FILE
    if not path.exists():
        keys.write(str(path), keys.MeshKey.generate())
    return path, keys.load(str(path), env={})


def agent_command(state_file: Path, name: str = "bench", cpus: int = 2,
                  extra: Sequence[str] = (), key_file: Path | None = None,
                  mdns: bool = False, rest: bool = False, interface: str = "127.0.0.1",
                  netns: str | None = None, comm_port: int = 0) -> list[str]:
    """`python -m mesh join` on 127.0.0.1 with an ephemeral comm port (or `comm_port`). `key_file`
    None means `--insecure` (plaintext); `mdns` announces/browses on 127.0.0.1 only (pinned by
    --interface); `rest` opens REST on an ephemeral port (else `--rest-port -1`).
    `netns` runs it inside that harness namespace (`ip netns exec`, which execs: the pid is the
    agent's) bound to `interface`, that namespace's address."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    cmd = [*prefix, sys.executable, "-m", "mesh", "join", "--name", name, "--interface", interface,
           "--comm-port", str(comm_port), "--rest-port", "0" if rest else "-1", "--cpus", str(cpus),
           "--state-file", str(state_file)]
    if not mdns:
        cmd.append("--no-mdns")
    cmd += ["--key-file", str(key_file)] if key_file is not None else ["--insecure"]
    return [*cmd, *extra]


def start_agent(workdir: Path, name: str = "bench", cpus: int = 2, extra: Sequence[str] = (),
                timeout: float = 30.0, secure: bool = True, mdns: bool = False,
                rest: bool = False, interface: str = "127.0.0.1",
                netns: str | None = None, env: dict[str, str] | None = None,
                comm_port: int = 0) -> Agent:
    """Start `python -m mesh join` on loopback and wait (polling) until its state file is ready.

    `secure` (default): the agent gets the run's mesh key (`bench_key`) with `--key-file`;
    otherwise `--insecure`. `mdns` (default off): mDNS on 127.0.0.1. `rest` (default off):
    REST on an ephemeral loopback port. The agent never sees the caller's MESH_* variables.
    `ready_s` is from just before Popen to the moment the state file first parsed with all keys.
    Contract deviations that do not prevent measuring are returned in `issues`.
    `netns` (a harness namespace `mt_hN`) with `interface` its address: the agent runs in that
    namespace, and the safety check is that it really lives there (not in the root namespace).
    Without `netns` only a loopback `interface` is allowed. `env`: extra environment
    variables of the agent (e.g. MESH_INLINE_MAX). `comm_port`: 0 (default) an ephemeral one.
    """
    if netns is None and not interface.startswith("127."):
        raise BenchError(f"network safety: interface {interface} outside a harness namespace")
    if netns is not None and not re.fullmatch(r"mt_h\d+", netns):
        raise BenchError(f"network safety: {netns!r} is not a harness host namespace (mt_hN)")
    key_file, key = bench_key(workdir) if secure else (None, None)
    state_file = Path(workdir) / f"{name}.state.json"
    child = spawn(f"agent-{name}", agent_command(state_file, name, cpus, extra, key_file, mdns, rest,
                                                 interface, netns, comm_port), workdir,
                  env=bench_env(env))
    try:
        state = wait_until(lambda: read_json(state_file, STATE_KEYS), timeout,
                           f"the agent's state file {state_file}", child)
        ready_s = time.perf_counter() - child.started
        if netns is None:
            assert_loopback(child.pid, "the mesh agent", allow_mdns=mdns)
        else:
            assert_in_netns(child.pid, netns, "the mesh agent")
    except BenchError as exc:
        stop(child)
        hint = ""
        if "No module named" in str(exc) or "No such command" in str(exc):
            hint = "mesh agent not available yet (`python -m mesh join` failed to start). "
        raise BenchError(hint + str(exc)) from None
    issues = []
    if state.get("pid") != child.pid:
        issues.append(f"state pid {state.get('pid')!r} != process pid {child.pid}")
    if state.get("name") != name:
        issues.append(f"state name {state.get('name')!r} != {name!r}")
    if not rest and state.get("rest") is not None:
        issues.append(f"rest is {state.get('rest')!r} although --rest-port -1")
    if rest and not str(state.get("rest") or "").startswith("127.0.0.1:"):
        issues.append(f"rest is {state.get('rest')!r}, expected 127.0.0.1:PORT (--rest-port 0)")
    if not str(state.get("comm", "")).startswith(f"{interface}:"):
        issues.append(f"comm {state.get('comm')!r} is not on {interface}")
    if key is not None:  # the start-up line names the key's fingerprint: it really runs secure
        fingerprint, deadline = key.fingerprint(), time.monotonic() + 5.0
        while fingerprint not in child.tail(50) and time.monotonic() < deadline:
            time.sleep(0.02)
        if fingerprint not in child.tail(50):
            issues.append(f"agent log does not name key {fingerprint} (secure mode not confirmed)")
    return Agent(child, state, ready_s, issues, key, mdns)

def wait_members(clients: Sequence[Any], n: int, timeout: float, what: str = "the mesh") -> None:
    """Poll each client's agent (`status`) until every one counts `n - 1` live peers."""
    def full() -> bool:
        return all(c.query("status", timeout=5.0)["peers_alive"] >= n - 1 for c in clients)

    wait_until(full, timeout, f"{what} to form ({n} agents each seeing {n - 1} live peers)",
               interval=0.05)
