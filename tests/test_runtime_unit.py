"""The program-side runtime driven by a stand-in client (tests/runtime_helpers.py): each
result, failure and lost object comes exactly when the test says."""

from __future__ import annotations

import pytest

from mesh.program.runtime import Runtime
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
