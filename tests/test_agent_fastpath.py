"""The agent's per-call fast paths keep the behaviour of the plain code they replace:
the compiled codec of ``mesh.wire.messages``, ``messages.evolve`` and the worker notices."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest

from mesh.errors import DecodeError
from mesh.tree.advert import Advert
from mesh.wire import messages as m


def test_decoded_messages_are_ordinary_instances():
    call = m.Call("c1", "mod:fn", b"\x80payload", hops=2, origin="o" * 32, visited=["a"],
                  avoid=["b"], attempt=1)
    got = m.decode(m.encode(call))
    assert got == call and repr(got) == repr(call)
    assert type(got) is m.Call and dataclasses.asdict(got) == dataclasses.asdict(call)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.hops = 3  # type: ignore[misc]


def test_defaults_are_filled_and_lists_are_not_shared():
    frame = cbor2.dumps({"v": m.PROTOCOL, "t": "call", "call_id": "c", "function": "", "payload": b""})
    a, b = m.decode(frame), m.decode(frame)
    assert a == m.Call("c", "", b"") and a.visited == [] and a.visited is not b.visited


def test_nested_records_and_floats_still_convert():
    advert = Advert(root="r", term=3, score=2, rank=1, path=["p", "q"])
    got = m.decode(m.encode(m.TreeAdvert("s", advert)))
    assert got.advert == advert and type(got.advert.score) is float and type(got.advert.rank) is float


@pytest.mark.parametrize("field, value", [
    ("visited", ["ok", 3]), ("visited", "text"), ("hops", True), ("payload", "text"),
    ("function", "x" * (m.MAX_STR + 1)), ("want_json", 1),
])
def test_every_field_is_still_checked(field, value):
    body = cbor2.loads(m.encode(m.Call("c", "", b"")))
    body[field] = value
    with pytest.raises(DecodeError) as info:
        m.decode(cbor2.dumps(body))
    assert info.value.reason == "field" and f"call.{field}" in info.value.detail


def test_encode_is_byte_for_byte_the_plain_cbor_map():
    result = m.Result("c", False, b"", "agent", "E", "e" * (2 * m.MAX_STR), "tb", free=2)
    body = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    body["error"] = m._cut(body["error"])
    body.update(v=m.PROTOCOL, t="result")
    assert m.encode(result) == cbor2.dumps(body)


def test_evolve_is_replace():
    result = m.Result("c", True, b"v", "agent")
    assert m.evolve(result, free=3, queued=1) == dataclasses.replace(result, free=3, queued=1)
    assert result.free == -1  # the original is unchanged
    with pytest.raises(TypeError):
        m.evolve(result, nonsense=1)


def test_unknown_worker_notice_is_a_broken_channel():
    from mesh.agent.pool import WorkerPool

    pool = WorkerPool.__new__(WorkerPool)
    pool.progress, pool.lends = {}, []

    class W:
        ready = lent = False

    w = W()
    pool._notice(w, ["ready", 1])
    pool._notice(w, ["lend", "c", True])
    pool._notice(w, ["progress", "c", 3, 1, 0])
    assert w.ready and w.lent and pool.lends == [("c", True)] and pool.progress["c"]["total"] == 3
    with pytest.raises(ValueError):
        pool._notice(w, ["nonsense"])


def test_new_is_the_constructor():
    kw = dict(call_id="c", function="mod:fn", payload=b"p", avoid=["b"], owner="o",
              needs=m.Needs(2, 0, ["gpu"]))
    got = m.new(m.Call, **kw)
    assert got == m.Call(**kw) and repr(got) == repr(m.Call(**kw))
    assert m.encode(got) == m.encode(m.Call(**kw)) and type(got) is m.Call
    a, b = m.new(m.Call, call_id="c", function="", payload=b""), m.new(m.Call, call_id="c", function="", payload=b"")
    assert a.visited == [] and a.visited is not b.visited  # (fresh default lists)
    with pytest.raises(TypeError, match="missing"):
        m.new(m.Call, call_id="c")
    with pytest.raises(TypeError, match="no field"):
        m.new(m.Call, call_id="c", function="", payload=b"", bogus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.hops = 3  # type: ignore[misc]
