"""Real agents as separate processes on 127.0.0.1: discovery, calls, delegation,
errors, graceful leave."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


def peers_of(agent) -> list[dict]:
    res = run_cli("peers", "--agent", agent.comm, "--json", timeout=15)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def alive_names(agent) -> set[str]:
    return {p["name"] for p in peers_of(agent) if p["state"] == "alive"}


def all_see_each_other(group) -> bool:
    names = {a.name for a in group}
    return all(alive_names(a) == names - {a.name} for a in group)


def test_three_agents_find_each_other_by_mdns(agents):
    group = [agents.start(f"md{i}", mdns=True, wait=False) for i in range(3)]
    for a in group:
        agents.wait_ready(a)
    t0 = time.monotonic()
    wait_for(lambda: all_see_each_other(group), 10, "mDNS discovery")
    print(f"discovery {time.monotonic() - t0:.2f} s after ready")  # (measured, not asserted)
    for a in group:
        assert "announcing" in a.log() or "mDNS" in a.log()
    entry = next(p for p in peers_of(group[0]) if p["name"] == "md1")
    assert entry["id"] == group[1].id and entry["address"] == group[1].comm
    assert set(entry) >= {"id", "name", "address", "state", "rtt_ms", "cpus", "load", "incarnation"}


def test_three_agents_with_one_seed_and_no_mdns(agents):
    a = agents.start("s0")
    b = agents.start("s1", "--peer", a.comm)
    c = agents.start("s2", env={"MESH_PEERS": a.comm})
    group = [a, b, c]
    wait_for(lambda: all_see_each_other(group), 3, "seed + gossip discovery")
    rtts = [p["rtt_ms"] for p in peers_of(a)]
    wait_for(lambda: all(p["rtt_ms"] is not None for p in peers_of(a)), 5, "RTTs measured")
    assert all(r is None or r >= 0 for r in rtts)


def test_call_prints_result(agents):
    a = agents.start("c0")
    res = run_cli("call", "--agent", a.comm, "operator:add", "2", "3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "5"
    res = run_cli("call", "--agent", a.comm, "--json", "builtins:sorted", "[3, 1, 2]")
    assert res.returncode == 0 and json.loads(res.stdout) == [1, 2, 3]
    res = run_cli("call", "--agent", a.comm, "builtins:str", "hello")
    assert res.stdout.strip() == "hello"


def test_call_on_agent_without_slots_runs_elsewhere(agents):
    worker = agents.start("w1", cpus=1)
    front = agents.start("front", "--peer", worker.comm, cpus=0)
    wait_for(lambda: alive_names(front) == {"w1"}, 5, "front to see w1")
    res = run_cli("call", "--agent", front.comm, "--json", "mesh.demo_tasks:where", "4", "0")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["square"] == 16 and out["agent"] == "w1"
    status = json.loads(run_cli("status", "--agent", front.comm, "--json").stdout)
    assert status["forwarded"] == 1 and status["cpus"]["total"] == 0


def test_raising_function_exits_1_with_remote_traceback(agents):
    a = agents.start("e0")
    res = run_cli("call", "--agent", a.comm, "operator:truediv", "1", "0")
    assert res.returncode == 1
    assert "ZeroDivisionError" in res.stderr
    assert "Traceback" in res.stderr and "e0" in res.stderr
    res = run_cli("call", "--agent", a.comm, "no_such_module_xyz:f")
    assert res.returncode == 1 and "ModuleNotFoundError" in res.stderr
    # the agent is still fine
    assert run_cli("call", "--agent", a.comm, "operator:mul", "6", "7").stdout.strip() == "42"


def test_python_client_submit_and_remote_exception(agents):
    import mesh

    a = agents.start("p0", cpus=2)
    with mesh.connect(a.comm) as client:
        futures = [client.submit(pow, i, 2) for i in range(20)]
        assert [f.result(30) for f in futures] == [i * i for i in range(20)]

        def boom(x):
            raise KeyError(f"missing {x}")

        fut = client.submit(boom, "k")
        with pytest.raises(KeyError) as info:
            fut.result(30)
        assert "Traceback on agent p0" in str(info.value.__cause__)
        assert "boom" in str(info.value.__cause__)


def test_worker_crash_fails_the_call_not_the_agent(agents):
    import mesh

    a = agents.start("k0")
    with mesh.connect(a.comm) as client:
        import os

        fut = client.submit(os._exit, 9)
        with pytest.raises(mesh.RemoteError) as info:
            fut.result(30)
        assert info.value.type_name == "WorkerDied"
        assert client.submit(abs, -3).result(30) == 3


def test_status_and_usage_errors(agents):
    a = agents.start("st0", cpus=2)
    res = run_cli("status", "--agent", a.comm, "--json")
    body = json.loads(res.stdout)
    assert body["name"] == "st0" and body["cpus"]["total"] == 2 and body["cpus"]["free"] == 2
    assert 0 < body["cpus"]["speed"] <= 1  # (below 1 only under a CPU quota)
    assert {"uptime_s", "queued", "running", "done", "failed", "peers_alive"} <= set(body)
    text = run_cli("status", "--agent", a.comm)
    assert text.returncode == 0 and "st0" in text.stdout
    assert run_cli("call", "--agent", a.comm, "nocolon").returncode == 2
    assert run_cli("join", "--no-such-option").returncode == 2
    assert run_cli("status", "--agent", "not-an-address").returncode == 2


def test_unreachable_agent_exits_3():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = run_cli("call", "--agent", f"127.0.0.1:{port}", "--timeout", "1", "operator:add", "1", "2")
    assert res.returncode == 3 and "no answer" in res.stderr
    assert run_cli("peers", "--agent", f"127.0.0.1:{port}", "--timeout", "1").returncode == 3


def test_graceful_leave_is_seen_as_left(agents):
    a = agents.start("g0")
    b = agents.start("g1", "--peer", a.comm)
    wait_for(lambda: alive_names(a) == {"g1"}, 5, "a to see b")
    assert b.stop(signal.SIGINT) == 0
    wait_for(lambda: {p["name"]: p["state"] for p in peers_of(a)}.get("g1") == "left", 5,
             "b to be seen as left")
    assert "left the mesh" in b.log()


def test_killed_peer_is_declared_dead_and_its_call_reassigned(agents):
    import mesh

    a = agents.start("r0", "--profile", "fast", cpus=0)
    b = agents.start("r1", "--peer", a.comm, "--profile", "fast", cpus=1)
    wait_for(lambda: alive_names(a) == {"r1"}, 5, "a to see b")
    with mesh.connect(a.comm) as client:
        fut = client.call("mesh.demo_tasks:where", (1, 6.0))  # still running when b is killed
        wait_for(lambda: json.loads(run_cli("status", "--agent", b.comm, "--json").stdout)["running"] == 1,
                 10, "the call to run on b")
        agents.start("r2", "--peer", a.comm, "--profile", "fast", cpus=1)
        wait_for(lambda: alive_names(a) == {"r1", "r2"}, 5, "a to see c")
        b.stop(signal.SIGKILL)
        wait_for(lambda: {p["name"]: p["state"] for p in peers_of(a)}.get("r1") == "dead", 5,
                 "b to be declared dead")
        result = fut.result(30)  # reassigned to c, which runs it in full
        assert result["agent"] == "r2" and result["square"] == 1
    assert "peer r1 lost: re-placed 1 call(s), 0 answered to their origin directly, 0 cancelled; " \
        "actions: cancel r1, to r2" in a.log()  # one INFO line an operator can read


def test_leave_waits_for_running_calls_and_a_second_sigint_exits_at_once(agents):
    import mesh

    a = agents.start("slow")
    with mesh.connect(a.comm) as client:
        client.call("mesh.demo_tasks:where", (1, 60.0))
        wait_for(lambda: json.loads(run_cli("status", "--agent", a.comm, "--json").stdout)["running"] == 1,
                 10, "the call to run")
        a.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "leaving" in a.log(), 10, "the agent to start leaving")
        assert a.alive()  # still finishing its call
        assert client.submit(abs, -1).exception(10) is not None  # no new calls while leaving
        a.proc.send_signal(signal.SIGINT)
        assert a.proc.wait(5) == 130


def test_emulated_delay_shows_in_measured_round_trips(agents):
    a = agents.start("d0", env={"MESH_EMULATE_DELAY": '{"d1": 25}'})
    b = agents.start("d1", "--peer", a.comm, env={"MESH_EMULATE_DELAY": '{"d0": 25}'})
    c = agents.start("d2", "--peer", a.comm)

    def rtts():
        got = {p["name"]: p["rtt_ms"] for p in peers_of(a)}
        return got if got.get("d1") and got.get("d2") else None

    got = wait_for(rtts, 15, "round trips to be measured")
    assert 45 <= got["d1"] <= 150, got  # 2 x 25 ms, plus scheduling
    assert got["d2"] < 20, got
    assert b.alive() and c.alive()


@pytest.mark.timeout(120)
def test_the_readmes_demo_runs_and_stops_cleanly():
    """The README's first command (after the install): three agents on 127.0.0.1, twelve
    calls spread over them through demo-1's local socket, a clean stop."""
    res = run_cli("demo", timeout=100)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "through its local socket" in res.stdout
    counts = re.search(r"calls per agent: demo-1 (\d+), demo-2 (\d+), demo-3 (\d+)", res.stdout)
    assert counts and sum(map(int, counts.groups())) == 12, res.stdout
    assert "stopped 3 agent(s)" in res.stdout
