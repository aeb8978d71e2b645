"""Values too big for one message of the wire (mesh.wire.fields.MAX_VALUE, under MAX_FRAME):
a call whose arguments are that big is refused at once by the client, a call whose result
is that big fails at the worker with ValueTooLarge, naming the size and the limit; never
a hang, and nothing else in flight on the same connection is lost. Also through the task
runtime (with the agent's object store on) and through ``mesh call``."""

from __future__ import annotations

import os
import pickle
import time

import cloudpickle
import pytest

import mesh
from mesh.agent import worker
from mesh.client.client import Client
from mesh.errors import ValueTooLarge
from mesh.program import api
from mesh.program.taskexec import _execute
from mesh.wire import messages as m
from tests.conftest import run_cli, wait_for

HUGE = 100_000_000  # bytes: over the limit (~63 MiB)


def blob(n: int) -> bytes:
    return bytes(n)


@api.task(returns=1)
def make_blob(n):
    return bytes(n)


@api.task(returns=1)
def size_of(data):
    return len(data)


# -- no agent --------------------------------------------------------------------------------

def test_the_error_names_the_value_its_size_and_the_limit_and_survives_pickling():
    exc = ValueTooLarge("the result of f", 100_000_000, m.MAX_VALUE)
    assert "the result of f" in str(exc) and "100,000,000 bytes" in str(exc)
    assert f"{m.MAX_VALUE:,} bytes" in str(exc)
    again = pickle.loads(cloudpickle.dumps(exc))
    assert type(again) is ValueTooLarge and str(again) == str(exc)
    assert (again.what, again.size, again.limit) == ("the result of f", 100_000_000, m.MAX_VALUE)
    assert m.MAX_VALUE < m.MAX_FRAME


def test_the_worker_fails_a_call_whose_result_cannot_travel(monkeypatch):
    monkeypatch.setattr(worker, "MAX_VALUE", 10_000)
    ok, value, error_type, error, _, _ = worker.run_call("", cloudpickle.dumps((blob, (20_000,), {})))
    assert (ok, error_type) == (False, "ValueTooLarge")
    assert "the result of blob" in error and "10,000 bytes" in error, error
    exc = pickle.loads(value)
    assert isinstance(exc, ValueTooLarge) and exc.size > 20_000 and exc.limit == 10_000
    ok, _, error_type, error, _, _ = worker.run_call("builtins:bytes", pickle.dumps(((20_000,), {})))
    assert (ok, error_type) == (False, "ValueTooLarge") and "the result of builtins:bytes" in error
    # a task of the runtime: its outputs together, named after the user's function
    payload = cloudpickle.dumps((_execute, (blob, (20_000,), {}, [], [], 1), {}))
    ok, _, error_type, error, _, _ = worker.run_call("", payload)
    assert (ok, error_type) == (False, "ValueTooLarge") and "the outputs of task blob" in error
    assert worker.run_call("", cloudpickle.dumps((blob, (5_000,), {})))[0] is True


def test_an_exception_too_big_to_travel_still_fails_the_call_with_its_text(monkeypatch):
    monkeypatch.setattr(worker, "MAX_VALUE", 10_000)

    def fail():
        raise ValueError(bytes(20_000))

    ok, value, error_type, error, _, _ = worker.run_call("", cloudpickle.dumps((fail, (), {})))
    assert (ok, value, error_type) == (False, b"", "ValueError") and error


# -- real agents -----------------------------------------------------------------------------

@pytest.mark.agents
@pytest.mark.timeout(120)
@pytest.mark.parametrize("local", [True, False], ids=["local", "tcp"])
def test_too_big_values_fail_their_own_call_and_nothing_else(agents, local):
    a = agents.start("big", cpus=2)
    with Client(a.comm, local=local) as c:
        assert (c.local_path is not None) == local
        slow = c.submit(time.sleep, 2.0)
        other = c.submit(sum, range(10))
        t0 = time.monotonic()
        with pytest.raises(ValueTooLarge, match=r"the call of len \(the function and its arguments\): "
                                                r"100,000,\d+ bytes pickled"):
            c.submit(len, bytes(HUGE))
        assert time.monotonic() - t0 < 5  # (at once: nothing was sent)
        big = c.submit(blob, HUGE)  # its result cannot travel: the call fails at the worker
        with pytest.raises(ValueTooLarge, match=r"the result of blob: 100,000,\d+ bytes"):
            big.result(60)
        assert other.result(30) == 45 and slow.result(30) is None  # the others still complete
        assert c.submit(abs, -4).result(30) == 4
        assert c.late_results == 0
    assert a.alive()


@pytest.mark.agents
@pytest.mark.timeout(120)
def test_the_task_runtime_fails_only_the_tasks_that_cannot_travel(agents):
    """The agent's object store is on: outputs over 100 kB stay at the agent, but one this
    big cannot be kept (it could never be fetched in one frame) nor sent."""
    a = agents.start("big-tasks", cpus=2, env={"MESH_STORE_MB": "512"})
    with mesh.connect(a.comm):  # (a failed task fails its graph: one graph per case)
        kept = make_blob(4_000_000)  # kept at the agent, read by the next task there
        assert api.wait_on(size_of(kept)) == 4_000_000
        with pytest.raises(ValueTooLarge, match="the outputs of task make_blob: 100,000,"):
            api.wait_on(make_blob(HUGE))
    with mesh.connect(a.comm):
        with pytest.raises(ValueTooLarge, match=r"the call of task size_of \(its arguments and "
                                                r"input files\): 100,000,"):
            api.wait_on(size_of(bytes(HUGE)))
    with mesh.connect(a.comm):
        assert api.wait_on(size_of(make_blob(1000))) == 1000


@pytest.mark.agents
@pytest.mark.timeout(120)
@pytest.mark.parametrize("local", ["1", "0"], ids=["local", "tcp"])
def test_mesh_call_of_a_function_returning_100_mb_ends_with_a_clear_size_error(agents, local):
    a = agents.start("big-cli", cpus=1)
    t0 = time.monotonic()
    res = run_cli("call", "--agent", a.comm, "--timeout", "60", "builtins:bytes", str(HUGE),
                  timeout=30, env={"MESH_LOCAL_SOCKET": local})
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "error: ValueTooLarge: the result of builtins:bytes: 100,000,0" in res.stderr, res.stderr
    assert f"limit of {m.MAX_VALUE:,} bytes" in res.stderr
    assert time.monotonic() - t0 < 30
    wait_for(lambda: run_cli("call", "--agent", a.comm, "builtins:abs", "-3").stdout.strip() == "3",
             20, "the agent to serve the next call", explain=a.log)
    assert a.alive() and os.path.exists(a.state_file)
