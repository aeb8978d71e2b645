"""Smoke test of the `locality` benchmark scenario (`bench/run.py locality --quick`): it runs
the data-heavy pipeline on a mesh keeping big outputs where they were made, on the same mesh
with `MESH_INLINE_MAX=0` and on Dask, gets the right digests everywhere, stops what it
started, and ends with one JSON line in which the program's agent received far fewer bytes
with data locality than with every output inline."""

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


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_locality_quick_moves_fewer_bytes_through_the_program_agent():
    proc = subprocess.run([*RUN, "locality", "--quick"], capture_output=True, text=True,
                          timeout=170, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    r = json.loads(lines[-1])
    assert proc.returncode == 0 and not r.get("error"), (r.get("error"), proc.stderr[-3000:])
    assert r["scenario"] == "locality" and r["quick"] is True
    assert r["digests_ok"] is True  # every system's digests matched the local computation

    with_dask = "dask_makespan_s" in r  # (Dask is the '.[bench]' extra; CI runs without it)
    assert with_dask or "not installed" in r["dask"]
    for name in ("locality", "inline", "dask") if with_dask else ("locality", "inline"):
        assert _positive(r[f"{name}_makespan_s"]), name
        assert len(r[f"{name}_makespan_s_runs"]) == r["rounds"]
    assert r["ratio_locality_over_inline"] == pytest.approx(
        r["locality_makespan_s"] / r["inline_makespan_s"], abs=0.002)
    if with_dask:
        assert r["ratio_locality_over_dask"] == pytest.approx(
            r["locality_makespan_s"] / r["dask_makespan_s"], abs=0.002)

    loc, inl = r["locality"], r["inline"]
    data = r["data_bytes_per_round"]
    assert data == r["chains"] * r["stages"] * r["object_bytes"]
    # the feature was on in one mesh and off in the other
    assert loc["objects_per_round"]["put"] == r["chains"] * r["stages"]
    assert loc["objects_per_round"]["put_bytes"] >= data
    assert inl["objects_per_round"]["put"] == 0 and inl["objects_per_round"]["fetched_bytes"] == 0
    # every read of a kept output was local or fetched from its holder
    reads = r["chains"] * r["stages"]
    o = loc["objects_per_round"]
    assert o["local_reads"] + o["worker_hits"] + o["fetched"] + o["cache_hits"] == reads, o
    assert o["served_bytes"] == o["fetched_bytes"] and o["lost"] == 0
    # inline, every output reached the program's agent (and went out again in its reader's call);
    # with locality, the data never came through it
    assert inl["program_bytes_in_per_round"] >= data
    assert loc["program_bytes_in_per_round"] < inl["program_bytes_in_per_round"]
    assert loc["program_bytes_in_per_round"] < data / 10
    assert set(r["stops"].values()) <= {"graceful", "already-exited"}
