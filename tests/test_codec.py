"""Tests for mesh.wire.codec: the generated encoders, decoders and ``new`` behave exactly as
the generic reference path (``Codec(..., generate=False)``, the code they replaced).

Differential: Hypothesis makes valid messages of every registered type and mutated
maps of them (fields removed, wrong types, bools for ints, floats, overlong text and
lists, nested garbage, extra keys), and each is decoded by both paths: the same object
(same types all the way down), or ``DecodeError`` with the same reason and detail.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import DecodeError, EncodeError
from mesh.wire import codec as wire
from mesh.wire import messages as m
from tests.test_messages import EXAMPLES, STRATEGIES, huge_ints, ints, json_like

pytestmark = pytest.mark.timeout(120)

DIFF = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REFERENCE = wire.Codec(m.PROTOCOL, m.MESSAGES, m.RECORDS, m.Batch, generate=False)


def deep(value: Any) -> Any:
    """``value`` as nested tuples that tell apart what ``==`` does not (1 and 1.0, True
    and 1, a record and another with the same fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), tuple((f.name, deep(getattr(value, f.name)))
                                   for f in dataclasses.fields(value)))
    if isinstance(value, list):
        return (list, tuple(deep(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((deep(k), deep(v)) for k, v in value.items()))
    return (type(value), repr(value))


def outcome(codec: Any, frame: bytes) -> tuple:
    try:
        msg = codec.decode(frame)
    except DecodeError as exc:
        return ("error", exc.reason, exc.detail)
    return ("ok", deep(msg), tuple(vars(msg)))  # (and the same __dict__ order)


def assert_same(frame: bytes) -> tuple:
    got, want = outcome(m.CODEC, frame), outcome(REFERENCE, frame)
    assert got == want
    return got


# ----------------------------------------------------------------------------- mutations

garbage = st.recursive(
    st.none() | st.booleans() | ints | huge_ints | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
    | st.sampled_from([0, 1, -1, 1.0, 0.0, 2**64, "", b"", [], {}, "x" * (m.MAX_STR + 1),
                       "y" * m.MAX_STR, [0] * (m.MAX_LIST + 1), ["s"] * (m.MAX_LIST + 1),
                       [b""] * m.MAX_LIST, [{}], [None], {"node": "n", "nbytes": 1},
                       {"cpus": 1, "memory": 0, "labels": []}, cbor2.CBORTag(99, "x")]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)


def fresh(value: Any) -> Any:
    """A copy of a drawn value (the constants among them are shared between draws)."""
    return cbor2.loads(cbor2.dumps(value))


def places(body: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) inside a decoded map, nested maps and lists included."""
    found = []
    if isinstance(body, dict):
        for key, value in body.items():
            found.append((body, key))
            found += places(value)
    elif isinstance(body, list):
        for i, value in enumerate(body[:8]):  # (not every item of a long list)
            found.append((body, i))
            found += places(value)
    return found


def mutate(body: dict, data: st.DataObject) -> dict:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        spots = places(body)
        if not spots:
            break
        container, key = data.draw(st.sampled_from(spots), label="where")
        kind = data.draw(st.sampled_from(["delete", "replace", "replace", "extra"]), label="kind")
        if kind == "delete":
            del container[key]
        elif kind == "replace":
            container[key] = fresh(data.draw(garbage, label="value"))
        elif isinstance(container, dict):
            key = data.draw(st.text(max_size=6) | ints, label="key")
            container[key] = fresh(data.draw(garbage, label="extra"))
        else:
            container.append(fresh(data.draw(garbage, label="item")))
    return body


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda x: type(x).__name__)
def test_examples_decode_the_same(msg):
    assert assert_same(m.encode(msg))[0] == "ok"


BAD = [True, False, 0, 1, -1, 2**70, 1.5, 1.0, float("nan"), "", "x", "x" * (m.MAX_STR + 1), b"b",
       [], [1], ["s"], [b""], [{}], [0] * (m.MAX_LIST + 1), {}, {"a": 1}, {"node": "n"},
       cbor2.CBORTag(99, [1])]


def key_paths(body: Any, prefix: tuple = ()) -> list[tuple]:
    """The path of every key in a decoded map, and in the maps nested in it (in lists:
    the first item only)."""
    found = []
    items = body.items() if isinstance(body, dict) else enumerate(body[:1]) if isinstance(
        body, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        found += key_paths(value, (*prefix, key))
    return found


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_field_removed_or_replaced_decodes_the_same(msg):
    """Exhaustively, for the examples: each key, at every level, removed, and its value
    replaced by each of ``BAD``."""
    frame = m.encode(msg)
    for path in key_paths(cbor2.loads(frame)):
        for value in [None, *BAD]:
            for remove in ([True, False] if value is None else [False]):
                body = cbor2.loads(frame)
                target = body
                for step in path[:-1]:
                    target = target[step]
                if remove:
                    del target[path[-1]]
                else:
                    target[path[-1]] = value
                assert_same(cbor2.dumps(body))


@pytest.mark.parametrize("tag", sorted(m.MESSAGES))
@settings(DIFF, max_examples=80)
@given(data=st.data())
def test_valid_messages_decode_the_same(tag, data):
    msg = data.draw(STRATEGIES[tag])
    got = assert_same(REFERENCE.encode(msg))
    assert got[0] == "ok"


@pytest.mark.parametrize("tag", sorted(m.MESSAGES))
@settings(DIFF, max_examples=150)
@given(data=st.data())
def test_mutated_messages_decode_the_same(tag, data):
    body = cbor2.loads(m.encode(data.draw(STRATEGIES[tag])))
    assert_same(cbor2.dumps(mutate(body, data)))


@settings(DIFF, max_examples=300)
@given(st.sampled_from(sorted(m.MESSAGES)), st.dictionaries(
    st.sampled_from(sorted({f.name for cls in (*m.MESSAGES.values(), *m.RECORDS)
                            for f in dataclasses.fields(cls)})), garbage, max_size=12))
def test_maps_of_field_names_and_garbage_decode_the_same(tag, fields):
    assert_same(cbor2.dumps({"v": m.PROTOCOL, "t": tag, **fields}))


@settings(DIFF, max_examples=200)
@given(st.one_of(garbage, st.dictionaries(st.sampled_from(["v", "t", "seq", 1]), garbage)),
       st.sampled_from([None, "ping", "call", "nope", 1, True]))
def test_frames_without_a_good_head_decode_the_same(body, tag):
    if isinstance(body, dict) and tag is not None:
        body = {**body, "v": m.PROTOCOL, "t": tag}
    assert_same(cbor2.dumps(body))


@pytest.mark.parametrize("frame", [b"", b"\xff", b"\x80", b"\xa0", b"\xa1\x61v\x01",
                                   b"\xa2\x61v\xf5\x61t\x64ping"])
def test_broken_frames_fail_the_same(frame):
    assert assert_same(frame)[0] == "error"
    with pytest.raises(DecodeError) as info:
        m.decode(frame, max_size=len(frame) - 1 if frame else -1)
    assert info.value.reason == "oversized"


def test_valid_frames_take_the_generated_path_only():
    """The generic ``record`` is the fallback for frames that need it: what our encoder
    makes never does (else the speed-up would silently be lost)."""
    codec = wire.Codec(m.PROTOCOL, m.MESSAGES, m.RECORDS, m.Batch)
    slow = []
    generic = codec.record
    codec.record = lambda cls, body, where: slow.append(cls) or generic(cls, body, where)
    for msg in EXAMPLES:
        assert codec.decode(codec.encode(msg)) == msg
    assert slow == []
    body = cbor2.loads(m.encode(EXAMPLES[0]))
    del body["gossip"][0]["cpus"]  # defaulted: by the generic path
    assert codec.decode(cbor2.dumps(body)).gossip[0].cpus == 0 and slow == [m.Digest]


def test_ints_for_floats_and_defaults_go_the_generic_way():
    advert = m.Advert(root="r", term=3, score=2, rank=1, path=["p"])
    frame = m.encode(m.TreeAdvert("s", advert))
    assert assert_same(frame)[0] == "ok"
    assert type(m.decode(frame).advert.score) is float
    assert assert_same(cbor2.dumps({"v": m.PROTOCOL, "t": "call", "call_id": "c", "function": "",
                                    "payload": b""}))[0] == "ok"


# ----------------------------------------------------------------------------- encode


odd_text = st.text(max_size=8) | st.sampled_from(["t" * (m.MAX_STR + 1), "u" * 10_000, ""])


@pytest.mark.parametrize("tag", sorted(m.MESSAGES))
@settings(DIFF, max_examples=60)
@given(data=st.data())
def test_encode_is_byte_for_byte_the_reference(tag, data):
    msg = data.draw(STRATEGIES[tag])
    texts = {f.name: data.draw(odd_text) for f in dataclasses.fields(msg)
             if f.type in ("str", str) and data.draw(st.booleans())}
    msg = dataclasses.replace(msg, **texts)  # (long text is cut the same way)
    frame = m.encode(msg)
    assert frame == REFERENCE.encode(msg)
    assert assert_same(frame)[0] == "ok"


class Name(str):
    """A str subclass in a text field (``encode`` cuts any str, as ``isinstance`` says)."""


def test_encode_of_unusual_values_is_the_reference():
    for msg in [
        m.Result(Name("c"), True, b"", Name("a" * (m.MAX_STR + 5))),
        m.Cancel(None, 5),  # (wrong types are sent as they are: decode refuses them)
        m.Ping(1, m.NodeInfo("i", "n", "a", 1), m.Load(1, 1, 0, 0, speed=1, labels=["x" * 9000])),
        m.Call("c", "", b"", inputs=[m.Holding("n", 1)], needs=m.Needs(labels=["gpu"])),
        m.Call("c", "", b"", inputs=(m.Holding("n", 1),)),  # a tuple is not converted: fails
        m.Answer(1, "status", [m.Holding("n", 1), {"k": m.Holding("n", 2)}, [m.Needs()]]),
        m.Answer(1, "status", m.Load(1, 2, 3, 4)),
        m.Answer(1, "status", m.Holding),  # a class is not turned into a map
        m.TreeAdvert("s", m.Advert(score=1, rank=2)),
    ]:
        assert encoded(m.CODEC, msg) == encoded(REFERENCE, msg), msg
    for bad in (5, [m.Cancel("c")], m.NodeInfo("i", "n", "a", 1)):
        assert encoded(m.CODEC, bad)[0] == encoded(REFERENCE, bad)[0] == "raises"
        assert encoded(m.CODEC, bad) == encoded(REFERENCE, bad)


def encoded(codec: Any, msg: Any) -> tuple:
    try:
        return ("ok", codec.encode(msg))
    except Exception as exc:
        return ("raises", type(exc), str(exc))


# ----------------------------------------------------------------------------- new, evolve


@settings(DIFF, max_examples=300)
@given(st.sampled_from([*m.MESSAGES.values(), *m.RECORDS]), st.data())
def test_new_is_the_reference(cls, data):
    names = [f.name for f in dataclasses.fields(cls)]
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    values = {name: fresh(data.draw(json_like)) for name in chosen}
    if data.draw(st.booleans()):
        values[data.draw(st.sampled_from(["bogus", "TAG", "v"]))] = 1
    try:
        got = m.new(cls, **values)
    except TypeError as exc:
        with pytest.raises(TypeError) as want:
            REFERENCE.new(cls, **values)
        assert str(exc) == str(want.value)
    else:
        want = REFERENCE.new(cls, **values)
        assert deep(vars(got)) == deep(vars(want)) and type(got) is type(want)
        for name, value in vars(got).items():  # fresh default lists, never shared
            if isinstance(value, list) and name not in values:
                assert value is not vars(want)[name]


def test_new_and_evolve_keep_their_contract():
    call = m.new(m.Call, call_id="c", function="f", payload=b"p")
    assert call == m.Call("c", "f", b"p") and call.visited is not m.new(m.Call, call_id="c",
                                                                         function="f",
                                                                         payload=b"p").visited
    with pytest.raises(TypeError, match="missing"):
        m.new(m.Call, call_id="c")
    with pytest.raises(TypeError, match="has no field"):
        m.new(m.Cancel, call_id="c", nope=1)
    assert m.evolve(call, hops=2) == dataclasses.replace(call, hops=2)


# ----------------------------------------------------------------------------- other classes


@dataclass(frozen=True)
class Tree:
    name: str
    kids: list[Tree] = field(default_factory=list)
    best: Tree | None = None


@dataclass(frozen=True)
class Planted:
    TAG: ClassVar[str] = "planted"
    tree: Tree
    weight: float = 0.5


@dataclass(frozen=True)
class Checked:
    TAG: ClassVar[str] = "checked"
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n < 0")


@dataclass(frozen=True)
class Pile:
    TAG: ClassVar[str] = "pile"
    frames: list[bytes]


def test_a_record_that_nests_itself_and_a_class_with_post_init():
    messages = {"planted": Planted, "checked": Checked, "pile": Pile}
    fast = wire.Codec(7, messages, (Tree,), Pile)
    slow = wire.Codec(7, messages, (Tree,), Pile, generate=False)
    leaf = Tree("leaf")
    for msg in (Planted(Tree("root", [leaf, Tree("mid", [leaf], leaf)], leaf), 2.0),
                Planted(Tree("x" * 5000)), Checked(3)):
        frame = fast.encode(msg)
        assert frame == slow.encode(msg)
        assert deep(fast.decode(frame)) == deep(slow.decode(frame))
        assert fast.decode(frame) == msg or len(msg.tree.name) > wire.MAX_STR
    for body in ({"v": 7, "t": "planted", "tree": {"name": "r", "kids": [{"name": 1}]}},
                 {"v": 7, "t": "planted", "tree": {"name": "r", "best": {"kids": []}}},
                 {"v": 7, "t": "planted", "tree": {"name": "r"}, "weight": 1},
                 {"v": 7, "t": "checked", "n": 1.5}):
        frame = cbor2.dumps(body)
        assert outcome(fast, frame) == outcome(slow, frame)
    with pytest.raises(ValueError):  # built by its own __init__: __post_init__ runs
        fast.decode(cbor2.dumps({"v": 7, "t": "checked", "n": -1}))
    frames = [fast.encode(Checked(i)) for i in range(3)]
    assert fast.unbatch(fast.decode(fast.batches(frames)[0]))[0] == [Checked(i) for i in range(3)]


def test_a_class_whose_name_is_no_identifier():
    odd = dataclasses.make_dataclass("odd-one", [("n", int), ("s", str, "")], frozen=True)
    odd.TAG = "odd"
    fast = wire.Codec(1, {"odd": odd}, (), Pile)
    slow = wire.Codec(1, {"odd": odd}, (), Pile, generate=False)
    frame = fast.encode(fast.new(odd, n=3))
    assert frame == slow.encode(odd(3)) and fast.decode(frame) == odd(3)
    assert fast._decoder(odd).__name__ == "decode_odd-one"  # (named after it, all the same)


# ----------------------------------------------------------------------------- limits


def nested(value: Any, depth: int, maps: bool) -> Any:
    for _ in range(depth):
        value = {"k": value} if maps else [value]
    return value


def depth_of(value: Any) -> int:
    """Containers nested in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list | tuple):
            deepest = max(deepest, d)
            stack += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


edge_texts = (st.text(max_size=8)
              | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=6)
              | st.sampled_from(["", "x" * m.MAX_STR, "é" * m.MAX_STR, "y" * (m.MAX_STR + 1),
                                 "z" * 10_000, "\U0001f600" * (m.MAX_STR + 1), "\udcff",
                                 "a\ud800b" * 50, "\udcff" * m.MAX_STR, "c" * (m.MAX_STR - 2) + "\udcff"]))
LENGTHS = [m.MAX_LIST - 1, m.MAX_LIST, m.MAX_LIST + 1, 3 * m.MAX_LIST]
DEPTHS = [1, 10, m.MAX_DEPTH - 3, m.MAX_DEPTH - 2, m.MAX_DEPTH - 1, m.MAX_DEPTH, m.MAX_DEPTH + 1,
          2_000, 20_000]
edge_json = st.recursive(
    st.none() | st.booleans() | ints | huge_ints | st.floats() | edge_texts | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(edge_texts, inner, max_size=3),
    max_leaves=10,
)
edge_any = edge_json | st.builds(nested, edge_json, st.sampled_from(DEPTHS), st.booleans())


def edge(hint: Any, small: bool = False) -> st.SearchStrategy:
    """Values of a field type that reach the codec's limits: text around MAX_STR (and not
    UTF-8), lists around MAX_LIST (all but their last item ``small``: a long list of long
    texts makes frames of hundreds of MB), ``Any`` values nested around MAX_DEPTH."""
    simple = {int: ints, float: st.floats(), bool: st.booleans(), bytes: st.binary(max_size=16),
              str: st.text(max_size=4) if small else edge_texts,
              Any: st.none() | ints if small else edge_any}
    if hint in simple:
        return simple[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        if small:
            return st.lists(edge(args[0], small), max_size=2)
        return st.lists(edge(args[0]), max_size=4) | st.builds(
            lambda x, last, n: [x] * (n - 1) + [last], edge(args[0], small=True), edge(args[0]),
            st.sampled_from(LENGTHS))
    if type(None) in args:
        return st.none() | edge([a for a in args if a is not type(None)][0], small)
    hints = typing.get_type_hints(hint)
    return st.builds(hint, **{f.name: edge(hints[f.name], small) for f in dataclasses.fields(hint)})


@functools.cache
def typed_fields(cls: type) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if hints[f.name] is not Any)


def overlong_list(value: Any) -> bool:
    """A list field (at any level of records) longer than MAX_LIST."""
    if dataclasses.is_dataclass(value):
        return any(overlong_list(getattr(value, name)) for name in typed_fields(type(value)))
    if not isinstance(value, list):
        return False
    distinct = {id(v): v for v in value}.values()  # (a long list repeats one item)
    return len(value) > m.MAX_LIST or any(map(overlong_list, distinct))


@pytest.mark.parametrize("tag", sorted(m.MESSAGES))
@settings(DIFF, max_examples=40)
@given(data=st.data())
def test_encode_makes_a_frame_decode_accepts_or_raises_a_local_error(tag, data):
    """Issue 17: encode did not cut text in lists nor bound list lengths, which decode
    refuses (``Call(avoid=[5,000-char name])``, ``Load(labels=...)``, a ``Free`` of more
    than 4,096 ids). For every message type, at the limits: the frame decodes (and
    encodes again to itself), or encode raises ``EncodeError``, exactly when a list is
    longer than MAX_LIST or an ``Any`` value nests deeper than MAX_DEPTH."""
    msg = data.draw(edge(m.MESSAGES[tag]))
    too_deep = any(depth_of(getattr(msg, f.name)) + 1 > m.MAX_DEPTH
                   for f in dataclasses.fields(msg) if f.type in ("Any", Any))
    try:
        frame = m.encode(msg)
    except EncodeError as exc:
        assert overlong_list(msg) or too_deep, exc
        assert encoded(REFERENCE, msg) == ("raises", EncodeError, str(exc))
        return
    assert not overlong_list(msg) and not too_deep
    # (never a DecodeError; the frame's size is the one limit encode leaves to the sender,
    # which knows what the bytes are and the receiver's max_size: a list of MAX_LIST long
    # texts may be bigger than MAX_FRAME)
    back = m.decode(frame, max_size=max(len(frame), m.MAX_FRAME))
    assert m.encode(back) == frame and REFERENCE.encode(msg) == frame


def test_text_in_lists_is_cut_and_long_lists_are_refused_at_encode():
    name = "n" * 5_000
    back = m.decode(m.encode(m.Call("c", "", b"", avoid=[name, "b"])))
    assert back.avoid == [m._cut(name), "b"] and len(back.avoid[0]) == m.MAX_STR
    load = m.Load(1, 1, 0, 0, labels=["gpu", "l" * 9_000])
    assert m.decode(m.encode(m.Pong(1, m.NodeInfo("i", "n", "a", 1), load))).load.labels[0] == "gpu"
    with pytest.raises(EncodeError, match=r"Needs\.labels: 4097 items"):
        m.encode(m.Call("c", "", b"", needs=m.Needs(labels=["x"] * (m.MAX_LIST + 1))))
    with pytest.raises(EncodeError, match=r"Free\.oids: 5000 items"):
        m.encode(m.Free("h", [f"{i:032x}" for i in range(5_000)]))
    with pytest.raises(EncodeError, match="nested more than"):  # (cbor2 itself crashed)
        m.encode(m.Answer(1, "status", nested([], 20_000, False)))
    assert m.decode(m.encode(m.Answer(1, "s", nested([], m.MAX_DEPTH - 2, True)))).qid == 1


def test_text_that_is_not_utf8_is_escaped():
    """A file name decoded with surrogateescape in an error message: cbor2 refused the
    text (UnicodeEncodeError from encode); it goes escaped."""
    msg = m.Result("c", False, b"", "a", "FileNotFoundError", "no file caf\udce9.txt",
                   "t" * (m.MAX_STR - 1) + "\udcff")
    back = m.decode(m.encode(msg))
    assert back.error == "no file caf\\udce9.txt" and len(back.traceback) == m.MAX_STR
    assert m.encode(msg) == REFERENCE.encode(msg)
    assert m.decode(m.encode(m.Answer(1, "s", {"k\udcff": ["v\udcff"]}))).body == {
        "k\\udcff": ["v\\udcff"]}


def test_a_free_of_many_ids_is_split_and_every_object_is_freed():
    """Issue 17: a Free of more than 4,096 ids failed to decode at the holder, so the
    objects leaked there. Senders split it (``Free.split``): the client does."""
    from mesh.client.client import Client
    from mesh.sched.objects import Objects

    oids = [f"{i:032x}" for i in range(10_000)]
    holder = Objects("h")
    for oid in oids:
        holder.put(oid, b"x" * 10)

    class Sender:  # the client's side of free(), without its sockets
        _closed = threading.Event()
        posted: list[bytes] = []
        _post = posted.append

    Client.free(Sender(), "h", oids)
    assert len(Sender.posted) == 3
    for frame in Sender.posted:
        msg = m.decode(frame)
        assert msg.holder == "h" and len(msg.oids) <= m.MAX_LIST
        holder.free(msg.oids)
    assert holder.stored == {} and holder.nbytes == 0
    assert m.Free.split("h", []) == [] and m.Free.split("h", ["a"]) == [m.Free("h", ["a"])]
