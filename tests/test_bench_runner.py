"""The benchmark runner's command line (no agent needed) and its process helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "bench" / "run.py")]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.timeout(90)
def test_list_names_scenarios_with_descriptions():
    proc = _run("--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    names = {line.split()[0] for line in lines}
    assert "footprint" in names
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every one has a description


@pytest.mark.timeout(90)
def test_unknown_scenario_exits_2_with_a_clear_message():
    proc = _run("no-such-scenario")
    assert proc.returncode == 2
    assert "unknown scenario 'no-such-scenario'" in proc.stderr
    assert "footprint" in proc.stderr  # tells what is available


@pytest.mark.timeout(90)
def test_missing_name_is_a_usage_error():
    assert _run().returncode == 2


@pytest.mark.timeout(60)
def test_stop_and_measure_a_process_tree(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from bench import common
    finally:
        sys.path.remove(str(ROOT))
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "time.sleep(60)")
    child = common.spawn("sleeper", [sys.executable, "-c", code], tmp_path)
    try:
        common.wait_until(lambda: len(common.tree(child.pid)) == 2, 20, "the grandchild", child)
        mem = common.tree_memory(child.pid)
        assert mem["total_rss_mb"] > 0 and len(mem["children"]) == 1
        assert common.non_loopback_sockets(child.pid) == []
        window = common.CpuWindow({"sleeper": child.pid})
        assert window.finish()["sleeper"] >= 0
    finally:
        stopped = common.stop(child, timeout=5)
    # SIGTERM ends the parent at once but nobody signals the grandchild: stop() must find it
    # still alive after the grace period, kill it and count it as an orphan.
    assert stopped["how"] == "graceful" and stopped["orphans"] == 1
    assert common.tree(child.pid) == []
