"""Every message that crosses the wire, defined once.

Theory of operation
-------------------
A frame is one CBOR map: ``{"v": PROTOCOL, "t": <type tag>, <field>: <value>, ...}``.
Each message type is a frozen dataclass registered under its tag (``MESSAGES``); nested
records (``RECORDS``: ``NodeInfo``, ``Load``, ``Digest``, ...) are CBOR maps of their own
fields. Arbitrary Python objects (function code, arguments, results) travel as
cloudpickle bytes in ``bytes`` fields and are never unpickled by this module, nor by the
agent's loop: only worker processes unpickle, and only after the transport admitted the
peer.

The codec (``mesh.wire.codec``) works from these definitions: ``decode`` checks the size
before parsing, then the version, the tag and every field's type against the type hints
here; it raises exactly one error type, ``DecodeError``, whose ``reason`` is used for
counting. Unknown extra keys are ignored, so a newer peer of the same protocol version
may add optional fields. ``encode`` produces only frames that ``decode`` accepts: it cuts
text beyond ``MAX_STR`` and raises ``EncodeError`` for a list beyond ``MAX_LIST`` or nesting
beyond ``MAX_DEPTH`` (a sender of many ids splits them: ``Free.split``); it does not
otherwise validate, the dataclasses are built by our own code. ``encode``, ``decode``,
``new``, ``evolve``, ``batches``, ``unbatch`` and the bounds (``MAX_FRAME``, ``MAX_VALUE``, ``MAX_STR``,
``MAX_LIST``, ``MAX_DEPTH``, ``BATCH_BYTES``) are the codec's, made available here so that
one import gives the whole wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2  # noqa: F401 (the codec's parser: tests reach it as messages.cbor2)

from mesh.wire.codec import (  # noqa: F401
    BATCH_BYTES,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_LIST,
    MAX_STR,
    MAX_VALUE,
    Codec,
)
from mesh.wire.codec import cut as _cut  # noqa: F401

PROTOCOL = 3  # the "v" of every frame. 2: members send each other Batch frames too (an
# agent of protocol 1 would drop them as unexpected: the versions refuse each other instead).
# 3: leases (Holds, Held): members and clients ask which calls are still held; an agent of
# protocol 2 would drop the questions as unexpected, and its peers would then take every
# call it holds for lost and run it again

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
    the call's data is (``mesh.sched.objects``), a hint for placement."""

    node: str
    nbytes: int


@dataclass(frozen=True)
class Needs:
    """What a call needs of the agent that runs it (``@constraint``): ``cpus`` slots,
    ``memory`` bytes offered (0: any), and every one of ``labels``."""

    cpus: int = 1
    memory: int = 0
    labels: list[str] = field(default_factory=list)


NO_ROUTE = -1.0  # ``Advert.rank`` of a sender with no route to a root now


@dataclass(frozen=True)
class Advert:
    """What a node says about its place in the latency tree (``mesh.tree``, where adverts
    are ordered: ``mesh.tree.advert``).

    ``root``/``term``/``settled``/``score``: the root key of the sender's tree ("" and
    -1 while it has never had one). ``succeeds``: the root whose loss opened this term
    ("" for a first root). ``seq``: the root's sequence number as the sender last got
    it. ``rank``: path latency to the root in seconds, or ``NO_ROUTE``. ``parent``:
    the sender's parent ("" if none). ``path``: the sender's ancestors, parent first,
    root last (empty for the root). ``stamp``: the sender's advert counter, so a
    receiver can drop an advert that arrives after a newer one. ``ask``: 1 asks the
    receiver to answer at once with its own advert.
    """

    root: str = ""
    term: int = -1
    settled: int = 0
    score: float = 0.0
    succeeds: str = ""
    seq: int = 0
    rank: float = NO_ROUTE
    parent: str = ""
    path: list[str] = field(default_factory=list)
    stamp: int = 0
    ask: int = 0


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
    """The sender's place in the latency tree (``Advert``), sent to its tree neighbours;
    accepted only from the sender's own connection."""

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
    origin died). Sent down the path the call took; holders stop it. A client names its
    session (``owner``, as its calls do): its Cancel reaches the call also from a new
    connection (after a reconnection)."""

    TAG: ClassVar[str] = "cancel"
    call_id: str
    reason: str = ""
    owner: str = ""


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
class Holds(Message):
    """Which of these calls, that I handed you, do you still hold? A lease question
    (``mesh.sched.leases``) from the hop that handed each call on: an agent that delegated
    them, or a client that sent them to its agent. At most ``MAX_LIST`` ids, oldest
    first. Answered at once with ``Held``, on the same connection."""

    TAG: ClassVar[str] = "holds"
    call_ids: list[str]


@dataclass(frozen=True)
class Held(Message):
    """Answer to ``Holds``: ``held``, the calls the sender holds for the asker (a pending
    entry with the asker among its requesters: its outcome will come); ``unknown``, the
    rest (never arrived, or ended and its outcome was sent: the asker places or sends
    them again; the first outcome wins)."""

    TAG: ClassVar[str] = "held"
    held: list[str]
    unknown: list[str]


@dataclass(frozen=True)
class Fetch(Message):
    """Send me the object ``oid`` (a task's output kept where it was made,
    ``mesh.sched.objects``). A client asks its agent, naming the ``holder`` (a node id); an
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

    @classmethod
    def split(cls, holder: str, oids: list[str]) -> list[Free]:
        """``Free`` messages for ``oids`` of ``holder``, at most ``MAX_LIST`` ids each (the
        most one frame may carry: ``encode`` refuses a longer list). What every sender of
        many ids uses."""
        return [cls(holder, oids[i:i + MAX_LIST]) for i in range(0, len(oids), MAX_LIST)]


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
    """A client asks an agent about itself: ``what`` is ``status``, ``peers``, ``tree-node``,
    ``metrics``, ``progress`` (of the call ``arg``) or ``ping`` (a client's heartbeat,
    ``mesh.client.heartbeat``: answered at once with no body; an agent that does not know
    a ``what`` still answers, with an error)."""

    TAG: ClassVar[str] = "query"
    qid: int
    what: str
    arg: str = ""  # e.g. the call id of "progress"


@dataclass(frozen=True)
class Resources(Message):
    """COMPSs-style live resource change (a client asks an agent): ``add`` slots
    (``cpus``) and ``labels`` or a neighbour (``peer`` = host:port), ``reduce`` slots
    (lazily: running calls finish) and ``labels``, or ``lost`` (``peer`` = a member's name
    or id: dropped at once and its calls placed again). Answered by ``Answer`` with the
    agent's status."""

    TAG: ClassVar[str] = "resources"
    qid: int
    action: str
    cpus: int = 0
    peer: str = ""
    labels: list[str] = field(default_factory=list)  # capabilities to add or take away


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
    them, and what an agent sends a client, or another member, when one turn of its
    loop has several messages for it (calls it delegates, results, probes). One frame
    instead of one per message: one send, one receive, one wake-up on each side for
    the lot. Each frame inside is decoded (and checked) alone, as if
    it had come by itself; a bad one is dropped without the others."""

    TAG: ClassVar[str] = "batch"
    frames: list[bytes]


MESSAGES: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (Ping, Pong, PingReq, IndirectAck, Nack, TreeAdvert, Leave, Call, Cancel, Handback,
                Reclaim, Holds, Held, Fetch, Object, Free, Result, Query, Resources, Answer, Batch)
}
RECORDS = (NodeInfo, Load, Digest, Advert, Holding, Needs)


# --------------------------------------------------------------------------- codec

CODEC = Codec(PROTOCOL, MESSAGES, RECORDS, Batch)  # (per-class code made at first use)

encode = CODEC.encode
decode = CODEC.decode
new = CODEC.new
evolve = CODEC.evolve
batches = CODEC.batches
unbatch = CODEC.unbatch
