"""mesh.agent.cpuquota: the cgroup CPU quota, read from fake cgroup trees and for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.agent.cpuquota import quota_cores, slot_speed

pytestmark = pytest.mark.timeout(60)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_takes_the_tightest_level(tmp_path):
    write(tmp_path / "proc", "0::/outer/inner\n")
    fs = tmp_path / "fs"
    write(fs / "outer" / "cpu.max", "50000 100000\n")
    write(fs / "outer" / "inner" / "cpu.max", "max 100000\n")
    assert quota_cores(str(tmp_path / "proc"), str(fs)) == 0.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    write(tmp_path / "proc", "4:memory:/pi\n3:cpu,cpuacct:/pi\n0::/\n")
    fs = tmp_path / "fs"
    write(fs / "cpu,cpuacct" / "pi" / "cpu.cfs_quota_us", "25000\n")
    write(fs / "cpu,cpuacct" / "pi" / "cpu.cfs_period_us", "100000\n")
    write(fs / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    write(fs / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert quota_cores(str(tmp_path / "proc"), str(fs)) == 0.25
    write(fs / "cpu,cpuacct" / "pi" / "cpu.cfs_quota_us", "-1\n")
    assert quota_cores(str(tmp_path / "proc"), str(fs)) is None
    assert quota_cores(str(tmp_path / "missing"), str(fs)) is None
    write(tmp_path / "junk", "garbage\n::\n")
    assert quota_cores(str(tmp_path / "junk"), str(fs)) is None


def test_slot_speed():
    assert slot_speed(1, None, 2) == 1.0
    assert slot_speed(1, 0.25, 2) == 0.25
    assert slot_speed(2, 0.5, 2) == 0.25
    assert slot_speed(4, None, 2) == 0.5  # more slots than cores
    assert slot_speed(0, 0.25, 2) == 1.0


def test_a_process_in_a_capped_cgroup_sees_its_quota(tmp_path):
    harness = Path(__file__).resolve().parent.parent / "harness" / "cg_limit.sh"
    from bench.common import cgroups_unusable

    why = cgroups_unusable()
    if why:
        pytest.skip(why)
    name = f"quota{os.getpid()}"
    code = "from mesh.agent.cpuquota import quota_cores; print(quota_cores())"
    try:
        out = subprocess.run(["bash", str(harness), "run", name, "25", "256", "--", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "0.25", out.stdout
    finally:
        subprocess.run(["bash", str(harness), "rm", name], capture_output=True, timeout=30)


@pytest.mark.agents
def test_a_capped_agent_reports_its_slot_speed(tmp_path):
    import json
    import signal

    from bench.common import cgroups_unusable
    from mesh.client.client import Client
    from tests.conftest import mesh_cmd, wait_for

    why = cgroups_unusable()
    if why:
        pytest.skip(why)
    harness = Path(__file__).resolve().parent.parent / "harness" / "cg_limit.sh"
    name, state = f"speed{os.getpid()}", tmp_path / "pi.state.json"
    cmd = mesh_cmd("join", "--name", "pi", "--interface", "127.0.0.1", "--comm-port", "0",
                   "--rest-port", "-1", "--no-mdns", "--cpus", "1", "--state-file", str(state))
    with open(tmp_path / "pi.log", "w") as log:
        proc = subprocess.Popen(["bash", str(harness), "run", name, "25", "256", "--", *cmd],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        comm = wait_for(lambda: json.loads(state.read_text())["comm"], 20, "the capped agent")
        with Client(comm) as c:
            assert c.query("status")["cpus"]["speed"] == 0.25
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        subprocess.run(["bash", str(harness), "rm", name], capture_output=True, timeout=30)
