"""`mesh run SCRIPT.py`: a script's main runs on an agent as the main program of a
task graph; its tasks spread over the mesh."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mesh.client.client import Client
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]

SCRIPT = '''
from mesh import task, wait_on

@task(returns=1)
def square(x):
    return x * x

@task(returns=1)
def total(xs):
    return sum(xs)

def main(n=10):
    return wait_on(total([square(i) for i in range(n)]))
'''

SLOW = '''
import time
from mesh import task, wait_on

@task(returns=1)
def nap(i):
    time.sleep(0.3)
    return i

def main():
    return sum(wait_on([nap(i) for i in range(8)]))
'''

FAILING = '''
from mesh import task, wait_on

@task(returns=1, on_failure="FAIL")
def explode(x):
    raise ValueError(f"bad input {x}")

def main():
    return wait_on(explode(1))
'''


def test_run_a_script_on_the_mesh(agents, tmp_path):
    a = agents.start("run0", cpus=2)
    agents.start("run1", "--peer", a.comm, cpus=2)
    with Client(a.comm) as c:
        wait_for(lambda: c.query("status")["peers_alive"] == 1, 10, "the mesh")
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    res = run_cli("run", "--agent", a.comm, str(script), "50", timeout=90)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(sum(i * i for i in range(50)))
    summary = [line for line in res.stderr.splitlines() if line.startswith("calls run per agent:")]
    assert summary and "run0" in summary[0] and "run1" in summary[0], res.stderr

    graph = tmp_path / "graph.dot"
    res = run_cli("run", "--agent", a.comm, "--graph", str(graph), str(script), "20", timeout=90)
    assert res.returncode == 0, res.stderr
    dot = graph.read_text()
    nodes = [line for line in dot.splitlines() if "fillcolor=" in line and "agent:" not in line]
    edges = [line for line in dot.splitlines() if "->" in line]
    assert len(nodes) == 21 and len(edges) == 20  # 20 squares into one total
    assert 'tooltip="total on run' in dot
    if shutil.which("dot"):  # .ci/run installs Graphviz
        svg = subprocess.run(["dot", "-Tsvg", str(graph)], capture_output=True, text=True, timeout=30)
        assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr

    slow = tmp_path / "slow.py"
    slow.write_text(SLOW)
    res = run_cli("run", "--agent", a.comm, str(slow), timeout=90)
    assert res.returncode == 0 and res.stdout.strip() == "28", res.stderr
    progress = [line for line in res.stderr.splitlines() if "tasks done" in line]
    if progress:  # the main program ran on --agent: the bar counts its graph's tasks
        assert progress[-1].split("]")[1].split()[0].endswith("/8"), res.stderr
    else:  # it was placed on the peer (both slots taken here): what --agent sees instead
        assert any("finished here or through here" in line for line in res.stderr.splitlines()), res.stderr

    bad = tmp_path / "bad.py"
    bad.write_text(FAILING)
    res = run_cli("run", "--agent", a.comm, str(bad), timeout=90)
    assert res.returncode == 1 and "ValueError" in res.stderr and "bad input 1" in res.stderr
    nomain = tmp_path / "nomain.py"
    nomain.write_text("x = 1\n")
    res = run_cli("run", "--agent", a.comm, str(nomain), timeout=60)
    assert res.returncode == 1 and "main()" in res.stderr
    assert run_cli("run", "--agent", a.comm, str(tmp_path / "missing.py")).returncode == 2
