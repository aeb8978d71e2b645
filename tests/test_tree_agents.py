"""The latency tree with real agents: two "hotspots" and a "server" on loopback, with
emulated one-way delays (MESH_EMULATE_DELAY); the tree takes the expected shape,
repairs when a hotspot is killed, and re-roots when the root is killed."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.chaos, pytest.mark.timeout(150)]

# one-way delays in ms; unlisted pairs are far apart (FAR)
FAR = 45
NEAR = {
    ("hub1", "server"): 10, ("hub2", "server"): 10, ("hub1", "hub2"): 20,
    ("dev1a", "hub1"): 2, ("dev1b", "hub1"): 2, ("dev1a", "dev1b"): 3,
    ("dev2a", "hub2"): 2, ("dev2b", "hub2"): 2, ("dev2a", "dev2b"): 3,
}
CPUS = {"server": 3, "hub1": 2, "hub2": 2}  # capacity is the root election's score
NAMES = ["server", "hub1", "hub2", "dev1a", "dev1b", "dev2a", "dev2b"]
EXPECTED = {"hub1": "server", "hub2": "server", "dev1a": "hub1", "dev1b": "hub1",
            "dev2a": "hub2", "dev2b": "hub2"}


def delays_for(name: str) -> str:
    row = {}
    for other in NAMES:
        if other != name:
            row[other] = NEAR.get((name, other), NEAR.get((other, name), FAR))
    return json.dumps(row)


def tree_doc(agent) -> dict:
    """What `mesh tree --format json` prints, gathered in-process (fast enough to poll)."""
    from mesh.client.client import Client
    from mesh.faces.treeview import gather

    with Client(agent.comm, timeout=5) as client:
        return gather(lambda address: Client(address, timeout=1), client)


def wall_of_day() -> float:
    """Now, in the logs' clock (local time, seconds of the day)."""
    t = time.time()
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t % 1)


def log_time(agent, pattern: str) -> float | None:
    """Wall time (seconds of the day) of the last log line of ``agent`` matching ``pattern``."""
    found = None
    for line in agent.log().splitlines():
        if re.search(pattern, line):
            hms = line.split()[1]  # "HH:MM:SS,mmm"
            h, mi, rest = hms.split(":")
            found = int(h) * 3600 + int(mi) * 60 + float(rest.replace(",", "."))
    return found


def parents(doc: dict) -> dict[str, str | None]:
    names = {n["id"]: n["name"] for n in doc["nodes"]}
    return {n["name"]: names.get(n["parent"]) for n in doc["nodes"]}


def test_tree_shape_repair_and_reroot(agents):
    started = []
    for name in NAMES:
        args = ["--profile", "fast"]
        if started:
            args += ["--peer", started[0].comm]
        started.append(agents.start(name, *args, cpus=CPUS.get(name, 1), wait=not started,
                                    env={"MESH_EMULATE_DELAY": delays_for(name)}))
    for a in started:
        agents.wait_ready(a)
    by_name = {a.name: a for a in started}
    t0 = time.monotonic()

    def shaped():
        doc = tree_doc(by_name["hub1"])
        got = parents(doc)
        return doc if got == dict(EXPECTED, server=None) else None

    doc = wait_for(shaped, 20, "the tree to take the expected shape")
    took = time.monotonic() - t0
    assert doc["root"] == by_name["server"].id
    print(f"tree shaped {took:.1f} s after every agent was ready")
    cli = json.loads(run_cli("tree", "--agent", by_name["dev2b"].comm, "--format", "json").stdout)
    assert parents(cli) == dict(EXPECTED, server=None)
    text = run_cli("tree", "--agent", by_name["server"].comm)
    assert "server" in text.stdout and "(root)" in text.stdout
    dot = run_cli("tree", "--agent", by_name["server"].comm, "--format", "dot")
    assert dot.stdout.startswith("digraph") and "->" in dot.stdout
    if shutil.which("dot"):  # .ci/run installs Graphviz
        svg = subprocess.run(["dot", "-Tsvg"], input=dot.stdout, capture_output=True, text=True, timeout=30)
        assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr

    # kill -9 a hotspot: its devices re-parent (to the server or the other hub)
    killed = wall_of_day()
    by_name["hub1"].stop(signal.SIGKILL)
    t1 = time.monotonic()

    def repaired():
        got = parents(tree_doc(by_name["server"]))
        return got if got.get("dev1a") in ("server", "hub2", "dev1b") and \
            got.get("dev1b") in ("server", "hub2", "dev1a") and "hub1" not in got else None

    wait_for(repaired, 15, "the hotspot's devices to re-parent")
    print(f"re-parented (seen by polling) {time.monotonic() - t1:.1f} s after the kill")
    moved = [log_time(by_name[d], r"tree: parent hub1 -> ") for d in ("dev1a", "dev1b")]
    assert None not in moved
    print(f"both devices re-parented {max(moved) - killed:.2f} s after the kill (from their logs)")

    # kill -9 the root: a new root is elected and everyone agrees
    killed = wall_of_day()
    by_name["server"].stop(signal.SIGKILL)
    t2 = time.monotonic()
    survivors = [a for a in started if a.alive()]

    def agreed():
        roots = set()
        for a in survivors:
            doc = tree_doc(a)
            if doc["root"] is None or len(doc["nodes"]) != len(survivors):
                return None
            roots.add(doc["root"])
        return roots if len(roots) == 1 else None

    (root,) = wait_for(agreed, 20, "a new root everyone agrees on")
    assert root == by_name["hub2"].id  # the best remaining score
    print(f"re-rooted (seen by polling) {time.monotonic() - t2:.1f} s after the root's kill")
    rerooted = [log_time(a, r"tree: root .* -> hub2") for a in survivors if a.name != "hub2"]
    rerooted.append(log_time(by_name["hub2"], r"tree: root .* -> hub2 \(self\)"))
    assert None not in rerooted
    print(f"every survivor had the new root {max(rerooted) - killed:.2f} s after the root's kill "
          "(from their logs)")
