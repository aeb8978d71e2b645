"""Shared benchmark helpers, one import for the scenarios: re-exports the modules below, and
holds the calibrated CPU-bound task bodies (`spin`, `where`: they stay here because cloudpickle
sends them by reference, as `bench.common.spin`).

- `bench.errors`: `BenchError`;
- `bench.procs`: start, wait for, measure (memory, CPU) and stop process trees; loopback check;
- `bench.agents`: start mesh agents (`start_agent`), the run's mesh key, `wait_members`;
- `bench.netns`: the network-namespace harness (`Netns`, `netns_unusable`);
- `bench.cgroups`: CPU-capped agents (`CpuCap`, `cgroups_unusable`, `start_capped_agent`);
- `bench.memberlog`: member changes parsed from the agents' logs;
- `bench.stats`: percentiles, ratios, spreads.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.agents import (
    KEY_FILE,
    STATE_KEYS,
    Agent,
    agent_command,
    bench_key,
    start_agent,
    wait_members,
)
from bench.cgroups import CG_ROOT, CpuCap, cgroups_unusable, start_capped_agent
from bench.errors import BenchError
from bench.memberlog import MemberChange, first_change, member_changes, member_view, parse_change
from bench.netns import HARNESS, NETNS_PREFIX, Netns, assert_in_netns, netns_unusable
from bench.procs import (
    MB,
    MDNS_PORT,
    POLL_S,
    ROOT,
    Child,
    CpuWindow,
    MachineCpu,
    assert_loopback,
    bench_env,
    log,
    memory,
    non_loopback_sockets,
    read_json,
    signal_abruptly,
    spawn,
    stop,
    stop_all,
    tree,
    tree_memory,
    wait_until,
    workdir,
)
from bench.stats import pct, ratio, spread

__all__ = [
    "Agent",
    "BenchError",
    "CG_ROOT",
    "Child",
    "CpuCap",
    "CpuWindow",
    "HARNESS",
    "KEY_FILE",
    "MB",
    "MDNS_PORT",
    "MachineCpu",
    "MemberChange",
    "NETNS_PREFIX",
    "Netns",
    "POLL_S",
    "ROOT",
    "STATE_KEYS",
    "agent_command",
    "assert_in_netns",
    "assert_loopback",
    "bench_env",
    "bench_key",
    "calibrate_spin",
    "cgroups_unusable",
    "first_change",
    "log",
    "member_changes",
    "member_view",
    "memory",
    "netns_unusable",
    "non_loopback_sockets",
    "parse_change",
    "pct",
    "ratio",
    "read_json",
    "signal_abruptly",
    "spawn",
    "spin",
    "spread",
    "start_agent",
    "start_capped_agent",
    "stop",
    "stop_all",
    "tree",
    "tree_memory",
    "wait_members",
    "wait_until",
    "where",
    "workdir",
]


# -- CPU-bound task bodies, calibrated (hetero, scale) ----------------------------------------

def spin(n: int) -> dict[str, Any]:
    """`n` iterations of a pure-Python loop (busy work that holds one core and the GIL), as a
    task body: returns where it ran (the worker's MESH_AGENT_NAME) and its own wall and CPU
    seconds, so a scenario sees each agent's real per-slot speed."""
    t0, c0 = time.perf_counter(), time.process_time()
    x = 0
    for i in range(n):
        x = (x + i * i) % 1_000_003
    return {"agent": os.environ.get("MESH_AGENT_NAME", "?"), "wall": time.perf_counter() - t0,
            "cpu": time.process_time() - c0, "x": x}


def where() -> str:
    """A no-op task body that says where it ran (the worker's MESH_AGENT_NAME)."""
    return os.environ.get("MESH_AGENT_NAME", "?")


def calibrate_spin(target_s: float, tries: int = 5) -> tuple[int, float]:
    """Iterations of `spin` that take `target_s` on one core of this machine, in this process,
    and the measured seconds for that many (best of `tries`: other load only ever slows it)."""
    n = 10_000
    while True:  # grow until one measurement is long enough to scale from
        t = spin(n)["cpu"]
        if t >= 0.02:
            break
        n *= 4
    per_iter = min(spin(n)["cpu"] / n for _ in range(tries))
    n = max(1, round(target_s / per_iter))
    return n, min(spin(n)["cpu"] for _ in range(tries))

