"""The latency emulation (a test knob, MESH_EMULATE_DELAY) is a transport wrapper installed
only when asked for: frames to a delayed peer wait their delay, the loop is woken when
they fall due, and an agent without the knob never even imports it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from mesh.agent import delay
from mesh.agent.waker import Waker
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)


class _Inner:
    """Stands for the Transport: records what it is given."""

    def __init__(self) -> None:
        self.given: list[tuple] = []
        self.router = "the router"

    def send(self, address, frame):
        self.given.append(("send", address, frame))
        return True

    def reply(self, identity, frame):
        self.given.append(("reply", identity, frame))
        return True

    def flush(self):
        return []

    def close(self):
        self.given.append(("closed",))


def _members():
    far = SimpleNamespace(info=SimpleNamespace(name="far"))
    near = SimpleNamespace(info=SimpleNamespace(name="near"))
    at = {"10.0.0.2:1": far, "10.0.0.3:1": near}
    return SimpleNamespace(member_at=at.get, members={(b"f" * 16).hex(): far})


def test_without_the_knob_nothing_is_wrapped():
    inner = _Inner()
    assert delay.install(inner, _members(), None, env={}) is inner
    assert delay.install(inner, _members(), None, env={delay.ENV: "not json"}) is inner


def test_frames_to_a_delayed_peer_wait_and_the_loop_is_woken_when_they_fall_due():
    inner, waker = _Inner(), Waker()
    t = delay.install(inner, _members(), waker, env={delay.ENV: '{"far": 80}'})
    try:
        assert isinstance(t, delay.DelayedTransport) and t.router == "the router"
        t0 = time.monotonic()
        assert t.send("10.0.0.2:1", b"late") and t.reply(b"f" * 16, b"late too")
        assert t.send("10.0.0.3:1", b"now")  # a peer without a delay: at once
        assert inner.given == [("send", "10.0.0.3:1", b"now")]
        t.flush()
        assert len(inner.given) == 1  # not due yet
        assert select.select([waker.fileno()], [], [], 5)[0], "the loop was never woken"
        assert time.monotonic() - t0 >= 0.08
        waker.drain()
        t.flush()
        assert inner.given[1:] == [("send", "10.0.0.2:1", b"late"), ("reply", b"f" * 16, b"late too")]
        assert not select.select([waker.fileno()], [], [], 0.2)[0]  # nothing more to wake for
    finally:
        t.close()
        waker.close()
    assert inner.given[-1] == ("closed",)


def test_an_agent_without_the_knob_never_imports_it():
    code = ("import sys\n"
            "from mesh.agent.agent import Agent, AgentConfig\n"
            "from mesh.agent.transport import Transport\n"
            "a = Agent(AgentConfig(name='plain', comm_port=0, mdns=False, cpus=0))\n"
            "try:\n"
            "    assert type(a.transport) is Transport, type(a.transport)\n"
            "    assert 'mesh.agent.delay' not in sys.modules\n"
            "finally:\n"
            "    a.close()\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != delay.ENV}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                         cwd=ROOT, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
