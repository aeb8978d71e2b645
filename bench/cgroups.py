"""CPU-capped agents: cgroup v1 groups made by the harness's `cg_limit.sh` (a CFS quota of a
share of one core, and a memory limit), and `start_capped_agent` that runs an agent in one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.agents import STATE_KEYS, Agent, agent_command, bench_key
from bench.errors import BenchError
from bench.netns import HARNESS
from bench.procs import assert_loopback, read_json, spawn, stop, wait_until

CG_ROOT = Path("/sys/fs/cgroup")


def cgroups_unusable() -> str | None:
    """Why `cg_limit.sh` cannot cap an agent here, or None if it can (a probe group is made,
    run and removed)."""
    if not sys.platform.startswith("linux"):
        return f"cgroups need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "cgroups need root (cg_limit.sh writes /sys/fs/cgroup)"
    script = HARNESS / "cg_limit.sh"
    if not script.is_file():
        return f"harness script {script} not found (set BENCH_HARNESS)"
    if not (CG_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return "no cgroup v1 cpu controller at /sys/fs/cgroup/cpu (cfs quota)"
    probe = CpuCap(f"probe{os.getpid()}", 25, 0)
    try:
        proc = subprocess.run(probe.prefix() + ["true"], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            return f"cg_limit.sh run failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cg_limit.sh run failed: {exc}"
    finally:
        probe.remove()
    return None


@dataclass
class CpuCap:
    """A cgroup `mt_NAME` made by the harness's `cg_limit.sh run NAME PCT MEM_MB -- CMD`:
    PCT % of one core (CFS quota over a 100 ms period) for the whole process tree, and a
    MEM_MB memory limit (0: none)."""

    name: str
    pct: int
    mem_mb: int = 0

    @property
    def group(self) -> str:
        return f"mt_{self.name}"

    def prefix(self) -> list[str]:
        return ["bash", str(HARNESS / "cg_limit.sh"), "run", self.name, str(self.pct),
                str(self.mem_mb), "--"]

    def holds(self, pid: int) -> bool:
        """Whether `pid` is in this group's cpu cgroup."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(",") and path.rstrip("/").endswith("/" + self.group):
                return True
        return False

    def stat(self) -> dict[str, Any]:
        """Quota, period and throttling counters of the cpu group (empty if gone)."""
        d = CG_ROOT / "cpu" / self.group
        try:
            out: dict[str, Any] = {"quota_us": int((d / "cpu.cfs_quota_us").read_text()),
                                   "period_us": int((d / "cpu.cfs_period_us").read_text())}
            for line in (d / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                out[k] = int(v)
        except (OSError, ValueError):
            return {}
        return out

    def remove(self) -> None:
        """`cg_limit.sh rm NAME` (its processes must have exited); errors are ignored."""
        try:
            subprocess.run(["bash", str(HARNESS / "cg_limit.sh"), "rm", self.name],
                           capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass


def start_capped_agent(workdir: Path, cap: CpuCap, name: str, cpus: int,
                       extra: Sequence[str] = (), timeout: float = 30.0) -> Agent:
    """Like `start_agent` (secure, 127.0.0.1, no mDNS, no REST), but the agent is exec'ed by
    `cg_limit.sh` inside `cap`'s cgroup (its workers inherit it): the pid is the agent's.
    Checks loopback-only sockets and that the agent really sits in the group."""
    key_file, key = bench_key(workdir)
    state_file = Path(workdir) / f"{name}.state.json"
    cmd = cap.prefix() + agent_command(state_file, name, cpus, extra, key_file)
    child = spawn(f"agent-{name}", cmd, workdir)
    try:
        state = wait_until(lambda: read_json(state_file, STATE_KEYS), timeout,
                           f"the agent's state file {state_file}", child)
        ready_s = time.perf_counter() - child.started
        assert_loopback(child.pid, f"the mesh agent {name}")
        if not cap.holds(child.pid):
            raise BenchError(f"agent {name} (pid {child.pid}) is not in cgroup {cap.group}")
    except BaseException:
        stop(child)
        raise
    issues = []
    if state.get("pid") != child.pid:
        issues.append(f"state pid {state.get('pid')!r} != process pid {child.pid}")
    return Agent(child, state, ready_s, issues, key, False)


class PidsCap:
    """A cgroup v1 `pids` group `mt_NAME` that caps how many tasks (processes and threads)
    some running processes may have: `cap` moves them in and sets `pids.max` to what they
    have now plus a headroom, so a fork or a new thread fails (EAGAIN) as on a device at its
    process limit; `lift` sets it back to `max`. (RLIMIT_NPROC cannot do this here: the
    kernel does not apply it to root, whom the agents run as.)"""

    def __init__(self, name: str):
        self.dir = CG_ROOT / "pids" / f"mt_{name}"

    @staticmethod
    def usable() -> str | None:
        if not (CG_ROOT / "pids" / "cgroup.procs").exists():
            return "no cgroup v1 pids controller at /sys/fs/cgroup/pids"
        if os.geteuid() != 0:
            return "cgroups need root"
        return None

    def cap(self, pids: Sequence[int], headroom: int) -> int:
        """Move `pids` in (those still alive) and cap the group; returns the limit set."""
        self.dir.mkdir(exist_ok=True)
        (self.dir / "pids.max").write_text("max")
        for pid in pids:
            try:
                (self.dir / "cgroup.procs").write_text(str(pid))
            except OSError:  # (gone meanwhile)
                pass
        limit = int((self.dir / "pids.current").read_text()) + headroom
        (self.dir / "pids.max").write_text(str(limit))
        return limit

    def lift(self) -> None:
        if self.dir.exists():
            (self.dir / "pids.max").write_text("max")

    def refused(self) -> int:
        """How many forks the cap refused so far (`pids.events`: max)."""
        try:
            return int((self.dir / "pids.events").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    def remove(self) -> None:
        """Move what is left back to the root group and delete the group (errors ignored)."""
        if not self.dir.exists():
            return
        try:
            for pid in (self.dir / "cgroup.procs").read_text().split():
                try:
                    (CG_ROOT / "pids" / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            self.dir.rmdir()
        except OSError:
            pass
