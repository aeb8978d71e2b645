"""Who reads the client's socket (mesh.client.client, leader/followers) with a real agent: a
thread that waits in ``result()`` for a lone call reads its result itself and the
client's thread sleeps; every other way of waiting still gets the result; threads that
wait at the same time, a waiting thread that must step aside for calls to send, a time
limit and ``close()`` all end as they should."""

from __future__ import annotations

import concurrent.futures as cf
import operator
import threading
import time

import pytest

import mesh
from mesh.errors import AgentUnreachable
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


@pytest.fixture
def agent(agents):
    return agents.start("reader", cpus=2)


def test_single_calls_are_read_by_the_waiting_thread_and_the_clients_thread_sleeps(agent):
    with mesh.connect(agent.comm) as client:
        client.submit(operator.add, 1, 1).result(30)  # (the first call may meet it awake)
        wakes = client.wakes
        for i in range(300):
            assert client.submit(operator.mul, i, 3).result(30) == 3 * i
        # the client's thread woke for a few things (its idle poll), not once per call
        assert client.wakes - wakes < 30, client.wakes - wakes
        assert client.late_results == 0 and client._reader is None


@pytest.mark.parametrize("how", ["wait", "as_completed", "callback", "done", "exception"])
def test_a_lone_call_waited_for_another_way_still_completes(agent, how):
    with mesh.connect(agent.comm) as client:
        fut = client.submit(operator.add, 2, 3)
        if how == "wait":
            done, _ = cf.wait([fut], timeout=30)
            assert fut in done
        elif how == "as_completed":
            assert next(cf.as_completed([fut], timeout=30)) is fut
        elif how == "callback":
            got = threading.Event()
            fut.add_done_callback(lambda f: got.set())
            assert got.wait(30)
        elif how == "done":
            deadline = time.monotonic() + 30
            while not fut.done():  # a program that polls: the client's thread reads for it
                assert time.monotonic() < deadline, "the call never completed"
                time.sleep(0.01)
        else:
            assert fut.exception(30) is None
        assert fut.result(0) == 5


def test_threads_waiting_at_once_all_get_their_own_results(agent):
    n_threads, n_calls = 4, 150
    errors: list[str] = []

    with mesh.connect(agent.comm) as client:
        def caller(k: int) -> None:
            for i in range(n_calls):
                got = client.submit(operator.add, k * 1000, i).result(30)
                if got != k * 1000 + i:
                    errors.append(f"thread {k} call {i}: {got}")

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a caller is stuck"
        assert errors == []
        assert client.late_results == 0 and client.dropped == 0


def test_a_thread_reading_for_a_slow_call_steps_aside_for_other_calls(agent):
    with mesh.connect(agent.comm) as client:
        client.submit(operator.add, 1, 1).result(30)
        wait_for(lambda: client._reader is None, 10, "the client's thread to stop reading")
        slow = client.submit(time.sleep, 3.0)
        reader_done = threading.Event()

        def wait_slow() -> None:
            slow.result(30)
            reader_done.set()

        t = threading.Thread(target=wait_slow)
        t.start()
        wait_for(lambda: client._reader == t.ident, 10, "the waiting thread to read the socket")
        # calls from another thread go out and come back while it waits for the slow one
        quick = [client.submit(operator.mul, i, 2) for i in range(50)]
        assert [f.result(30) for f in quick] == [2 * i for i in range(50)]
        assert not slow.done(), "the quick calls waited for the slow one"
        t.join(30)
        assert reader_done.is_set() and slow.result(0) is None


def test_a_time_limit_is_kept_and_the_result_still_comes_later(agent):
    with mesh.connect(agent.comm) as client:
        fut = client.submit(time.sleep, 1.5)
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            fut.result(0.3)
        assert time.monotonic() - t0 >= 0.25  # the limit was waited for...
        assert not fut.done()  # ...and only the limit: the result has not come yet
        assert fut.result(30) is None


def test_close_ends_a_thread_that_reads_for_its_call(agent):
    client = mesh.connect(agent.comm)
    # (nothing in flight: the call goes from this thread and the one waiting reads)
    wait_for(lambda: client._reader is None, 10, "the client's thread to stop reading")
    fut = client.submit(time.sleep, 30)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            fut.result(60)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what is checked
            outcome.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    wait_for(lambda: client._reader == t.ident, 10, "the waiting thread to read the socket")
    client.close()
    t.join(10)
    assert not t.is_alive(), "result() still waits after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], AgentUnreachable), outcome


def test_the_task_runtime_still_completes_lone_calls(agent):
    from mesh.program import api

    with mesh.connect(agent.comm):
        add = api.task(operator.add)
        for i in range(50):  # one at a time: each call is alone in flight
            assert api.wait_on(add(i, 1)) == i + 1
