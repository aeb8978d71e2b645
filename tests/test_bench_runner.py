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


def test_agent_command_security_mdns_and_rest_options(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from bench import common
    finally:
        sys.path.remove(str(ROOT))
    key_file, key = common.bench_key(tmp_path)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert common.bench_key(tmp_path)[1] == key  # one mesh key per workdir
    state = tmp_path / "s.json"
    base = common.agent_command(state, key_file=key_file)
    assert base[base.index("--key-file") + 1] == str(key_file) and "--insecure" not in base
    assert "--no-mdns" in base and base[base.index("--rest-port") + 1] == "-1"
    assert base[base.index("--interface") + 1] == "127.0.0.1"
    default = common.agent_command(state, key_file=key_file, mdns=True, rest=True)
    assert "--no-mdns" not in default and default[default.index("--rest-port") + 1] == "0"
    plain = common.agent_command(state, key_file=None)
    assert "--insecure" in plain and "--key-file" not in plain


@pytest.mark.timeout(90)
def test_curve_scenario_is_listed():
    proc = _run("--list")
    assert proc.returncode == 0, proc.stderr
    assert "curve" in {line.split()[0] for line in proc.stdout.strip().splitlines()}


def _bench():
    sys.path.insert(0, str(ROOT))
    try:
        from bench import common, fleet
        from bench.scenarios import detect
    finally:
        sys.path.remove(str(ROOT))
    return common, fleet, detect


@pytest.mark.timeout(90)
def test_membership_scenarios_are_listed():
    proc = _run("--list")
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.strip().splitlines()}
    assert {"detect", "busy", "freeze"} <= names


@pytest.mark.timeout(90)
def test_scenario_options_are_passed_through_and_checked():
    proc = _run("detect", "--help-options")
    assert proc.returncode == 0, proc.stderr
    assert "--mode" in proc.stdout and "--profile" in proc.stdout and "silent" in proc.stdout
    bad = _run("detect", "--mode", "gentle")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert _run("footprint", "--mode", "kill").returncode == 2  # footprint has no such option


def test_member_change_lines_are_parsed():
    common, _, _ = _bench()
    lines = [
        "2024-05-01 10:00:00,123 INFO mesh.agent.agent: peer s2g1 (abcdef01) joined",
        "2024-05-01 10:00:01,500 INFO mesh.agent.agent: peer s2g1 (abcdef01): alive -> suspect (incarnation 0)",
        "2024-05-01 10:00:02,750 INFO mesh.agent.agent: peer s2g1 (abcdef01): suspect -> dead (incarnation 0)",
        "2024-05-01 10:00:02,800 INFO mesh.agent.agent: something else entirely",
    ]
    changes = [c for c in map(common.parse_change, lines) if c is not None]
    assert [(c.old, c.new) for c in changes] == [("new", "alive"), ("alive", "suspect"), ("suspect", "dead")]
    assert changes[2].incarnation == 0 and changes[0].incarnation is None
    assert abs((changes[2].t - changes[0].t) - 2.627) < 1e-6
    assert common.member_view(changes) == {"abcdef01": "dead"}
    assert common.first_change(changes, "abcdef01", "dead", since=changes[1].t).t == changes[2].t
    assert common.first_change(changes, "abcdef01", "dead", since=changes[2].t + 1) is None


def test_percentiles_victim_order_and_tally():
    import random

    common, fleet, _ = _bench()
    assert common.pct([], 95) is None
    s = common.spread([float(i) for i in range(1, 21)])
    assert (s["n"], s["p50"], s["p95"], s["max"]) == (20, 10.0, 19.0, 20.0)
    order = fleet.victim_order(random.Random(1), 6, 20)
    assert len(order) == 20 and set(order[:6]) == set(range(1, 7))  # every slot, the seed too
    assert all(a != b for a, b in zip(order, order[1:], strict=False))
    C = common.MemberChange
    logs = {"a": [C(0, "v", "v1", "alive", "suspect", 0), C(1, "v", "v1", "suspect", "dead", 0),
                  C(2, "b", "b1", "alive", "suspect", 0), C(3, "b", "b1", "suspect", "alive", 1)]}
    t = fleet.tally(logs, {"v1"})
    assert t["victim_suspicions"] == 1 and t["victim_deaths"] == 1
    assert t["false_suspicions"] == 1 and t["refutations_seen"] == 1 and t["false_deaths"] == 0


def test_detect_silent_mode_reports_why_it_is_skipped(monkeypatch):
    _, _, detect = _bench()
    monkeypatch.setattr(detect, "netns_unusable", lambda: "network namespaces need root")
    res = detect.run(quick=True, mode="silent", profile="fast")
    assert res["series"]["silent/fast"] == {"skipped": "network namespaces need root"}
    assert "error" not in res and res["all_targets_met"] is False


def test_agents_outside_namespaces_stay_on_loopback(tmp_path):
    common, _, _ = _bench()
    with pytest.raises(common.BenchError, match="network safety"):
        common.start_agent(tmp_path, interface="10.213.0.11")
    with pytest.raises(common.BenchError, match="network safety"):
        common.start_agent(tmp_path, interface="10.213.0.11", netns="default")
    cmd = common.agent_command(tmp_path / "s.json", interface="10.213.0.12", netns="mt_h2")
    assert cmd[:4] == ["ip", "netns", "exec", "mt_h2"]
    assert cmd[cmd.index("--interface") + 1] == "10.213.0.12"


@pytest.mark.timeout(90)
def test_tasks_scenario_is_listed():
    proc = _run("--list")
    assert proc.returncode == 0, proc.stderr
    assert "tasks" in {line.split()[0] for line in proc.stdout.strip().splitlines()}


@pytest.mark.agents
@pytest.mark.timeout(180)
def test_hotpath_scenario_reports_cpu_per_call_by_process_and_thread():
    import json

    proc = subprocess.run([*RUN, "hotpath", "--quick"], capture_output=True, text=True,
                          timeout=170, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["scenario"] == "hotpath" and res["agent_stop"] == "graceful"
    for kind in ("rtt", "task"):
        r = res[kind]["median_round"]
        assert r["calls_per_s"] > 0 and r["per_call_us"] > 0
        assert {"program", "agent", "worker0"} <= set(r["cpu_us"]), r["cpu_us"]
        assert r["cpu_total_us"] > 0 and r["cpu_us"]["agent"] > 0
        assert any(k.startswith("program/") for k in r["thread_cpu_us"]), r["thread_cpu_us"]
    assert "hotpath: CPU per call" in proc.stdout


@pytest.mark.timeout(60)
def test_stop_all_sends_one_sigterm_so_a_graceful_leave_can_finish(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from bench import common
    finally:
        sys.path.remove(str(ROOT))
    ready = tmp_path / "ready"
    # like an agent: the first SIGTERM starts a graceful leave, a second one ends it at once
    code = ("import signal, sys, time\n"
            "def leave(*_):\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
            "    time.sleep(0.5)\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, leave)\n"
            f"open({str(ready)!r}, 'w').close()\n"
            "time.sleep(60)\n")
    child = common.spawn("leaver", [sys.executable, "-c", code], tmp_path)
    common.wait_until(ready.exists, 20, "the child's SIGTERM handler", child)
    common.stop_all([child], timeout=10)
    assert child.stopped["how"] == "graceful" and child.stopped["returncode"] == 0, child.stopped


# -- fuzz (issue 15: hostile input at scale) -----------------------------------------------------

FUZZ_ARGS = ("fuzz", "--quick", "--seed", "1", "--frames", "2000", "--requests", "200", "--flood", "16",
             "--triage-s", "0")


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    """`bench/run.py fuzz --quick` with small counts, in a network namespace of its own (the
    scenario makes the agent dial addresses taken from garbage: it runs only where there is
    nothing but loopback). Seed 1: the same frames and requests every time."""
    import json
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip (a private network namespace)")
    run_dir = tmp_path_factory.mktemp("fuzz")
    cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *RUN, *FUZZ_ARGS,
           "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.agents
@pytest.mark.timeout(110)
def test_fuzz_quick_agent_answers_throughout_and_every_rejection_is_counted(fuzz_run):
    proc, res = fuzz_run
    assert proc.returncode == 0 and not res.get("error"), proc.stderr[-3000:]
    assert res["scenario"] == "fuzz" and res["seed"] == 1
    assert res["frames_sent"] >= 2000 and res["http_sent"] == 200
    assert set(res["frames_by_channel"]) == {"member", "client", "tagged", "local", "reply"}
    assert res["agent_alive"] is True and res["agent_stop"] == "graceful"
    assert res["status_checks"] >= 4 and res["status_failures"] == 0
    # every frame sent is explained by the agent's counters, by reason
    assert sum(res["dropped_delta"].values()) > 1000, res["dropped_delta"]
    assert res["unexplained"] == {} and res["lost_in_crashes"] == 0, res["lives"]
    # every REST refusal too, and every answer is the one the server's own parsing predicts
    assert sum(res["rest_refused_delta"].values()) > 0
    assert res["rest_refused_unexplained"] == {}, res["rest_refused_delta"]
    assert res["http_answer_mismatches"] == {}, res["http_answer_mismatch_examples"]
    assert res["rss_mb"]["max"] > 0 and res["rss_max_mb"] >= res["rss_mb"]["max"]
    assert "fuzz (seed 1, quick)" in proc.stdout


@pytest.mark.agents
@pytest.mark.timeout(110)
def test_fuzz_quick_agent_never_dies(fuzz_run):
    _, res = fuzz_run
    assert res["agent_deaths"] == 0, [e for e in res["errors"] if e["fatal"]]


@pytest.mark.agents
@pytest.mark.timeout(110)
@pytest.mark.xfail(strict=True, reason="REST threads raise: RecursionError on deeply nested JSON "
                   "(mesh/faces/rest.py:226), BrokenPipeError when a client hangs up before its answer "
                   "(mesh/faces/rest.py:250); and the agent's codec ones: tests/test_fuzz_findings.py")
def test_fuzz_quick_finds_no_error_in_the_agents_log(fuzz_run):
    _, res = fuzz_run
    assert res["distinct_errors"] == 0, res["errors"]


def test_fuzz_refuses_to_run_outside_a_loopback_only_namespace(monkeypatch):
    import socket

    sys.path.insert(0, str(ROOT))
    try:
        from bench.scenarios import fuzz
    finally:
        sys.path.remove(str(ROOT))
    Addr = type("Addr", (), {})

    def addr(family, address):
        a = Addr()
        a.family, a.address = family, address
        return a

    monkeypatch.setattr(fuzz.psutil, "net_if_addrs",
                        lambda: {"lo": [addr(socket.AF_INET, "127.0.0.1")], "eth0": [addr(socket.AF_INET, "10.0.0.5")]})
    with pytest.raises(fuzz.BenchError, match="network safety.*eth0"):
        fuzz.run(quick=True)
    monkeypatch.setattr(fuzz.psutil, "net_if_addrs", lambda: {"lo": [addr(socket.AF_INET, "127.0.0.1"),
                                                                     addr(socket.AF_INET6, "::1")]})
    assert fuzz._isolated() is None
