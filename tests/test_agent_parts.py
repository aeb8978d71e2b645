"""The agent's parts in-process, with stand-ins for the cores: how input reaches the handler
of its message type, whatever socket it came on; what the agent may import."""

from __future__ import annotations

import ast
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from mesh.agent.actions import Actions
from mesh.agent.agent import Agent, AgentConfig
from mesh.agent.faults import STORM, Faults
from mesh.agent.input import Input
from mesh.discovery import membership as mb
from mesh.wire import messages as m
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)

MEMBER = os.urandom(16)


class _Dealer:
    """Our connection to a member, with frames waiting on it."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)

    def recv(self, flags=0) -> bytes:
        if not self.frames:
            raise zmq.Again()
        return self.frames.pop(0)


def _read(inp: Input, frames: list[bytes], address: str) -> None:
    """``frames`` waiting on our connection to ``address``, read as the loop reads them."""
    inp.transport.dealers[address] = sock = _Dealer(frames)
    inp.read_dealer(sock, address, 0.0)


def _input() -> tuple[Input, list]:
    got: list = []
    member = SimpleNamespace(info=SimpleNamespace(id=MEMBER.hex()))
    members = SimpleNamespace(members={MEMBER.hex(): member},
                              member_at=lambda address: member if address == "10.0.0.2:1" else None,
                              heard_from=lambda peer_id, now: [])
    dispatcher = SimpleNamespace(remote_result=lambda msg, peer: got.append(("result", msg, peer)) or [],
                                 handed_back=lambda cid, peer: got.append(("handback", cid, peer)) or [],
                                 held=lambda held, unknown, peer: got.append(("held", held, peer)) or [],
                                 holding=lambda ids, identity: m.Held(ids[:1], ids[1:]),
                                 heard=lambda identity: None)
    transport = SimpleNamespace(dealers={"10.0.0.2:1": None, "10.0.0.3:1": None},
                                reply=lambda identity, frame: got.append(("reply", identity, frame)))
    faults = Faults(lambda: got.append("storm"))
    return Input(m.MAX_FRAME, members, dispatcher, transport, Actions(faults), Counter(), faults), got


def test_results_and_handbacks_from_a_member_are_one_handler_on_either_socket():
    inp, got = _input()
    result, handback = m.Result("c1", True, b"v", "a"), m.Handback("c2")
    inp._on_frame(MEMBER, m.encode(result), 0.0)  # on our ROUTER
    inp._on_frame(MEMBER, m.encode(handback), 0.0)
    _read(inp, [m.encode(result), m.encode(handback)], "10.0.0.2:1")  # our own
    assert got == [("result", result, MEMBER.hex()), ("handback", "c2", MEMBER.hex())] * 2
    assert inp.dropped == {}


def test_lease_questions_are_answered_where_they_came_from_and_answers_taken_on_either_socket():
    inp, got = _input()
    inp.dispatcher.heard = lambda identity: got.append(("heard", identity))  # (its calls stay)
    client = b"\x00" + os.urandom(4)
    inp._on_frame(client, m.encode(m.Holds(["c1", "c2"])), 0.0)  # a client asks
    assert got == [("heard", client), ("reply", client, m.encode(m.Held(["c1"], ["c2"])))]
    got.clear()
    inp._on_frame(MEMBER, m.encode(m.Held(["c3"], [])), 0.0)  # (its ROUTER could not answer)
    _read(inp, [m.encode(m.Held(["c4"], []))], "10.0.0.2:1")  # the answer, on our connection
    inp._on_frame(client, m.encode(m.Held(["c5"], [])), 0.0)  # a client has no lease of ours
    assert got == [("heard", MEMBER), ("held", ["c3"], MEMBER.hex()), ("held", ["c4"], MEMBER.hex()),
                   ("heard", client)]
    assert inp.dropped == {"unexpected": 1}


def test_results_from_strangers_and_unregistered_types_are_dropped_and_counted():
    inp, got = _input()
    inp._on_frame(os.urandom(16), m.encode(m.Result("c1", True, b"v", "a")), 0.0)  # not a member
    _read(inp, [m.encode(m.Handback("c2"))], "10.0.0.3:1")  # nobody we know
    _read(inp, [m.encode(m.Call("c3", "f:g", b""))], "10.0.0.2:1")  # a request
    assert got == [] and inp.dropped == {"unexpected": 3}


def test_a_message_type_has_one_handler_and_an_action_type_one_part():
    inp, _ = _input()
    with pytest.raises(ValueError):
        inp.handle(m.Result, lambda *args: None)
    actions = Actions(Faults(lambda: None))
    actions.handle(m.Call, lambda act, now: None)
    with pytest.raises(ValueError):
        actions.handle(m.Call, lambda act, now: None)


def test_the_agent_never_imports_a_face():
    """The shell depends on no user interface: faces (REST) are given the agent's handle by
    whoever composes them (``mesh join``)."""
    imported = set()
    for path in sorted(Path(ROOT, "mesh", "agent").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert not [name for name in imported if name.startswith(("mesh.faces", "mesh.cli"))]


def test_a_failing_handler_costs_its_message_and_a_call_nobody_took_fails_at_once():
    """An exception in a handler (a core's bug) is counted by where, the next message is
    handled, and the client whose Call could not be taken gets an AgentFault."""
    replies: list = []
    inp, got = _input()
    inp.transport.reply = lambda identity, frame: replies.append((identity, m.decode(frame)))
    inp.members.me = SimpleNamespace(name="a0")
    inp.dispatcher.pending = {}

    def submit(msg, identity, peer_id, now):
        if msg.function == "bad:one":
            raise IndexError("an invariant broke")
        got.append(("submitted", msg.call_id))
        return []

    inp.dispatcher.submit = submit
    client = b"\x00abcd"
    batch = m.Batch([m.encode(m.Call("c1", "bad:one", b"")), m.encode(m.Call("c2", "good:one", b""))])
    inp._on_frame(client, m.encode(batch), 0.0)
    assert got == [("submitted", "c2")]
    assert inp.faults.counts == {"input:Call": 1}
    [(to, result)] = replies
    assert to == client and result.call_id == "c1" and not result.ok
    assert result.error_type == "AgentFault" and "IndexError: an invariant broke" in result.error


def test_an_action_that_raises_costs_that_action_only():
    done: list = []
    faults = Faults(lambda: done.append("storm"))
    actions = Actions(faults)
    actions.handle(m.Cancel, lambda act, now: done.append(act.call_id) if act.call_id != "x" else 1 / 0)
    actions.do([m.Cancel("a"), m.Cancel("x"), object(), m.Cancel("b")], 0.0)
    assert done == ["a", "b"]
    assert faults.counts == {"action:Cancel": 1, "action:object": 1}


def test_the_same_fault_in_a_tight_loop_makes_the_agent_leave_once():
    left: list = []
    faults = Faults(lambda: left.append(True))
    for i in range(STORM - 1):
        faults.caught("tick:tree", "the tree's timers", KeyError("k"), i * 0.01)
    faults.caught("tick:tree", "the tree's timers", KeyError("other"), 1.0)  # not the same error
    assert left == [] and faults.storm is None
    faults.caught("tick:tree", "the tree's timers", KeyError("k"), 1.0)
    assert left == [True] and "KeyError" in faults.storm
    for _ in range(STORM):
        faults.caught("tick:tree", "the tree's timers", KeyError("k"), 2.0)
    assert left == [True]  # (once)
    slow = Faults(lambda: left.append("slow"))
    for i in range(3 * STORM):  # the same error, but once a second: counted, no storm
        slow.caught("tick:tree", "the tree's timers", KeyError("k"), float(i))
    assert slow.storm is None and slow.counts["tick:tree"] == 3 * STORM


def test_an_agent_s_first_ping_says_what_it_offers():
    """Seeds are pinged in start(), before the loop's first tick: that Ping said 0 slots
    and 0 free, so its seed placed nothing on the new agent until its next one (a RETRY
    that should go there ran again where it had failed: test_api)."""
    agent = Agent(AgentConfig(name="fresh", comm_port=0, mdns=False, cpus=2))
    try:
        acts = agent.members.add_seed("127.0.0.1:9", time.monotonic())
        [ping] = [a.message for a in acts if isinstance(a, mb.Send) and isinstance(a.message, m.Ping)]
        assert (ping.load.cpus, ping.load.free) == (2, 2)
    finally:
        agent.close()
