"""Every message that crosses the wire, defined once.

Theory of operation
-------------------
A frame is one CBOR map: ``{"v": PROTOCOL, "t": <type tag>, <field>: <value>, ...}``.
Each message type is a frozen dataclass registered under its tag; nested records
(``NodeInfo``, ``Load``, ``Digest``) are CBOR maps of their own fields. Arbitrary
Python objects (function code, arguments, results) travel as cloudpickle bytes in
``bytes`` fields and are never unpickled by this module, nor by the agent's loop:
only worker processes unpickle, and only after the transport admitted the peer.

``decode`` checks the size before parsing, then the version, the tag and every
field's type; it raises exactly one error type, ``DecodeError``, whose ``reason``
is used for counting. Unknown extra keys are ignored, so a newer peer of the same
protocol version may add optional fields. ``encode`` never validates again: the
dataclasses are built by our own code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import cbor2

from mesh.errors import DecodeError
from mesh.tree.advert import Advert

PROTOCOL = 1
MAX_FRAME = 64 * 1024 * 1024  # bytes; larger frames are dropped unread
MAX_STR = 4096  # longest accepted text field (names, addresses, error messages are cut)
MAX_LIST = 4096  # longest accepted list field

STATES = ("alive", "suspect", "dead", "left")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class NodeInfo:
    """Who a node is: id (hex), human name, comm address, worker slots, incarnation."""

    id: str
    name: str
    address: str
    cpus: int
    incarnation: int = 0


@dataclass(frozen=True)
class Load:
    """How busy a node is, piggybacked on every heartbeat."""

    cpus: int
    free: int
    queued: int
    running: int


@dataclass(frozen=True)
class Digest:
    """One line of membership gossip: what the sender believes about a node."""

    id: str
    name: str
    address: str
    state: str
    incarnation: int
    cpus: int = 0


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    TAG: ClassVar[str] = ""


@dataclass(frozen=True)
class Ping(Message):
    """Heartbeat sent over our connection to a peer; answered by ``Pong`` on the same path."""

    TAG: ClassVar[str] = "ping"
    seq: int
    sender: NodeInfo
    load: Load
    gossip: list[Digest] = field(default_factory=list)


@dataclass(frozen=True)
class Pong(Message):
    """Answer to ``Ping``; ``seq`` echoes the ping's so the pinger measures round-trip time."""

    TAG: ClassVar[str] = "pong"
    seq: int
    sender: NodeInfo
    load: Load
    gossip: list[Digest] = field(default_factory=list)


@dataclass(frozen=True)
class PingReq(Message):
    """SWIM indirect probe: please ping ``target`` (at ``address``) for me and tell me
    (``IndirectAck``) if it answers, or ``Nack`` if it does not in time."""

    TAG: ClassVar[str] = "ping-req"
    seq: int
    target: str
    address: str
    sender: NodeInfo
    gossip: list[Digest] = field(default_factory=list)


@dataclass(frozen=True)
class IndirectAck(Message):
    """Answer to ``PingReq``: ``target`` answered our ping on your behalf."""

    TAG: ClassVar[str] = "ack"
    seq: int
    target: str
    gossip: list[Digest] = field(default_factory=list)


@dataclass(frozen=True)
class Nack(Message):
    """Answer to ``PingReq``: ``target`` did not answer in time (Lifeguard: tells the
    requester that the helper itself is alive and timely)."""

    TAG: ClassVar[str] = "nack"
    seq: int
    target: str


@dataclass(frozen=True)
class TreeAdvert(Message):
    """The sender's place in the latency tree (``mesh.tree.Advert``), sent to its tree
    neighbours; accepted only from the sender's own connection."""

    TAG: ClassVar[str] = "tree"
    sender: str
    advert: Advert


@dataclass(frozen=True)
class Leave(Message):
    """The sender is leaving on purpose (graceful leave, not a failure)."""

    TAG: ClassVar[str] = "leave"
    node_id: str
    incarnation: int


@dataclass(frozen=True)
class Call(Message):
    """Run a function. ``function`` is ``"module:qualname"`` (the agent imports it) or
    empty, in which case ``payload`` is cloudpickle of ``(fn, args, kwargs)``; otherwise
    ``payload`` is pickle of ``(args, kwargs)``. ``hops`` counts delegations so far;
    ``origin`` is the node id of the agent that accepted the call from a client (the
    one a far holder answers directly when the agent between them is lost);
    ``visited`` lists the agents that delegated it, so it never comes back to one;
    ``attempt`` counts the placements after a holder was lost (0: the first);
    ``avoid`` names agents where an earlier attempt failed (a RETRY goes elsewhere when
    another agent can take it)."""

    TAG: ClassVar[str] = "call"
    call_id: str
    function: str
    payload: bytes
    hops: int = 0
    origin: str = ""
    visited: list[str] = field(default_factory=list)  # agents it was delegated from
    want_json: bool = False  # also return the value as JSON text (REST callers)
    attempt: int = 0
    avoid: list[str] = field(default_factory=list)  # agent names: elsewhere, if any will do


@dataclass(frozen=True)
class Cancel(Message):
    """Whoever asked for ``call_id`` no longer wants its result: a client (a task timed
    out), or the agent that delegated it (it got the result elsewhere, or the call's
    origin died). Sent down the path the call took; holders stop it."""

    TAG: ClassVar[str] = "cancel"
    call_id: str
    reason: str = ""


@dataclass(frozen=True)
class Handback(Message):
    """The sender held ``call_id`` for us and gives it back unfinished (it is leaving,
    or it was declared dead and lost track of it): place it again."""

    TAG: ClassVar[str] = "handback"
    call_id: str
    reason: str = ""


@dataclass(frozen=True)
class Result(Message):
    """Outcome of a ``Call``. On success ``value`` is cloudpickle of the return value.
    On failure ``value`` is cloudpickle of the exception when it could be pickled (else
    empty) and ``error_type``/``error``/``traceback`` describe it in text. ``agent`` is
    the name of the agent where the function ran (or where it failed to be placed)."""

    TAG: ClassVar[str] = "result"
    call_id: str
    ok: bool
    value: bytes
    agent: str
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    json: str = ""  # the value as JSON text, when the call asked for it
    free: int = -1  # the sender's free slots when it sent this (-1: not said): load news
    queued: int = 0  # and its backlog


@dataclass(frozen=True)
class Query(Message):
    """A client asks an agent about itself: ``what`` is ``status`` or ``peers``."""

    TAG: ClassVar[str] = "query"
    qid: int
    what: str
    arg: str = ""  # e.g. the call id of "progress"


@dataclass(frozen=True)
class Resources(Message):
    """COMPSs-style live resource change (a client asks an agent): ``add`` slots
    (``cpus``) or a neighbour (``peer`` = host:port), ``reduce`` slots (lazily: running
    calls finish), or ``lost`` (``peer`` = a member's name or id: dropped at once and
    its calls placed again). Answered by ``Answer`` with the agent's status."""

    TAG: ClassVar[str] = "resources"
    qid: int
    action: str
    cpus: int = 0
    peer: str = ""


@dataclass(frozen=True)
class Answer(Message):
    """Reply to ``Query``: ``body`` is plain JSON-like data (maps, lists, numbers, text)."""

    TAG: ClassVar[str] = "answer"
    qid: int
    what: str
    body: Any
    error: str = ""


MESSAGES: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (Ping, Pong, PingReq, IndirectAck, Nack, TreeAdvert, Leave, Call, Cancel, Handback,
                Result, Query, Resources, Answer)
}
RECORDS = (NodeInfo, Load, Digest, Advert)


# --------------------------------------------------------------------------- codec


def _cut(text: str) -> str:
    """Text longer than MAX_STR, which ``decode`` refuses, cut to its head and tail
    (a traceback keeps its first frames and the exception line)."""
    if len(text) <= MAX_STR:
        return text
    mark = "\n[...]\n"
    head = (MAX_STR - len(mark)) // 2
    return text[:head] + mark + text[len(text) - (MAX_STR - len(mark) - head):]


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = _hints(type(value))
        body = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            body[f.name] = _cut(v) if hints[f.name] is str and isinstance(v, str) else _to_wire(v)
        return body
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


def encode(msg: Message) -> bytes:
    """Encode a message to one CBOR frame. Text fields longer than ``MAX_STR`` (error
    messages and tracebacks of user code) are cut, so that every frame we encode is
    one that ``decode`` accepts."""
    body = _to_wire(msg)
    body["v"] = PROTOCOL
    body["t"] = msg.TAG
    return cbor2.dumps(body)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        hints = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        _HINTS[cls] = hints
    return hints


def _check(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise DecodeError('field')."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        return _check(value, options[0], where)
    if origin is list:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise DecodeError("field", f"{where}: expected a list of at most {MAX_LIST}")
        (inner,) = typing.get_args(hint)
        return [_check(v, inner, f"{where}[]") for v in value]
    if hint in RECORDS:
        return _record(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise DecodeError("field", f"{where}: expected bool")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError("field", f"{where}: expected int")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError("field", f"{where}: expected number")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_STR:
            raise DecodeError("field", f"{where}: expected text of at most {MAX_STR} characters")
        return value
    if hint is bytes:
        if not isinstance(value, bytes):
            raise DecodeError("field", f"{where}: expected bytes")
        return value
    raise TypeError(f"unsupported field type {hint!r} at {where}")  # our bug, not the peer's


def _record(cls: type, body: Any, where: str) -> Any:
    if not isinstance(body, dict):
        raise DecodeError("field", f"{where}: expected a map")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _check(body[f.name], _hints(cls)[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DecodeError("field", f"{where}: missing field {f.name!r}")
    return cls(**kwargs)


def decode(frame: bytes, max_size: int = MAX_FRAME) -> Message:
    """Decode one frame.

    Raises ``DecodeError`` (and only that) when the frame is oversized, not CBOR,
    not a map, of another protocol version, of an unknown type, or has a field of
    the wrong type."""
    if len(frame) > max_size:
        raise DecodeError("oversized", f"{len(frame)} bytes > {max_size}")
    try:
        body = cbor2.loads(frame)
    except Exception as exc:  # cbor2 raises many types on garbage (and RecursionError)
        raise DecodeError("cbor", type(exc).__name__) from None
    if not isinstance(body, dict):
        raise DecodeError("cbor", "frame is not a map")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL:  # True == 1.0 == 1 in Python
        raise DecodeError("version", f"protocol {version!r}, expected {PROTOCOL}")
    tag = body.get("t")
    cls = MESSAGES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise DecodeError("type", f"unknown message type {tag!r}")
    return _record(cls, body, cls.TAG)
