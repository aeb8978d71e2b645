"""Smoke tests of the `hetero` and `scale` benchmark scenarios (`bench/run.py NAME --quick`):
they run, stop what they start, and end with one JSON line of sane figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "bench" / "run.py")]

pytestmark = [pytest.mark.agents, pytest.mark.timeout(180)]


def _run_quick(name: str) -> dict:
    proc = subprocess.run([*RUN, name, "--quick"], capture_output=True, text=True, timeout=170,
                          cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and not result.get("error"), (result.get("error"), proc.stderr[-3000:])
    assert result["scenario"] == name and result["quick"] is True
    return result


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_hetero_quick_reports_makespan_ideal_and_tasks_per_agent():
    r = _run_quick("hetero")
    for key in ("makespan_s", "ideal_s", "ratio", "capacity_tasks_s", "calib_task_cpu_s"):
        assert _positive(r[key]), (key, r[key])
    assert r["ratio"] == pytest.approx(r["makespan_s"] / r["ideal_s"], abs=0.002)
    assert r["ideal_s"] < r["makespan_s"] * 5  # the ideal is a plausible bound, not a typo
    per_agent = r["tasks_per_agent"]
    assert sum(per_agent.values()) == r["n_tasks"] and "unknown_agents" not in r
    assert set(per_agent) == set(r["agents"]) == set(r["alone"])
    for a in r["alone"].values():
        assert _positive(a["capacity_tasks_s"])
        assert a["before"]["tasks"] > 0 and a["after"]["tasks"] > 0
    if "skipped" not in r:  # the capped agents were really capped and throttled
        assert set(r["agents"]) == {"hub", "box", "pi"}
        assert r["throttling"]["pi"]["quota_us"] == 25_000
        assert r["throttling"]["pi"]["nr_throttled"] > 0
    assert "cgroups_left" not in r and isinstance(r["noisy"], bool)
    assert set(r["stops"].values()) <= {"graceful", "already-exited"}


def test_scale_quick_reports_throughput_per_mesh_size():
    r = _run_quick("scale")
    assert set(r["by_size"]) == {"1", "2", "4", "8"}
    for kind in ("noop", "cpu"):
        for size, tps in r[f"{kind}_tasks_s"].items():
            assert _positive(tps), (kind, size, tps)
            assert _positive(r[f"{kind}_ratio_to_1"][size])
        assert r[f"{kind}_ratio_to_1"]["1"] == 1.0
    for size, row in r["by_size"].items():
        assert set(row["noop_per_agent"]) == {f"s{i}" for i in range(1, int(size) + 1)}
        assert sum(row["noop_per_agent"].values()) == r["n_noop"] * r["rounds"]
        assert sum(row["cpu_per_agent"].values()) == r["n_cpu"] * r["rounds"]
    assert "CPU is the limit" in r["note"] and isinstance(r["noisy"], bool)
    assert set(r["stops"]) <= {"graceful", "already-exited"}
