"""PyCOMPSs semantics of mesh's own task API on real agents (issue 16): what failed tasks
leave in their files, COMPSsException and task groups, methods and ``self``,
collections, the synchronisation API and alternative implementations. The agents are
shared by the module's tests (each test connects anew: its own task graph)."""

from __future__ import annotations

import threading
import time

import pytest

import mesh
from mesh.program.api import (
    COMPSsException,
    TaskCancelled,
    TaskFailed,
    TaskGroup,
    barrier,
    barrier_group,
    delete_file,
    delete_object,
    open_file,
    wait_on,
    wait_on_file,
)
from tests.conftest import AgentFactory, wait_for
from tests.pycompss_tasks import (
    Counter,
    append,
    append_then_fail,
    append_then_fail_ignored,
    fails_with_default,
    fill,
    group_member,
    only_alt_main,
    plus_one,
    read_text,
    scale_blocks,
    shrink,
    split,
    total_of,
    where_main,
)

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def mesh_agents(tmp_path_factory):
    """Two agents, the second labelled ``fast``; short grace for calls nobody fits."""
    factory = AgentFactory(tmp_path_factory.mktemp("sem"))
    env = {"MESH_UNFIT_GRACE": "3"}
    a = factory.start("plain", cpus=2, env=env)
    factory.start("quick", "--peer", a.comm, "--label", "fast", cpus=2, env=env)
    with mesh.connect(a.comm) as client:
        wait_for(lambda: any(p["name"] == "quick" and p["state"] == "alive"
                             for p in client.query("peers")), 15, "plain to see quick")
    yield a
    factory.stop_all()


@pytest.fixture
def connected(mesh_agents):
    client = mesh.connect(mesh_agents.comm)
    yield client
    client.close()


# ------------------------------------------------------------------ failed tasks' files


def test_a_failed_task_keeps_what_it_wrote_in_its_file_under_cancel_successors(connected, tmp_path):
    """COMPSs keeps a failed task's files: after CANCEL_SUCCESSORS the file holds what
    the failed task wrote (before: the write-back never happened, the file stayed as it
    was); its successors are cancelled."""
    path = tmp_path / "log.txt"
    path.write_text("start\n")
    append_then_fail(str(path), "partial")
    after = read_text(str(path))
    with pytest.raises(TaskCancelled):
        wait_on(after)
    assert wait_on_file(str(path)) == str(path)
    assert path.read_text() == "start\npartial\n"


def test_under_ignore_the_next_task_reads_what_the_failed_task_wrote(connected, tmp_path):
    """IGNORE on a chained FILE_INOUT: the next task gets the file as the failed task
    left it (before: an empty file, so everything written before was lost)."""
    path = tmp_path / "log.txt"
    path.write_text("start\n")
    append(str(path), "one")
    append_then_fail_ignored(str(path), "bad")
    append(str(path), "two")
    barrier()
    wait_on_file(str(path))
    assert path.read_text() == "start\none\nbad\ntwo\n"


def test_on_failure_values_replace_a_failed_tasks_outputs(connected):
    """``failure_values`` (PyCOMPSs' ``@on_failure(management="IGNORE", returns=0)``):
    the failed task's return reads as the default, for the tasks after it and for
    wait_on."""
    v = fails_with_default(3)
    assert wait_on(plus_one(v)) == 0
    assert wait_on(v) == -1


# ------------------------------------------------------------------ COMPSsException


def test_a_compss_exception_cancels_its_group_only_and_reaches_the_program_at_its_end(connected, tmp_path):
    """A task raising COMPSsException in a TaskGroup: not retried, the group's other
    tasks are cancelled (they would sleep 20 s), the exception is raised when the group
    is left, and the rest of the graph goes on (before: retried, then the whole graph
    failed, later calls cancelled)."""
    log = tmp_path / "started"
    outside = plus_one(1)
    t0 = time.monotonic()
    with pytest.raises(COMPSsException, match="member 2 stops the group"):
        with TaskGroup("stoppable"):
            members = [group_member(i, str(log), 2) for i in range(4)]
    assert time.monotonic() - t0 < 15, "the group's other tasks were not cancelled"
    assert log.read_text().split().count("2") == 1  # never retried
    for i, m in enumerate(members):
        with pytest.raises(COMPSsException if i == 2 else TaskCancelled):
            wait_on(m)
    assert wait_on(outside) == 2
    assert wait_on(plus_one(41)) == 42  # the graph did not fail


def test_a_compss_exception_of_a_group_without_implicit_barrier_comes_at_barrier_group(connected, tmp_path):
    log = tmp_path / "started"
    with TaskGroup("later", implicit_barrier=False):
        group_member(0, str(log), 0)
    after = plus_one(1)  # the program goes on meanwhile
    assert wait_on(after) == 2
    with pytest.raises(COMPSsException, match="member 0"):
        barrier_group("later")
    with pytest.raises(ValueError, match="no task group named 'later'"):
        barrier_group("later")  # synchronised already


def test_a_failing_task_fails_its_group_with_task_failed(connected):
    with pytest.raises(TaskFailed, match="task group 'ordinary'"):
        with TaskGroup("ordinary"):
            plus_one("x")  # TypeError, retried once, then the graph fails (RETRY)
    with pytest.raises(TaskFailed):
        barrier()


# ------------------------------------------------------------------ methods


def test_a_method_changes_self_when_its_target_direction_is_inout(connected):
    c = Counter()
    values = [c.incr(2), c.incr(3), c.incr(5)]
    assert wait_on(values) == [2, 5, 10]  # each call read the version the one before made
    c = wait_on(c)
    assert c.n == 10
    # mesh's default: self is IN, so a method that changes self changes a copy
    assert wait_on(c.peek_and_incr()) == 11
    assert wait_on(c).n == 10


# ------------------------------------------------------------------ collections


def test_collection_out_elements_are_data_of_their_own(connected):
    """COLLECTION_OUT: the task replaces the placeholders; each element is then its own
    datum, read by later tasks one by one, and wait_on on the list gives the values."""
    out = [object() for _ in range(4)]
    fill(out, 10)
    singles = [plus_one(x) for x in out]  # each depends on one element
    assert wait_on(singles) == [11, 12, 13, 14]
    assert wait_on(total_of(out)) == 46  # COLLECTION_IN reads them all
    assert wait_on(out) == [10, 11, 12, 13]


def test_collection_inout_with_depth_updates_the_blocks_in_place(connected):
    blocks = [[[1, 2], [3]], [[4], [5, 6]]]
    scale_blocks(blocks, 10)  # depth 2: each block (a list of numbers) is an element
    scale_blocks(blocks, 2)
    assert wait_on(blocks) == [[[20, 40], [60]], [[80], [100, 120]]]
    assert wait_on(total_of(blocks[0])) == 120  # a row of blocks, element by element


def test_collections_refuse_what_cannot_be_an_element_or_a_change_of_length(connected):
    with pytest.raises(TypeError, match="must be objects"):
        fill([None, None], 1)
    with pytest.raises(TypeError, match="a list, not tuple"):
        fill((object(),), 1)
    out = [object(), object()]
    shrink(out)
    with pytest.raises(ValueError, match="had 2 element"):
        wait_on(out[0])


def test_returns_may_name_a_parameter(connected):
    parts = split(list(range(12)), 3)
    assert len(parts) == 3
    assert wait_on(list(parts)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


# ------------------------------------------------------------------ synchronisation API


def test_delete_object_open_file_and_wait_on_several_files(connected, tmp_path):
    c = Counter()
    c.incr(1)
    assert delete_object(c) is True
    assert delete_object(object()) is False
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("")
    b.write_text("")
    append(str(a), "x")
    append(str(b), "y")
    assert wait_on_file(str(a), str(b)) == [str(a), str(b)]
    assert a.read_text() == "x\n" and b.read_text() == "y\n"
    with open_file(str(a), "a") as f:  # the program writes it itself
        f.write("mine\n")
    assert wait_on(read_text(str(a))) == "x\nmine\n"  # the next task reads the program's version
    append(str(b), "z")
    assert delete_file(str(b)) is True
    barrier()
    assert not b.exists()  # the task's output was not written back to a deleted file
    assert delete_file(str(b)) is False


def test_no_task_after_a_barrier_with_no_more_tasks(connected):
    assert wait_on(plus_one(1)) == 2
    barrier(no_more_tasks=True)
    with pytest.raises(RuntimeError, match="no_more_tasks"):
        plus_one(2)


# ------------------------------------------------------------------ @implement


def test_the_implementation_that_runs_is_the_one_that_fits_the_agent(connected):
    """``where_fast`` implements ``where_main`` on agents labelled fast: calls spread over
    both agents, and each ran the implementation that fits where it landed."""
    results = wait_on([where_main(i) for i in range(40)])
    assert {agent for _, agent, _ in results} == {"plain", "quick"}
    for impl, agent, _ in results:
        assert impl == ("fast" if agent == "quick" else "main"), results


def test_a_call_is_placed_where_an_implementation_fits(connected):
    """No agent fits the main implementation (label nowhere): the call goes where its
    alternative fits, and runs it (without @implement: NoSuitableAgent)."""
    assert wait_on([only_alt_main(i) for i in range(3)]) == [("fast", "quick", i) for i in range(3)]


def test_tasks_from_threads_and_groups_do_not_mix(connected, tmp_path):
    """A group belongs to the thread that opened it: a COMPSsException in one thread's
    group does not cancel another thread's tasks."""
    errors: list = []

    def other() -> None:
        try:
            assert wait_on([plus_one(i) for i in range(20)]) == list(range(1, 21))
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(COMPSsException):
        with TaskGroup("mine"):
            group_member(1, str(tmp_path / "log"), 1)
    t.join(60)
    assert not errors, errors
