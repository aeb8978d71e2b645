"""The program-side runtime driven by a stand-in client (tests/runtime_helpers.py): each
result, failure and lost object comes exactly when the test says."""

from __future__ import annotations

import pickle
import threading

import pytest

from mesh.program.runtime import Runtime, TaskFailed
from mesh.sched.objects import ObjectLost, Ref
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
