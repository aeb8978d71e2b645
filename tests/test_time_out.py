"""``time_out`` counts the time a task runs, not the time it waited for a slot, and is
enforced where it runs (mesh.program.timeout), on a one-slot agent shared by the tests."""

from __future__ import annotations

import time

import pytest

import mesh
from mesh.program.api import TaskTimedOut, task, wait_on
from tests.conftest import AgentFactory, status, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


@task(returns=1)
def busy(seconds):
    time.sleep(seconds)
    return "busy"


@task(returns=1, time_out=2, on_failure="IGNORE")
def quick():
    time.sleep(0.1)
    return "quick"


@task(returns=1, time_out=0.5, on_failure="IGNORE")
def swallows():
    try:
        time.sleep(5)
    except BaseException:  # noqa: BLE001 - what the test is about
        return "swallowed"
    return "slept"


@task(returns=1, time_out=0.5, on_failure="IGNORE")
def deaf():
    """Blocks SIGALRM, as code that never gives the interpreter back would ignore it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    time.sleep(10)
    return "deaf"


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    factory = AgentFactory(tmp_path_factory.mktemp("timeout"))
    a = factory.start("lone", cpus=1)
    yield a
    factory.stop_all()



def test_time_out_counts_from_when_the_task_starts_running(one_slot):
    """The 0.1 s task with time_out=2 waits ~4 s for the only slot: it must not time
    out (before: the clock started when it was sent, TaskTimedOut after 2 s without it
    ever running)."""
    with mesh.connect(one_slot.comm):
        first = busy(4.0)
        wait_for(lambda: status(one_slot)["running"] == 1, 10, "the slot to be busy")
        t0 = time.monotonic()
        second = quick()
        assert wait_on(second) == "quick"
        assert time.monotonic() - t0 > 2.0  # it did wait longer than its time-out
        assert wait_on(first) == "busy"


def test_a_task_that_catches_its_time_out_still_timed_out(one_slot):
    with mesh.connect(one_slot.comm):
        t0 = time.monotonic()
        with pytest.raises(TaskTimedOut, match="time_out of 0.5 s"):
            wait_on(swallows())
        assert time.monotonic() - t0 < 4.5
        assert wait_on(busy(0)) == "busy"


def test_a_task_deaf_to_the_alarm_is_abandoned_and_its_worker_replaced(one_slot):
    crashes = status(one_slot)["worker_crashes"]
    with mesh.connect(one_slot.comm):
        t0 = time.monotonic()
        with pytest.raises(TaskTimedOut):
            wait_on(deaf())
        assert time.monotonic() - t0 < 8  # 0.5 s, then GRACE, not the 10 s it sleeps
        assert wait_on(busy(0)) == "busy"  # the agent runs calls again
    assert status(one_slot)["worker_crashes"] == crashes + 1
