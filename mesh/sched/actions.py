"""What the dispatcher (``mesh.sched.dispatch``) asks the agent to do."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire.messages import Call, Message, Result


@dataclass(frozen=True)
class RunLocal:
    call: Call
    behind: bool = False  # no slot is free: it waits at a busy worker (Dispatcher.depth)


@dataclass(frozen=True)
class Forward:
    peer_id: str
    call: Call


@dataclass(frozen=True)
class Deliver:
    """Send ``result`` back over the ROUTER to the connection ``identity``."""

    identity: bytes
    result: Result


@dataclass(frozen=True)
class SendTo:
    """Send ``message`` to the member ``peer_id`` over our own connection to it."""

    peer_id: str
    message: Message


@dataclass(frozen=True)
class KillLocal:
    """Stop the worker running ``call_id`` (nobody wants its result any more)."""

    call_id: str


Action = RunLocal | Forward | Deliver | SendTo | KillLocal
