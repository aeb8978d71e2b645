"""The agent's parts in-process, with stand-ins for the cores: how input reaches the handler
of its message type, whatever socket it came on; what the agent may import."""

from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from mesh.agent.actions import Actions
from mesh.agent.input import Input
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


def _input() -> tuple[Input, list]:
    got: list = []
    member = SimpleNamespace(info=SimpleNamespace(id=MEMBER.hex()))
    members = SimpleNamespace(members={MEMBER.hex(): member},
                              member_at=lambda address: member if address == "10.0.0.2:1" else None,
                              heard_from=lambda peer_id, now: [])
    dispatcher = SimpleNamespace(remote_result=lambda msg, peer: got.append(("result", msg, peer)) or [],
                                 handed_back=lambda cid, peer: got.append(("handback", cid, peer)) or [])
    transport = SimpleNamespace(dealers={"10.0.0.2:1": None, "10.0.0.3:1": None})
    return Input(m.MAX_FRAME, members, dispatcher, transport, Actions(), Counter()), got


def test_results_and_handbacks_from_a_member_are_one_handler_on_either_socket():
    inp, got = _input()
    result, handback = m.Result("c1", True, b"v", "a"), m.Handback("c2")
    inp._on_frame(MEMBER, m.encode(result), 0.0)  # on our ROUTER
    inp._on_frame(MEMBER, m.encode(handback), 0.0)
    inp.read_dealer(_Dealer([m.encode(result), m.encode(handback)]), "10.0.0.2:1", 0.0)  # our own
    assert got == [("result", result, MEMBER.hex()), ("handback", "c2", MEMBER.hex())] * 2
    assert inp.dropped == {}


def test_results_from_strangers_and_unregistered_types_are_dropped_and_counted():
    inp, got = _input()
    inp._on_frame(os.urandom(16), m.encode(m.Result("c1", True, b"v", "a")), 0.0)  # not a member
    inp.read_dealer(_Dealer([m.encode(m.Handback("c2"))]), "10.0.0.3:1", 0.0)  # nobody we know
    inp.read_dealer(_Dealer([m.encode(m.Call("c3", "f:g", b""))]), "10.0.0.2:1", 0.0)  # a request
    assert got == [] and inp.dropped == {"unexpected": 3}


def test_a_message_type_has_one_handler_and_an_action_type_one_part():
    inp, _ = _input()
    with pytest.raises(ValueError):
        inp.handle(m.Result, lambda *args: None)
    actions = Actions()
    actions.handle(m.Call, lambda act, now: None)
    with pytest.raises(ValueError):
        actions.handle(m.Call, lambda act, now: None)
    with pytest.raises(TypeError):
        actions.do([object()], 0.0)


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
