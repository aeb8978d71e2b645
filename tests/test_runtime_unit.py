"""The program-side runtime driven by a stand-in client (tests/runtime_helpers.py): each
result, failure and lost object comes exactly when the test says."""

from __future__ import annotations

import pickle
import threading

import pytest

from mesh.program.runtime import FATE_SWEEP, Runtime, TaskFailed
from mesh.sched.objects import ObjectLost, Ref
from mesh.sched.taskspec import Direction
from tests.conftest import wait_for
from tests.runtime_helpers import FakeClient, call

pytestmark = pytest.mark.timeout(30)


def produce():
    return b"x" * 10


def read(x):
    return len(x)


@pytest.fixture
def fake():
    client = FakeClient()
    rt = Runtime(client)
    yield client, rt
    client._closed.set()


def sent(client, fn, n: int) -> list:
    """Once ``n`` calls of ``fn`` were sent: them."""
    wait_for(lambda: len(client.of(fn)) >= n, 5, f"{n} call(s) of {fn.__name__}")
    return client.of(fn)


def test_a_reader_failing_on_an_output_already_made_again_is_sent_again(fake):
    """Two readers of an output kept at an agent that is lost: the first one's failure
    makes it again; the second one's failure comes after that and finds it made. That
    reader was left out for good (the runtime forgot it was running before asking)."""
    client, rt = fake
    p = call(rt, produce)
    a, b = call(rt, read, p), call(rt, read, p)
    old, new = Ref("1" * 32, "h1", 10), Ref("2" * 32, "h2", 10)
    sent(client, produce, 1)[0].ok(old)
    first_a, first_b = sent(client, read, 2)
    assert first_a.args == (old,) and first_b.args == (old,)
    first_a.fail(ObjectLost(old.oid, "ObjectLost: its holder died"))
    sent(client, produce, 2)[1].ok(new)  # the rerun
    again_a = sent(client, read, 3)[2]
    assert again_a.args == (new,)
    first_b.fail(ObjectLost(old.oid, "ObjectLost: its holder died"))  # made again already
    again_b = sent(client, read, 4)[3]
    assert again_b.args == (new,)
    again_a.ok(10)
    again_b.ok(10)
    assert a.result() == 10 and b.result() == 10


def test_a_wait_on_for_a_lost_output_waits_within_a_bound(fake):
    """wait_on finds its output gone; the rerun that would make it again never ends:
    the wait ends after the recovery's bound with an error naming it (it used to wait
    on that rerun with no time-out at all)."""
    client, rt = fake
    rt.recovery.wait_limit = 0.5
    p = call(rt, produce)
    sent(client, produce, 1)[0].ok(Ref("1" * 32, "h1", 10))
    with pytest.raises(TaskFailed, match="not made again within 0 s|not made again within 1 s"):
        p.result()
    assert len(client.of(produce)) == 2  # the rerun went, and never came back


def test_a_made_again_output_reaches_the_wait_on_that_found_it_lost(fake):
    client, rt = fake
    p = call(rt, produce)
    sent(client, produce, 1)[0].ok(Ref("1" * 32, "h1", 10))
    new = Ref("2" * 32, "h2", 10)
    client.objects[new.oid] = pickle.dumps(b"made again")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(p.result()))
    waiter.start()
    sent(client, produce, 2)[1].ok(new)
    waiter.join(5)
    assert got == [b"made again"]


def write_file(path):
    pass


def append_file(path):
    pass


def test_the_files_the_program_deleted_or_changed_are_not_kept_for_ever(fake, tmp_path):
    """compss_open and compss_delete_file on 300 files, each written by a task first:
    the runtime remembers a deleted or changed file only while the graph holds it
    (_deleted kept one id per file ever deleted). Deleted files get nothing written."""
    client, rt = fake
    out = {"path": Direction.FILE_OUT}
    for i in range(300):
        path = str(tmp_path / f"f{i}")
        call(rt, write_file, path, returns=0, directions=out)
        sent(client, write_file, i + 1)[i].ok(None, files=[b"made"])
        assert open(path, "rb").read() == b"made"
        rt.file_changed(path)  # compss_open(path, "w")
        assert rt.delete_file(path) is True
        assert len(rt._deleted) + len(rt._dirty) <= FATE_SWEEP
    assert not any(tmp_path.iterdir())


def test_an_older_writer_ending_after_its_file_was_deleted_writes_nothing(fake, tmp_path):
    """A FILE_INOUT task still running when a later FILE_OUT of the same file has ended
    and the program deleted the file: once the runtime no longer remembers the deletion
    (swept: the graph holds no newest version), the old writer's result is still taken
    and writes nothing."""
    client, rt = fake
    path = str(tmp_path / "f")
    with open(path, "wb") as fh:
        fh.write(b"0")
    call(rt, append_file, path, returns=0, directions={"path": Direction.FILE_INOUT})
    call(rt, write_file, path, returns=0, directions={"path": Direction.FILE_OUT})
    old = sent(client, append_file, 1)[0]
    sent(client, write_file, 1)[0].ok(None, files=[b"new"])
    assert rt.delete_file(path) is True
    for i in range(FATE_SWEEP + 1):  # enough deletions of other files for a sweep
        other = str(tmp_path / f"g{i}")
        call(rt, write_file, other, returns=0, directions={"path": Direction.FILE_OUT})
        sent(client, write_file, i + 2)[i + 1].ok(None, files=[b"g"])
        rt.delete_file(other)
    old.ok(None, files=[b"0+"])
    wait_for(lambda: rt.graph.active_count == 0, 5, "the old writer to end")
    assert len(client.of(append_file)) == 1  # taken, not failed and sent again
    assert rt.failure is None and rt.broken is None
    assert not any(tmp_path.iterdir())
