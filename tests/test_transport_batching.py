"""What one turn of an agent's loop has for a member goes as one frame (Batch), and a frame
that cannot go gives its calls back to the dispatcher (in-process: a Transport, and the
agent's outbox with stand-ins for its cores)."""

from __future__ import annotations

import os
import time
from collections import Counter
from types import SimpleNamespace

import pytest
import zmq

from mesh.agent.callbook import CallBook
from mesh.agent.outbox import Outbox
from mesh.agent.transport import Transport
from mesh.wire import messages as m

pytestmark = pytest.mark.timeout(30)


def _call(i: int) -> m.Call:
    return m.new(m.Call, call_id=f"c{i}", function="", payload=b"x", avoid=[], inputs=[],
                 owner="o", needs=None)


def _recv_all(sock: zmq.Socket, want: int, timeout: float = 5.0) -> list[bytes]:
    frames, deadline = [], time.monotonic() + timeout
    while len(frames) < want and time.monotonic() < deadline:
        if sock.poll(100):
            frames.append(sock.recv_multipart()[-1])
    return frames


def test_a_turns_frames_for_a_member_go_as_one_batch_in_order():
    ctx = zmq.Context.instance()
    peer = ctx.socket(zmq.ROUTER)  # stands for the member's ROUTER (plaintext)
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    t = Transport(os.urandom(16), "127.0.0.1", 0, key=None)
    try:
        address = f"127.0.0.1:{port}"
        t.connect(address)
        sent = [m.encode(_call(i)) for i in range(5)]
        assert all(t.send(address, f) for f in sent)
        assert _recv_all(peer, 1, timeout=0.3) == []  # nothing before the flush
        assert t.flush() == []
        frames = _recv_all(peer, 1)
        assert len(frames) == 1
        batch = m.decode(frames[0])
        assert type(batch) is m.Batch and batch.frames == sent
        assert t.send(address, sent[0]) and t.flush() == []  # one alone: as itself
        assert _recv_all(peer, 1) == [sent[0]]
        assert not t.send("127.0.0.1:1", sent[0])  # no connection: refused at once
    finally:
        t.close()
        peer.close(0)


def _outbox(transport, members, dispatcher, done: list) -> Outbox:
    """An Outbox over stand-ins for the transport and the cores, whose actions land in ``done``."""
    actions = SimpleNamespace(handle=lambda kind, handler: None,
                              do=lambda acts, now: done.extend(acts))
    return Outbox("00" * 16, transport, members, dispatcher, CallBook(), actions, Counter())


class _Full:
    """A DEALER whose queue is full."""

    def send(self, frame, flags=0):
        raise zmq.Again()


def test_frames_that_cannot_go_come_back_from_flush_and_their_calls_are_placed_again():
    t = Transport(os.urandom(16), "127.0.0.1", 0, key=None)
    try:
        t.dealers["10.0.0.9:1"] = _Full()
        calls = [m.encode(_call(i)) for i in range(3)]
        for f in calls:
            t.send("10.0.0.9:1", f)
        t.send("10.0.0.9:1", m.encode(m.Cancel("c9", "x")))
        unsent = t.flush()
        assert len(unsent) == 1 and unsent[0][0] == "10.0.0.9:1" and t.dropped_sends == 1
        del t.dealers["10.0.0.9:1"]

        failed, done = [], []
        outbox = _outbox(
            SimpleNamespace(flush=lambda: unsent),
            SimpleNamespace(member_at=lambda a: SimpleNamespace(info=SimpleNamespace(id="p1"))),
            SimpleNamespace(forward_failed=lambda cid, pid: failed.append((cid, pid)) or [cid]),
            done)
        outbox.flush()
        assert failed == [("c0", "p1"), ("c1", "p1"), ("c2", "p1")] and done == ["c0", "c1", "c2"]
        assert outbox.dropped == {}  # (the cancel: counted by the transport, not twice)
    finally:
        t.close()


def test_an_answer_our_router_cannot_route_to_a_member_goes_over_our_own_connection():
    """ROUTER_MANDATORY: a member's connection to our ROUTER is gone (or not back yet);
    flush gives its answers back, and the agent sends results over its own connection to
    that member instead of losing them (other frames are counted)."""
    t = Transport(os.urandom(16), "127.0.0.1", 0, key=None)
    try:
        member = os.urandom(16)
        result = m.Result("c1", True, b"v", "a")
        t.reply(member, m.encode(result))
        t.reply(member, m.encode(m.Cancel("c2", "x")))
        t.reply(b"\x00abcd", m.encode(result))  # a client gone: counted, not returned
        unsent = t.flush()
        assert [dest for dest, _ in unsent] == [member] and t.dropped_sends == 2
    finally:
        t.close()

    sent = []
    outbox = _outbox(SimpleNamespace(flush=lambda: unsent),
                     SimpleNamespace(members={member.hex(): object()}), None, sent)
    outbox.flush()
    assert len(sent) == 1 and sent[0].peer_id == member.hex() and sent[0].message == result
    assert outbox.dropped == {}  # (the cancel: counted by the transport, not twice)
