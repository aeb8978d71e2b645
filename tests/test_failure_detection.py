"""Failure detection with real agents: kill -9, SIGSTOP/SIGCONT, and busy agents
that must never be declared dead."""

from __future__ import annotations

import json
import re
import signal

import pytest

import mesh
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.agents, pytest.mark.timeout(120)]


def states(agent) -> dict[str, dict]:
    with mesh.connect(agent.comm, timeout=10) as client:
        return {p["name"]: p for p in client.query("peers", timeout=10)}


def state_of(agent, name: str) -> str | None:
    entry = states(agent).get(name)
    return None if entry is None else entry["state"]


def start_mesh(agents, n: int, *args, cpus: int = 1, prefix: str = "n"):
    first = agents.start(f"{prefix}0", *args, cpus=cpus)
    group = [first] + [agents.start(f"{prefix}{i}", "--peer", first.comm, *args, cpus=cpus)
                       for i in range(1, n)]
    names = {a.name for a in group}
    wait_for(lambda: all({k for k, v in states(a).items() if v["state"] == "alive"} == names - {a.name}
                         for a in group), 10, "the mesh to form")
    return group


def test_kill_9_is_detected_by_every_survivor(agents):
    group = start_mesh(agents, 4, "--profile", "fast", prefix="k")
    victim = group[2]
    victim.stop(signal.SIGKILL)
    survivors = [a for a in group if a is not victim]
    wait_for(lambda: all(state_of(a, victim.name) == "dead" for a in survivors), 10,
             "every survivor to declare the victim dead")
    for a in survivors:
        assert re.search(rf"peer {victim.name} \(\w+\): (alive|suspect) -> (suspect|dead)", a.log())


def test_frozen_agent_is_declared_dead_then_rejoins_with_higher_incarnation(agents):
    group = start_mesh(agents, 3, "--profile", "fast", prefix="f")
    frozen, observer = group[1], group[0]
    before = states(observer)[frozen.name]["incarnation"]
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: all(state_of(a, frozen.name) == "dead" for a in group if a is not frozen), 10,
                 "the frozen agent to be declared dead")
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: all(state_of(a, frozen.name) == "alive" for a in group if a is not frozen), 10,
             "the thawed agent to be alive again everywhere")
    assert all(states(a)[frozen.name]["incarnation"] > before for a in group if a is not frozen)
    # and it sees the others alive too
    wait_for(lambda: {k for k, v in states(frozen).items() if v["state"] == "alive"}
             == {a.name for a in group} - {frozen.name}, 10, "the thawed agent to see everyone")


def test_agents_busy_on_every_slot_are_never_declared_dead(agents):
    group = start_mesh(agents, 4, cpus=2, prefix="b")
    futures, clients = [], []
    try:
        for a in group:
            client = mesh.connect(a.comm, timeout=10)
            clients.append(client)
            futures += [client.call("mesh.demo_tasks:where", (i, 8.0)) for i in range(2)]
        wait_for(lambda: all(json.loads(run_cli("status", "--agent", a.comm, "--json").stdout)["running"] == 2
                             for a in group), 20, "every slot to be busy")
        results = [f.result(60) for f in futures]
    finally:
        for c in clients:
            c.close()
    assert len(results) == 8
    for a in group:
        assert "-> dead" not in a.log(), a.log()
        for p in states(a).values():
            assert p["state"] == "alive", p
