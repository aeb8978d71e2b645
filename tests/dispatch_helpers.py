"""Shared builders and checks for the dispatcher tests (``tests/test_dispatch*.py``).

Calls and results to feed a ``Dispatcher``, filters for its returned actions, and
``check``: the invariants that hold after every event.
"""

from __future__ import annotations

from mesh.sched.dispatch import Deliver, Dispatcher, Forward
from mesh.wire.messages import Call, Result

CLIENT = b"client"


def call(n: int | str, hops: int = 0) -> Call:
    return Call(f"c{n}", "math:factorial", b"args", hops, "origin")


def ok(call_id: str, agent: str = "x") -> Result:
    return Result(call_id, True, b"value", agent)


def forwards(acts) -> list[tuple[str, str]]:
    return [(a.peer_id, a.call.call_id) for a in acts if isinstance(a, Forward)]


def failures(acts) -> list[tuple[bytes, str, str]]:
    return [(a.identity, a.result.call_id, a.result.error_type)
            for a in acts if isinstance(a, Deliver) and not a.result.ok]


def check(d: Dispatcher) -> None:
    """Invariants that hold after every event."""
    for call_id, entry in d.pending.items():
        assert entry.call.call_id == call_id
        if entry.where == "backlog":
            assert call_id in d.backlog
        elif entry.where != "local":  # held by a peer: one it may go to
            assert entry.where not in entry.peers_asking()
    local = sum(1 for e in d.pending.values() if e.where == "local")
    assert local <= d.running
    assert d.queued >= sum(1 for e in d.pending.values() if e.where == "backlog")
    assert d.free == max(d.cpus - d.running, 0)
