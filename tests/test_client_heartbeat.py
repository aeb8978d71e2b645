"""A program notices that its agent is gone (mesh.client.heartbeat, mesh.client.link): the
heartbeat core alone, then real agents killed (SIGKILL: the connection is reset) and
frozen (SIGSTOP: the connection stays open, nothing answers), over TCP and over the
local socket. Every call in flight ends with AgentUnreachable within twice the detection
bound, and a later call reaches whatever agent serves the address then."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from mesh.client import heartbeat as hb
from mesh.client.client import Client
from mesh.client.heartbeat import PING, SILENT, Heartbeat
from mesh.errors import AgentUnreachable
from mesh.wire import framing
from tests.conftest import wait_for

BOUND = hb.DETECTION_S


# -- the core, with a made-up clock ----------------------------------------------------------

def run(beat: Heartbeat, until: float, step: float, frames_at=(), inflight=True, t0=0.0):
    """Tick every ``step`` seconds from ``t0`` to ``until``; a frame arrives at each time in
    ``frames_at``. Returns [(time, action)] of the ticks that did something."""
    frames, got, k = 0, [], 0
    pending = sorted(frames_at)
    while (t := t0 + k * step) <= until + 1e-9:
        k += 1
        while pending and pending[0] <= t:
            pending.pop(0)
            frames += 1
        act = beat.tick(t, frames, inflight)
        if act:
            got.append((round(t, 3), act))
            if act is SILENT:
                break
    return got


def test_an_idle_client_never_pings():
    beat = Heartbeat()
    beat.start(0.0)
    assert run(beat, 600, 0.5, inflight=False) == []


def test_nothing_before_start():
    beat = Heartbeat()
    assert run(beat, 60, 0.25) == []  # (a client that connects waits its own time-out)


def test_a_silent_agent_is_pinged_then_given_up_within_the_bound():
    beat = Heartbeat(every=1.0, misses=3)
    beat.start(0.0)
    acts = run(beat, 60, 0.05, frames_at=[0.3, 0.7, 1.2, 1.6, 2.0])  # the last sign of life
    pings = [t for t, a in acts if a is PING]
    verdict = [t for t, a in acts if a is SILENT]
    assert len(pings) == 3 and len(verdict) == 1, acts
    assert 2.0 < pings[0] <= 2.0 + 1.0
    assert [round(b - a, 2) for a, b in zip(pings, pings[1:], strict=False)] == [1.0, 1.0]
    assert verdict[0] <= 2.0 + BOUND and verdict[0] - pings[0] >= 3.0


def test_traffic_is_a_sign_of_life_and_an_answer_ends_the_silence():
    beat = Heartbeat(every=1.0, misses=3)
    beat.start(0.0)
    frames_at = [i * 0.4 for i in range(100)]  # results flow: never a ping
    assert run(beat, 39, 0.1, frames_at=frames_at) == []
    beat = Heartbeat(every=1.0, misses=3)
    beat.start(0.0)
    acts = run(beat, 12, 0.1, frames_at=[2.5, 6.0, 9.5])  # each ping answered late but in time
    assert all(a is PING for _, a in acts) and len(acts) >= 6, acts


def test_a_client_that_was_stopped_asks_before_it_fails_anything():
    beat = Heartbeat(every=1.0, misses=3)
    beat.start(0.0)
    assert beat.tick(0.5, 0, True) == ""
    assert beat.tick(100.0, 0, True) is PING  # our own process slept: ask first
    assert beat.tick(100.2, 1, True) == ""  # answered
    assert beat.tick(101.5, 1, True) is PING
    assert beat.tick(103.0, 1, True) is PING
    assert beat.tick(104.4, 1, True) is PING
    assert beat.tick(104.6, 1, True) is SILENT  # 3 unanswered pings, the first 3.1 s ago


def test_due_says_when_the_next_tick_matters():
    beat = Heartbeat(every=1.0, misses=3)
    beat.start(10.0)
    assert beat.due(10.0) == pytest.approx(1.0)
    assert beat.tick(11.0, 0, True) is PING
    assert beat.due(11.0) == pytest.approx(1.0)
    assert beat.tick(13.5, 0, True) is PING
    assert beat.due(13.6) == pytest.approx(0.4)  # the verdict, 3 s after the first ping


# -- real agents ------------------------------------------------------------------------------

def _running(client: Client) -> bool:
    return client.query("status", timeout=5)["running"] >= 1


def _outcome_of(fn, *args, **kwargs) -> BaseException | None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
        return exc
    return None


def _outcome(fut, limit: float) -> tuple[BaseException | None, float]:
    t0 = time.monotonic()
    try:
        fut.result(limit)
        return None, time.monotonic() - t0
    except AgentUnreachable as exc:
        return exc, time.monotonic() - t0


@pytest.mark.agents
@pytest.mark.chaos
@pytest.mark.timeout(90)
def test_a_killed_agent_fails_tcp_calls_at_once_and_a_new_agent_serves_later_calls(agents):
    a = agents.start("hb-kill", cpus=2)
    with Client(a.comm, local=False) as c:
        assert c.local_path is None
        futs = [c.submit(time.sleep, 30) for _ in range(2)]
        wait_for(lambda: _running(c), 15, "the calls to run")
        a.stop(signal.SIGKILL)
        outcomes = [_outcome(f, 2 * BOUND) for f in futs]
        for exc, _ in outcomes:
            assert isinstance(exc, AgentUnreachable), outcomes
            assert f"lost the connection to the agent at {a.comm}" in str(exc), exc
        b = agents.start("hb-kill-2", "--comm-port", a.comm.rpartition(":")[2])
        assert b.comm == a.comm
        wait_for(lambda: c.submit(abs, -7).result(5) == 7, 30, "a call through the new agent")
        assert c.query("status")["id"] == b.id


@pytest.mark.agents
@pytest.mark.chaos
@pytest.mark.timeout(90)
@pytest.mark.parametrize("local", [False, True], ids=["tcp", "local"])
def test_a_frozen_agent_fails_calls_within_twice_the_bound_then_serves_again(agents, local):
    """SIGSTOP: the connection stays open and nothing answers. Only the heartbeat can tell."""
    a = agents.start("hb-stop", cpus=3)  # (a slot free for the later call: the two calls
    # that failed here still run at the agent, whose Cancel cannot reach it any more)
    c = Client(a.comm, local=local)
    try:
        assert (c.local_path is not None) == local
        futs = [c.submit(time.sleep, 30) for _ in range(2)]
        wait_for(lambda: _running(c), 15, "the calls to run")
        asked: list = []  # a query whose own time-out is far away fails as well
        t = threading.Thread(target=lambda: asked.append(_outcome_of(c.query, "status", timeout=60)))
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGSTOP)
        t.start()
        try:
            outcomes = [_outcome(f, 2 * BOUND) for f in futs]
            took = time.monotonic() - t0
            for exc, _ in outcomes:
                assert isinstance(exc, AgentUnreachable), outcomes
                assert f"no answer from the agent at {a.comm} for" in str(exc), exc
            assert took < 2 * BOUND, took
            t.join(2 * BOUND)
            assert len(asked) == 1 and isinstance(asked[0], AgentUnreachable), asked
            assert c.pings >= 1
            with pytest.raises(AgentUnreachable):  # a call made now, the agent still frozen
                c.submit(abs, -1).result(2 * BOUND)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: c.submit(abs, -7).result(5) == 7, 30, "a call once the agent runs again")
        assert c.local_path is None  # (a broken local connection: TCP from then on)
        assert a.alive()
    finally:
        c.close()
        a.stop(signal.SIGKILL)  # (it would finish the two sleeps before leaving)


@pytest.mark.agents
@pytest.mark.chaos
@pytest.mark.timeout(90)
def test_calls_that_cannot_even_be_sent_to_a_frozen_agent_still_fail(agents, monkeypatch):
    """The local connection holds at most OUT_LIMIT bytes for a frozen agent: the client's
    thread waits for room a little at a time, looking at its heartbeat meanwhile."""
    a = agents.start("hb-full", cpus=1)
    monkeypatch.setattr(framing, "OUT_LIMIT", 1 << 20)
    c = Client(a.comm)
    try:
        assert c.local_path is not None
        a.proc.send_signal(signal.SIGSTOP)
        try:
            futs = [c.submit(len, bytes(2 << 20)) for _ in range(6)]  # 12 MB the agent never reads
            t0 = time.monotonic()
            for f in futs:
                exc, _ = _outcome(f, 2 * BOUND)
                assert isinstance(exc, AgentUnreachable), exc
            assert time.monotonic() - t0 < 2 * BOUND
        finally:
            a.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: c.submit(abs, -3).result(5) == 3, 30, "a call once the agent runs again")
    finally:
        c.close()
