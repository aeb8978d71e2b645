"""Errors of mesh: one base class, and the split between our faults and the peer's.

``LocalProtocolError`` means this process misused the protocol (a bug here);
``RemoteProtocolError`` means a peer or a user sent something we cannot accept.
The agent never lets a ``RemoteProtocolError`` escape its loop: it logs, counts
and drops.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error that mesh raises on purpose."""


class LocalProtocolError(MeshError):
    """This process tried something the protocol does not allow (a bug on our side)."""


class EncodeError(LocalProtocolError):
    """A message cannot become a frame that ``decode`` accepts: a list longer than
    ``MAX_LIST`` (dropping items would change what the message says), containers nested
    deeper than ``MAX_DEPTH``, or a value CBOR cannot carry. Raised by ``encode``, before
    anything is sent."""


class RemoteProtocolError(MeshError):
    """A peer or client sent a frame we cannot accept."""


class DecodeError(RemoteProtocolError):
    """A frame is not a valid message: malformed CBOR, oversized, wrong version,
    unknown type or a field of the wrong type. ``reason`` is a short machine-friendly
    tag used for counting (``oversized``, ``cbor``, ``version``, ``type``, ``field``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class AgentUnreachable(MeshError):
    """No agent answered at the given address within the time allowed."""


class ValueTooLarge(MeshError):
    """A value cannot travel: pickled, it is ``size`` bytes, over the ``limit`` that one
    frame of the wire carries (``mesh.wire.fields.MAX_VALUE``). Raised at once by the
    client for a call's arguments, and the outcome of a call whose result is that big
    (at the worker: the call fails, nothing else does). ``what``: which value."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what}: {size:,} bytes pickled, over the limit of {limit:,} bytes "
                         f"that one message of the mesh carries")
        self.what = what
        self.size = size
        self.limit = limit

    def __reduce__(self):  # (rebuilt from its fields where the caller unpickles it)
        return type(self), (self.what, self.size, self.limit)


class RemoteError(MeshError):
    """A function raised on an agent and its exception could not be rebuilt here.

    Carries the remote exception's type name, message, formatted traceback and the
    name of the agent where it ran."""

    def __init__(self, type_name: str, message: str, traceback: str, agent: str) -> None:
        super().__init__(f"{type_name}: {message} (on agent {agent})")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.agent = agent


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of an exception re-raised from an agent, so that the
    remote traceback is printed under the local one (as concurrent.futures does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
