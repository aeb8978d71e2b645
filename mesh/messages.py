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
    speed: float = 1.0  # effective cores per slot (< 1 on a CPU-capped device)
    memory: int = 0  # bytes offered to tasks (0: not said)
    labels: list[str] = field(default_factory=list)  # capabilities, for task constraints


@dataclass(frozen=True)
class Digest:
    """One line of membership gossip: what the sender believes about a node."""

    id: str
    name: str
    address: str
    state: str
    incarnation: int
    cpus: int = 0


@dataclass(frozen=True)
class Holding:
    """``nbytes`` of a call's inputs are held by the agent ``node`` (a node id): where
    the call's data is (``mesh.objects``), a hint for placement."""

    node: str
    nbytes: int


@dataclass(frozen=True)
class Needs:
    """What a call needs of the agent that runs it (``@constraint``): ``cpus`` slots,
    ``memory`` bytes offered (0: any), and every one of ``labels``."""

    cpus: int = 1
    memory: int = 0
    labels: list[str] = field(default_factory=list)


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
    inputs: list[Holding] = field(default_factory=list)  # where its big inputs are held
    owner: str = ""  # the client session it is for (its outputs kept at agents are theirs)
    needs: Needs | None = None  # constraints (None: one slot anywhere)


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
class Reclaim(Message):
    """The sender has free slots and nothing waiting (work stealing, ``mesh.sched.dispatch``):
    its load news (``free`` slots, ``queued`` calls, as a ``Result`` carries), and please
    give back those of ``call_ids`` (calls it delegated to us) that have not started here,
    each with a ``Handback``. Started ones run on; their results still come."""

    TAG: ClassVar[str] = "reclaim"
    call_ids: list[str]
    free: int = 0
    queued: int = 0


@dataclass(frozen=True)
class Fetch(Message):
    """Send me the object ``oid`` (a task's output kept where it was made,
    ``mesh.objects``). A client asks its agent, naming the ``holder`` (a node id); an
    agent asks the holder itself (``holder`` empty: you). Answered by ``Object``."""

    TAG: ClassVar[str] = "fetch"
    oid: str
    holder: str = ""


@dataclass(frozen=True)
class Object(Message):
    """Answer to ``Fetch``: the object's pickled bytes, or why not (``error``; it is
    gone: its holder left, or it was freed)."""

    TAG: ClassVar[str] = "object"
    oid: str
    ok: bool
    data: bytes = b""
    error: str = ""


@dataclass(frozen=True)
class Free(Message):
    """Nobody will read these objects of ``holder`` (a node id) again: drop them. Sent by
    a program to its agent, which passes it on to the holder. With ``owner`` (a client
    session that closed): drop every object kept for it, everywhere (the agent passes it
    on to every member), and any that calls of it still make."""

    TAG: ClassVar[str] = "free"
    holder: str
    oids: list[str] = field(default_factory=list)
    owner: str = ""


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


@dataclass(frozen=True)
class Batch(Message):
    """Several messages in one frame, each an encoded frame of its own (never a
    ``Batch``): what a client sends when calls pile up faster than its socket takes
    them, and what an agent sends a client when several results are ready in one turn
    of its loop. One frame instead of one per call: one send, one receive, one wake-up
    on each side for the lot. Each frame inside is decoded (and checked) alone, as if
    it had come by itself; a bad one is dropped without the others."""

    TAG: ClassVar[str] = "batch"
    frames: list[bytes]


MESSAGES: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (Ping, Pong, PingReq, IndirectAck, Nack, TreeAdvert, Leave, Call, Cancel, Handback,
                Reclaim, Fetch, Object, Free, Result, Query, Resources, Answer, Batch)
}
RECORDS = (NodeInfo, Load, Digest, Advert, Holding, Needs)


# --------------------------------------------------------------------------- codec
#
# Every frame of every call goes through ``decode`` and ``encode`` on the agent's loop,
# so the per-type work (type hints, field lists, defaults, which fields need a check
# or a conversion) is done once per class and kept in a ``_Codec``; each field gets a
# small checker function chosen from its type hint.

_NONE = type(None)
_MISSING = dataclasses.MISSING

Checker = typing.Callable[[Any, str], Any]  # (value, where) -> value, or DecodeError


def _cut(text: str) -> str:
    """Text longer than MAX_STR, which ``decode`` refuses, cut to its head and tail
    (a traceback keeps its first frames and the exception line)."""
    if len(text) <= MAX_STR:
        return text
    mark = "\n[...]\n"
    head = (MAX_STR - len(mark)) // 2
    return text[:head] + mark + text[len(text) - (MAX_STR - len(mark) - head):]


def _check_any(value: Any, where: str) -> Any:
    return value


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError("field", f"{where}: expected bool")
    return value


def _check_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError("field", f"{where}: expected int")
    return value


def _check_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError("field", f"{where}: expected number")
    return float(value)


def _check_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_STR:
        raise DecodeError("field", f"{where}: expected text of at most {MAX_STR} characters")
    return value


def _check_bytes(value: Any, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError("field", f"{where}: expected bytes")
    return value


_SCALARS: dict[Any, Checker] = {
    Any: _check_any, bool: _check_bool, int: _check_int, float: _check_float, str: _check_str,
    bytes: _check_bytes,
}


def _checker(hint: Any) -> Checker:
    """The function that checks (and converts) a decoded value of type ``hint``."""
    scalar = _SCALARS.get(hint)
    if scalar is not None:
        return scalar
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        inner = _checker([o for o in args if o is not _NONE][0])
        if _NONE not in args:
            return inner
        return lambda value, where: None if value is None else inner(value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        return _list_checker(_checker(item))
    if hint in RECORDS:
        return lambda value, where: _record(hint, value, where)
    raise TypeError(f"unsupported field type {hint!r}")  # our bug, not the peer's


def _list_checker(item: Checker) -> Checker:
    def check_list(value: Any, where: str) -> list:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise DecodeError("field", f"{where}: expected a list of at most {MAX_LIST}")
        if not value:  # the usual case (Call.visited, Call.avoid); a fresh list from CBOR
            return value
        where = f"{where}[]"
        return [item(v, where) for v in value]
    return check_list


def _plain(hint: Any) -> bool:
    """Whether ``encode`` sends a value of this type as it is (no text to cut, no record
    to turn into a map). Text in lists is not cut: ``decode`` does not bound it."""
    if hint in (bool, int, float, bytes):
        return True
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return item is str or _plain(item)
    if origin in (Union, types.UnionType):
        return all(o is _NONE or _plain(o) for o in typing.get_args(hint))
    return False


class _Codec:
    """What ``encode`` and ``decode`` need to know about one dataclass, worked out once:
    its field names in order; per field its checker, default and default factory; which
    fields are text (cut by ``encode``) and which need converting (records, lists of
    them, ``Any``); and the error paths of its fields under a given parent path."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self.cls = cls
        self.names = tuple(f.name for f in fields)
        self.fields = tuple((f.name, _checker(hints[f.name]), f.default, f.default_factory)
                            for f in fields)
        self.text = tuple(f.name for f in fields if hints[f.name] is str)
        self.nested = tuple(f.name for f in fields
                            if hints[f.name] is not str and not _plain(hints[f.name]))
        # the generated __init__ of a frozen dataclass sets each field through
        # object.__setattr__; one whose fields all live in its __dict__ and that has no
        # __post_init__ is built by filling that dict instead (same object, ~5x cheaper)
        self.direct = not hasattr(cls, "__post_init__") and not hasattr(cls, "__slots__")
        self.defaults = {f.name: f.default for f in fields if f.default is not _MISSING}
        self.factories = tuple((f.name, f.default_factory) for f in fields
                               if f.default_factory is not _MISSING)
        self._paths: dict[str, tuple[str, ...]] = {}

    def paths(self, where: str) -> tuple[str, ...]:
        """``where.field`` for every field (cached: ``where`` comes from our own schema,
        so there are only a few of them)."""
        paths = self._paths.get(where)
        if paths is None:
            paths = self._paths[where] = tuple(f"{where}.{name}" for name in self.names)
        return paths

    def build(self, values: dict[str, Any]) -> Any:
        """An instance from a complete map of field values."""
        if not self.direct:
            return self.cls(**values)
        obj = object.__new__(self.cls)
        obj.__dict__.update(values)
        return obj


_CODECS: dict[type, _Codec] = {}


def _codec(cls: type) -> _Codec:
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = _Codec(cls)
    return codec


def _to_wire(value: Any) -> Any:
    codec = _CODECS.get(type(value))
    if codec is None:
        if isinstance(value, list):
            return [_to_wire(v) for v in value]
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            return value
        codec = _codec(type(value))
    if codec.direct:
        fields = value.__dict__
        body = {name: fields[name] for name in codec.names}
    else:
        body = {name: getattr(value, name) for name in codec.names}
    for name in codec.text:
        text = body[name]
        if isinstance(text, str) and len(text) > MAX_STR:
            body[name] = _cut(text)
    for name in codec.nested:
        v = body[name]
        if v is not None and (type(v) is not list or v):  # (None and [] stay as they are)
            body[name] = _to_wire(v)
    return body


def encode(msg: Message) -> bytes:
    """Encode a message to one CBOR frame. Text fields longer than ``MAX_STR`` (error
    messages and tracebacks of user code) are cut, so that every frame we encode is
    one that ``decode`` accepts."""
    body = _to_wire(msg)
    body["v"] = PROTOCOL
    body["t"] = msg.TAG
    return cbor2.dumps(body)


def new(cls: type, **values: Any) -> Any:
    """``cls(**values)`` for a message or record class, without the generated frozen
    ``__init__`` (which sets each field through ``object.__setattr__``): fields not
    given take their defaults. As for ``evolve``, nothing is validated: for our own
    code, on a per-call path (the client makes a ``Call`` per task)."""
    codec = _codec(cls)
    if not codec.direct:
        return cls(**values)
    fields = dict(codec.defaults)
    for name, factory in codec.factories:
        fields[name] = factory()
    fields.update(values)
    if len(fields) != len(codec.names):
        missing = [n for n in codec.names if n not in fields]
        raise TypeError(f"{cls.__name__}: missing {missing}" if missing else
                        f"{cls.__name__} has no field {sorted(set(fields) - set(codec.names))}")
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def evolve(msg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for messages and records, without the generated
    ``__init__`` (a copy of the fields with ``changes`` applied; like ``replace``,
    nothing is validated, and an unknown field name is a TypeError)."""
    codec = _codec(type(msg))
    if not codec.direct:
        return dataclasses.replace(msg, **changes)
    for name in changes:
        if name not in codec.names:
            raise TypeError(f"{type(msg).__name__} has no field {name!r}")
    obj = object.__new__(codec.cls)  # (a direct codec's instance is its __dict__)
    obj.__dict__.update(msg.__dict__)
    obj.__dict__.update(changes)
    return obj


def _record(cls: type, body: Any, where: str) -> Any:
    """An instance of ``cls`` from the CBOR map ``body``, every field checked; a missing
    field takes its default, or is an error if it has none. ``where`` names the map in
    errors (``call``, ``ping.sender``, ``ping.gossip[]``)."""
    if not isinstance(body, dict):
        raise DecodeError("field", f"{where}: expected a map")
    codec = _codec(cls)
    values = {}
    for (name, check, default, factory), path in zip(codec.fields, codec.paths(where), strict=True):
        if name in body:
            values[name] = check(body[name], path)
        elif default is not _MISSING:
            values[name] = default
        elif factory is not _MISSING:
            values[name] = factory()
        else:
            raise DecodeError("field", f"{where}: missing field {name!r}")
    return codec.build(values)


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


BATCH_BYTES = 1 << 20  # frames bigger than this travel alone; a batch stops growing there


def batches(frames: list[bytes]) -> list[bytes]:
    """``frames`` (encoded messages, in order) as few frames as possible: runs of small
    frames become one ``Batch`` each (at most ``MAX_LIST`` frames and about
    ``BATCH_BYTES``); a lone frame and a big frame go as they are. Order is kept."""
    if len(frames) == 1:
        return frames
    out: list[bytes] = []
    run: list[bytes] = []
    size = 0

    def close_run() -> None:
        nonlocal size
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(encode(Batch(list(run))))
        run.clear()
        size = 0

    for frame in frames:
        if len(frame) > BATCH_BYTES:
            close_run()
            out.append(frame)
            continue
        if run and (size + len(frame) > BATCH_BYTES or len(run) >= MAX_LIST):
            close_run()
        run.append(frame)
        size += len(frame)
    close_run()
    return out


def unbatch(msg: Message, max_size: int = MAX_FRAME) -> tuple[list[Message], list[DecodeError]]:
    """The messages in ``msg`` (itself when it is not a ``Batch``), and the errors of
    the frames inside that did not decode (a ``Batch`` inside a ``Batch`` is one)."""
    if not isinstance(msg, Batch):
        return [msg], []
    msgs: list[Message] = []
    errors: list[DecodeError] = []
    for frame in msg.frames:
        try:
            inner = decode(frame, max_size)
        except DecodeError as exc:
            errors.append(exc)
            continue
        if isinstance(inner, Batch):
            errors.append(DecodeError("type", "a batch inside a batch"))
        else:
            msgs.append(inner)
    return msgs, errors
