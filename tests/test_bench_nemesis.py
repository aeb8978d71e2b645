"""The nemesis benchmark (`python bench/run.py nemesis`): its checker on synthetic histories
(each kind of anomaly must be found), its model, its fault schedule, and a short run through
the runner on namespace hosts (skipped, with the reason, where the harness cannot run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import nemesis_model as model
from bench.nemesis_check import DOCUMENTED, check
from bench.nemesis_faults import MAX_ACTIVE, SECONDS, TAIL_S, schedule
from bench.netns import LOCK_PATH, netns_unusable

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "bench" / "run.py")]


# -- the checker, on synthetic histories ---------------------------------------------------

def sub(cid, op="noop", args=(7,), t=10.0, p="P1", via="task"):
    return {"ev": "submit", "p": p, "cid": cid, "t": t, "op": op, "args": list(args), "via": via}


def ok(cid, value, t=11.0, p="P1"):
    return {"ev": "outcome", "p": p, "cid": cid, "t": t, "ok": True, "value": model.value_digest(value)}


def err(cid, kind, t=11.0, p="P1"):
    return {"ev": "outcome", "p": p, "cid": cid, "t": t, "ok": False, "kind": kind, "msg": "x"}


def ex(cid, t=10.5, agent="h1g1"):
    return {"ev": "exec", "cid": cid, "agent": agent, "pid": 1, "t": t}


def clean_history():
    """A graph that went right: noop -> cpu -> add, a boom and its reader, a big output and
    its digest, a slow task that timed out as it should, and a direct call."""
    big = model.big_value(5, 3000)
    return [
        sub("a", "noop", [3]), ex("a"), ok("a", 3),
        sub("b", "cpu", [{"ref": "a"}]), ex("b"), ok("b", model.cpu_value(3)),
        sub("c", "add", [{"ref": "a"}, {"ref": "b"}]), ex("c"), ok("c", model.add_value(3, model.cpu_value(3))),
        sub("e", "boom", [1]), ex("e"), err("e", "NemesisBoom"),
        sub("f", "after", [{"ref": "e"}]), err("f", "TaskCancelled"),
        sub("k", "big", [5, 3000]), ex("k"), ok("k", big),
        sub("g", "digest", [{"ref": "k"}]), ex("g"), ok("g", model.digest_value(big)),
        sub("n", "nested", [2, 3]), ex("n"), ex("n.0"), ex("n.1"), ex("n.2"), ok("n", model.nested_value(2, 3)),
        sub("s", "slow", [4, 3.0, 1.0]), ex("s"), err("s", "TaskTimedOut"),
        sub("d", "boom", [9], via="submit"), ex("d"), err("d", "RemoteError:NemesisBoom"),
    ]


def test_a_clean_history_is_all_ok():
    c = check(clean_history())["counts"]
    assert c["submitted"] == 10 and c["ok"] == 10, c
    assert c["failed_total"] == c["lost"] == c["hung"] == c["duplicated"] == 0
    assert c["extra_executions"] == {} and c["phantom_executions"] == 0


def test_a_lost_call_is_found():
    h = [r for r in clean_history() if not (r["ev"] == "outcome" and r["cid"] == "b")]
    v = check(h)
    assert v["counts"]["lost"] == 1 and v["counts"]["ok"] == 9
    assert [a["cid"] for a in v["anomalies"] if a["what"] == "lost"] == ["b"]


def test_a_duplicated_outcome_is_found():
    v = check(clean_history() + [ok("c", 1, t=12.0)])
    assert v["counts"]["duplicated"] == 1
    dup = [a for a in v["anomalies"] if a["what"] == "duplicated"]
    assert dup[0]["cid"] == "c" and len(dup[0]["outcomes"]) == 2


def test_a_wrong_value_is_found():
    h = [r for r in clean_history() if not (r["ev"] == "outcome" and r["cid"] == "c")]
    v = check(h + [ok("c", 12345)])
    c = v["counts"]
    assert c["wrong_values"] == 1 and c["failed"] == {"wrong_value": 1} and c["ok"] == 9
    # a value where the model expects the task's own exception is wrong too
    h = [r for r in clean_history() if not (r["ev"] == "outcome" and r["cid"] == "e")]
    assert check(h + [ok("e", 1)])["counts"]["wrong_values"] == 1


def test_an_undocumented_error_is_unexpected_and_a_documented_one_is_a_failure():
    h = [r for r in clean_history() if not (r["ev"] == "outcome" and r["cid"] in ("a", "b"))]
    v = check(h + [err("a", "KeyError"), err("b", "RemoteError:PeerLost")])
    c = v["counts"]
    assert c["unexpected"] == 1 and c["failed"] == {"unexpected:KeyError": 1, "RemoteError:PeerLost": 1}
    assert "RemoteError:PeerLost" in DOCUMENTED and c["failed_total"] == 2
    # the task's own exception on a task that must not raise is not the model's outcome
    h = [r for r in clean_history() if not (r["ev"] == "outcome" and r["cid"] == "a")]
    assert check(h + [err("a", "NemesisBoom")])["counts"]["unexpected"] == 1


def test_hung_calls_and_late_answers():
    h = [r for r in clean_history() if not (r["ev"] == "outcome" and r["cid"] == "a")]
    h += [{"ev": "hung", "p": "P1", "cid": "a", "t": 50.0}, ok("a", 3, t=60.0)]
    c = check(h)["counts"]
    assert c["hung"] == 1 and c["late_after_hung"] == 1 and c["ok"] == 9
    assert c["submitted"] == c["ok"] + c["failed_total"] + c["lost"] + c["hung"]
    # the program's own close of its client failing a call it gave up on is no answer
    h[-1] = {**err("a", "AgentUnreachable", t=60.0), "after_hung": True, "self_inflicted": True}
    c = check(h)["counts"]
    assert c["hung"] == 1 and c["late_after_hung"] == 0 and c["duplicated"] == 0


def test_extra_executions_are_attributed_to_the_fault_before_them():
    fault = {"ev": "fault", "kind": "kill", "target": "h2", "t0": 20.0, "t1": 25.0}
    h = clean_history() + [fault, ex("a", t=23.0, agent="h3g1"), ex("b", t=80.0),
                           ex("f", t=11.0), ex("zz", t=12.0)]
    v = check(h)
    c = v["counts"]
    # a: again during the kill; b: long after any fault; f: a reader of a failed input ran
    assert c["extra_executions"] == {"kill": 1, "none": 2}, c
    assert c["phantom_executions"] == 1
    assert {a["cid"] for a in v["anomalies"] if a["what"] == "extra_execution_without_fault"} == {"b", "f"}


def test_agent_crashes_rss_and_liveness():
    h = clean_history() + [
        {"ev": "agent_exit", "agent": "h2g1", "host": 2, "pid": 5, "rc": -9, "t": 30.0, "by_nemesis": True},
        {"ev": "agent_exit", "agent": "h3g1", "host": 3, "pid": 6, "rc": 1, "t": 31.0, "by_nemesis": False},
        {"ev": "rss", "agent": "h1g1", "mb": 50.0}, {"ev": "rss", "agent": "h1g1", "mb": 70.5},
        {"ev": "liveness", "agent": "h1g1", "responsive": False},
    ]
    v = check(h)
    assert v["counts"]["agent_crashes"] == 1 and v["counts"]["agents_unresponsive"] == 1
    assert v["counts"]["max_rss_mb"] == {"h1g1": 70.5}
    assert [a["agent"] for a in v["anomalies"] if a["what"] == "agent_crash"] == ["h3g1"]


# -- the model and the schedule -------------------------------------------------------------

def test_the_model_gives_values_errors_and_refuses_ambiguous_time_outs():
    specs = {"a": sub("a", "cpu", [2]), "b": sub("b", "boom", [1]),
             "c": sub("c", "add", [{"ref": "a"}, {"ref": "b"}]), "s": sub("s", "slow", [1, 0.5, 1.0])}
    assert model.expect("a", specs) == ("value", model.value_digest(model.cpu_value(2)))
    assert model.expect("b", specs) == ("raise", model.BOOM)
    assert model.expect("c", specs) == ("raise", "TaskCancelled")
    with pytest.raises(ValueError, match="ambiguous"):
        model.expect("s", specs)


def test_the_schedule_is_seeded_bounded_and_never_doubles_a_target():
    a = schedule(7, 600, 6, ["P1", "P2", "P3"])
    assert a == schedule(7, 600, 6, ["P1", "P2", "P3"]) and a != schedule(8, 600, 6, ["P1", "P2", "P3"])
    assert len(a) >= 60 and {f.kind for f in a} == set(SECONDS)
    for f in a:
        lo, hi = SECONDS[f.kind]
        assert lo <= f.seconds <= hi and f.end <= 600 - TAIL_S + 0.01
        active = [g for g in a if g.at <= f.at < g.end]
        assert len(active) <= MAX_ACTIVE
        assert len({g.target for g in active}) == len(active)
    assert len(schedule(7, 600, 6, ["P1"], max_faults=5)) == 5
    assert all(f.kind != "stall" for f in schedule(3, 120, 3, []))


# -- the scenario through the runner --------------------------------------------------------

def _run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


@pytest.mark.timeout(90)
def test_nemesis_is_listed_with_its_options():
    listed = _run("--list")
    assert "nemesis" in {line.split()[0] for line in listed.stdout.splitlines()}
    proc = _run("nemesis", "--help-options")
    assert proc.returncode == 0, proc.stderr
    for opt in ("--seed", "--duration", "--faults", "--hang-s", "--run-dir", "--lock-wait"):
        assert opt in proc.stdout


def _held_lock_fds() -> tuple[int, ...]:
    """Descriptors of the harness's lock this process inherited (a suite run under `flock`):
    passed on, so that the scenario sees it already holds the lock."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == LOCK_PATH:
                out.append(int(name))
        except OSError:
            pass
    return tuple(out)


@pytest.mark.chaos
@pytest.mark.agents
@pytest.mark.timeout(150)
def test_a_short_nemesis_run_accounts_for_every_call():
    why = netns_unusable()
    if why:
        pytest.skip(why)
    run_dir = tempfile.mkdtemp(prefix="nem-")  # (short: local socket paths must fit)
    proc = _run("nemesis", "--duration", "15", "--hosts", "3", "--faults", "2", "--seed", "5",
                "--hang-s", "20", "--lock-wait", "30", "--run-dir", run_dir, timeout=140,
                pass_fds=_held_lock_fds())
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if "harness is busy" in res.get("error", ""):
        pytest.skip(res["error"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["scenario"] == "nemesis" and res["seed"] == 5 and res["mesh_code"]
    assert res["submitted"] > 0
    assert res["submitted"] == res["ok"] + res["failed_total"] + res["lost"] + res["hung"], res
    assert sum(res["failed"].values()) == res["failed_total"]
    assert set(res["max_rss_mb"]) >= {"h1g1", "h2g1", "h3g1"}
    assert sum(res["faults"].values()) <= 2
    for key in ("duplicated", "agent_crashes", "extra_executions", "late_results"):
        assert key in res
    shutil.rmtree(run_dir)  # (kept when the test fails: the agents' logs are the evidence)
