"""Hostile frames for the `fuzz` scenario: valid frames of every wire message type, and seeded
mutators that turn them into garbage.

Pure: no sockets, no clock; one `random.Random` decides everything, so a seed gives the same
frames. `FrameFuzzer.next()` returns `(kind, parts)`: `parts` is one frame, or several for a
ZeroMQ multipart message (kind `multipart`). The kinds:

- `valid`: a frame of `corpus` as it is (every message type, several variants each);
- byte level: `bitflip` (1-8 bits), `truncate`, `extend` (random bytes or a second frame
  after the first), `insdel` (bytes inserted or deleted inside), `splice` (head of one
  frame, tail of another), `poke` (bytes set to CBOR markers: break, indefinite, tags);
- `random`: random bytes, mostly short;
- CBOR level (the frame decoded to its map, changed, encoded again): `wrong_type` (a field,
  nested ones included, given a value of another type), `huge_int` (64-bit edges,
  bignums, ints of more than 4,300 digits), `deep` (arrays, maps, tags or indefinite
  arrays nested up to 100,000 deep, in a field or as the frame), `long` (text and lists at
  and past the codec's bounds, up to 1 MB), `unknown_type` (the `t` tag), `version` (the
  `v`), `missing_field`, `extra_keys` (unknown and non-text keys), `ids` (id fields naming
  the puppet member, the agent itself, random or malformed ids), `tags` (a field or the
  frame wrapped in a CBOR tag: datetimes, bignums, decimals, regexes, sets, shared
  references...);
- `batch`: a Batch of mutated frames (some valid, nested batches, non-bytes items, more
  than MAX_LIST frames);
- `multipart`: 2-4 parts in one ZeroMQ message (the agent takes exactly one).
"""

from __future__ import annotations

import copy
import math
import pickle
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import cbor2
import cloudpickle

from mesh.tree.advert import Advert
from mesh.wire import messages as m

# kind -> weight (per 1,000 frames, roughly)
WEIGHTS = {
    "valid": 30, "bitflip": 110, "truncate": 60, "extend": 45, "insdel": 45, "splice": 35,
    "poke": 35, "random": 90, "wrong_type": 140, "huge_int": 50, "deep": 15, "long": 15,
    "unknown_type": 30, "version": 40, "missing_field": 40, "extra_keys": 30, "ids": 60,
    "tags": 40, "batch": 50, "multipart": 20,
}
KINDS = tuple(WEIGHTS)
BYTE_KINDS = ("bitflip", "truncate", "extend", "insdel", "splice", "poke")
HEAVY = ("long", "deep")  # kinds whose frames are mostly taken again from a cache of HEAVY_KEEP
HEAVY_KEEP = 48

SAFE_CALL = "operator:add"  # what base Calls run (a worker runs decodable Calls)
CALL_ARGS = pickle.dumps(((1, 2), {}))
CALL_FN = cloudpickle.dumps((abs, (-3,), {}))  # a function Call's payload (builtins.abs)


@dataclass(frozen=True)
class Ids:
    """Who is who: the puppet member the fuzzer poses as, and the agent under test."""

    member: str  # node id (32 hex digits)
    member_name: str
    member_address: str
    agent: str
    agent_name: str
    agent_address: str


def _hex(rng: random.Random, n: int = 16) -> str:
    return rng.randbytes(n).hex()


def corpus(ids: Ids, rng: random.Random) -> list[m.Message]:
    """Valid messages of every type in `messages.MESSAGES`, a few variants each."""
    me = m.NodeInfo(ids.member, ids.member_name, ids.member_address, 1, 1)
    load = m.Load(1, 0, 1000, 1, 1.0, 0, [])
    gossip = [m.Digest(ids.member, ids.member_name, ids.member_address, "alive", 1, 1),
              m.Digest(ids.agent, ids.agent_name, ids.agent_address, "alive", 0, 2),
              m.Digest(_hex(rng), "ghost", "127.0.0.1:9", "suspect", 3, 1)]
    advert = Advert(root=ids.member, term=1, settled=1, score=1.0, succeeds="", seq=5,
                    rank=0.001, parent=ids.agent, path=[ids.agent], stamp=7, ask=0)
    holding = [m.Holding(ids.member, 4096), m.Holding(ids.agent, 10)]
    out: list[m.Message] = [
        m.Ping(1, me, load, []), m.Ping(2, me, load, gossip),
        m.Pong(3, me, load, gossip[:1]),
        m.PingReq(4, ids.agent, ids.agent_address, me, gossip[1:]),
        m.PingReq(5, _hex(rng), "127.0.0.1:9", me, []),
        m.IndirectAck(6, ids.agent, gossip), m.Nack(7, ids.agent),
        m.TreeAdvert(ids.member, advert), m.TreeAdvert(ids.agent, Advert()),
        m.Leave(ids.agent, 0), m.Leave(_hex(rng), 3),
        m.Call("fz" + _hex(rng, 6), SAFE_CALL, CALL_ARGS),
        m.Call("fz" + _hex(rng, 6), "", CALL_FN, 1, ids.member, [ids.member], True, 1, ["x"],
               holding, "owner-1", m.Needs(1, 0, [])),
        m.Call("fz" + _hex(rng, 6), "no_such_module_fz:f", CALL_ARGS, needs=m.Needs(2, 1 << 20, ["gpu"])),
        m.Cancel("fz" + _hex(rng, 6), "fuzz"), m.Handback("fz" + _hex(rng, 6), "fuzz"),
        m.Reclaim(["fz" + _hex(rng, 6), "fz" + _hex(rng, 6)], 1, 0),
        m.Fetch(_hex(rng, 8), ids.member), m.Fetch(_hex(rng, 8), ""),
        m.Object(_hex(rng, 8), True, b"\x80\x04K\x01.", ""), m.Object(_hex(rng, 8), False, b"", "gone"),
        m.Free(ids.member, [_hex(rng, 8)], ""), m.Free(ids.agent, [], "owner-1"),
        m.Result("fz" + _hex(rng, 6), True, pickle.dumps(3), ids.member_name, free=1, queued=0),
        m.Result("fz" + _hex(rng, 6), False, b"", ids.member_name, "ValueError", "bad", "Traceback..."),
        m.Query(11, "status"), m.Query(12, "peers"), m.Query(13, "progress", "fz1"),
        m.Query(14, "tree-node"), m.Query(15, "metrics"), m.Query(16, "zzz"),
        # Resources the agent refuses (valid ones that it would act on are withheld: the oracle)
        m.Resources(17, "add", 0, ""), m.Resources(18, "reduce", 5000, ""),
        m.Resources(19, "lost", 0, "nobody-" + _hex(rng, 4)), m.Resources(20, "grow", 1, ""),
        m.Answer(21, "status", {"a": [1, 2.5, None]}, ""),
        m.Holds(["fz" + _hex(rng, 6), "fz" + _hex(rng, 6)]),  # lease questions and answers
        m.Held(["fz" + _hex(rng, 6)], ["fz" + _hex(rng, 6)]),
    ]
    inner = [m.encode(x) for x in (out[0], out[11], out[25])]
    out.append(m.Batch(inner))
    assert {type(x) for x in out} == set(m.MESSAGES.values())  # every message type
    return out


# --------------------------------------------------------------------------- raw CBOR


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


class _Raw:
    """A value encoded as these exact bytes (deep nesting cbor2 would not encode)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def _dumps(body: Any) -> bytes:
    """cbor2.dumps, with `_Raw` values spliced in as they are."""
    try:
        return cbor2.dumps(body)
    except cbor2.CBOREncodeError:  # (a _Raw in it)
        pass
    raws: dict[bytes, bytes] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, _Raw):
            marker = b"\x00fzraw" + len(raws).to_bytes(4, "big") + b"\x00\x01\x02\x03\x04\x05"
            raws[cbor2.dumps(marker)] = value.data
            return marker
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    data = cbor2.dumps(swap(body))
    for marker, raw in raws.items():
        data = data.replace(marker, raw, 1)
    return data


def deep_value(rng: random.Random) -> _Raw:
    depth = rng.choice((33, 300, 1000, 5000, 100_000))
    shape = rng.randrange(4)
    if shape == 0:
        return _Raw(b"\x81" * depth + b"\x00")  # [[[...0...]]]
    if shape == 1:
        return _Raw(b"\xa1\x61a" * depth + b"\x00")  # {"a": {"a": ...}}
    if shape == 2:
        return _Raw(b"\xd8\x1c" * depth + b"\x00")  # tag(28, tag(28, ...))
    return _Raw(b"\x9f" * depth + b"\x00" + b"\xff" * depth)  # indefinite arrays


# --------------------------------------------------------------------------- values

HUGE_INTS = (2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**64), -(2**64) - 1,
             2**70, 10**30, -(10**30), 10**4299, 10**4300, 10**5000, -(10**6000))
TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37, 256, 258, 259,
        260, 261, 1001, 55799, 2**32 + 5)


def wrong_value(rng: random.Random) -> Any:
    """A value of some type, often not the one the field wants."""
    r = rng.randrange(24)
    if r == 0:
        return rng.choice(HUGE_INTS)
    if r == 1:
        return rng.randint(-(2**40), 2**40)
    if r == 2:
        return rng.choice((0, -1, 1, 2))
    if r == 3:
        return rng.choice((0.5, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324))
    if r == 4:
        return ""
    if r == 5:
        return rng.choice(("x", "\x00", "é" * 3, "0" * 40, "127.0.0.1:1", ":", "a:b:c", "status"))
    if r == 6:
        return rng.randbytes(rng.randrange(0, 40))
    if r == 7:
        return None
    if r == 8:
        return rng.choice((True, False))
    if r == 9:
        return []
    if r == 10:
        return [wrong_value(rng) for _ in range(rng.randrange(1, 4))]
    if r == 11:
        return {}
    if r == 12:
        return {"a": 1, "id": "x", "v": 2}
    if r == 13:
        return cbor2.undefined
    if r == 14:
        return cbor2.CBORSimpleValue(rng.choice((0, 19, 32, 255)))
    if r == 15:
        return cbor2.CBORTag(rng.choice(TAGS), rng.choice((0, "x", b"\x01", [1], {"a": 1}, -1)))
    if r == 16:
        return Decimal(rng.choice(("1e1000", "-0", "NaN", "Infinity", "1.5")))
    if r == 17:
        return {1: 2, b"k": [None]}
    if r == 18:
        return "x" * rng.choice((m.MAX_STR, m.MAX_STR + 1, 70_000))
    if r == 19:
        return [0] * rng.choice((m.MAX_LIST, m.MAX_LIST + 1))
    if r == 20:
        return rng.choice(HUGE_INTS)
    if r == 21:
        return [{"id": "x"}]
    if r == 22:
        return deep_value(rng)
    return rng.random()


def _paths(body: Any, prefix: tuple = ()) -> list[tuple]:
    """Every (container, key) path below `body` (not "v" and "t" at the top)."""
    out = []
    if isinstance(body, dict):
        for k, v in body.items():
            if not prefix and k in ("v", "t"):
                continue
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(body, list):
        for i, v in enumerate(body[:8]):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _set(body: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        body = body[k]
    body[path[-1]] = value


def _get(body: Any, path: tuple) -> Any:
    for k in path:
        body = body[k]
    return body


ID_FIELDS = ("id", "node_id", "target", "sender", "holder", "origin", "root", "parent", "call_id",
             "oid", "peer", "succeeds", "owner", "node")


# --------------------------------------------------------------------------- the fuzzer


class FrameFuzzer:
    """Seeded generator of hostile frames from the corpus of `ids`."""

    def __init__(self, ids: Ids, rng: random.Random, weights: dict[str, int] | None = None) -> None:
        self.ids = ids
        self.rng = rng
        self.messages = corpus(ids, rng)
        self.frames = [m.encode(x) for x in self.messages]
        self.bodies = [cbor2.loads(f) for f in self.frames]
        weights = weights or WEIGHTS
        self._kinds = list(weights)
        self._weights = [weights[k] for k in self._kinds]
        self._heavy: dict[str, list[bytes]] = {}
        self._id_values = (ids.member, ids.agent, ids.agent_name, ids.member_name, "", "zz" * 16,
                     "ab" * 32, ids.agent[:8], ids.member.upper())

    def next(self, multipart: bool = True) -> tuple[str, list[bytes]]:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        if kind == "multipart" and not multipart:
            kind = "bitflip"
        return kind, self.make(kind)

    def make(self, kind: str) -> list[bytes]:
        rng = self.rng
        if kind == "multipart":
            return [self.one(rng.choice(("valid", "bitflip", "random"))) for _ in range(rng.randint(2, 4))]
        return [self.one(kind)]

    def one(self, kind: str) -> bytes:
        if kind in BYTE_KINDS:
            return self.mutate_bytes(kind, self.rng.choice(self.frames))
        if kind in HEAVY:  # big frames cost more to make than to send: most are sent again
            cache = self._heavy.setdefault(kind, [])
            if len(cache) >= HEAVY_KEEP or (cache and self.rng.random() < 0.75):
                return self.rng.choice(cache)
            frame = getattr(self, "_" + kind)()
            cache.append(frame)
            return frame
        return getattr(self, "_" + kind)()

    # ------------------------------------------------------------------ byte level

    def mutate_bytes(self, kind: str, frame: bytes) -> bytes:
        rng = self.rng
        b = bytearray(frame)
        if kind == "bitflip":
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            b = b[: rng.randrange(len(b))]
        elif kind == "extend":
            if rng.random() < 0.5:
                b += rng.randbytes(rng.randint(1, 64))
            else:
                b += rng.choice(self.frames)
        elif kind == "insdel":
            i = rng.randrange(len(b) + 1)
            if rng.random() < 0.5:
                b[i:i] = rng.randbytes(rng.randint(1, 16))
            else:
                del b[i: i + rng.randint(1, 16)]
        elif kind == "splice":
            other = rng.choice(self.frames)
            b = b[: rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1):]
        else:  # poke: CBOR's special bytes
            for _ in range(rng.randint(1, 3)):
                if b:
                    b[rng.randrange(len(b))] = rng.choice(
                        (0xFF, 0x9F, 0xBF, 0x7F, 0x5F, 0xC2, 0xD8, 0xF7, 0xF9, 0xFB, 0x1B, 0x00, 0xBB, 0x9B))
        return bytes(b)

    def _random(self) -> bytes:
        rng = self.rng
        n = rng.choice((0, 1, 2, 3, 5, 8, 16, 31, 64, 200, 1000)) if rng.random() < 0.97 \
            else rng.choice((4096, 65_536))
        return rng.randbytes(n)

    def _valid(self) -> bytes:
        return self.rng.choice(self.frames)

    # ------------------------------------------------------------------ CBOR level

    def _body(self) -> dict:
        return copy.deepcopy(self.rng.choice(self.bodies))

    def _field(self, body: dict) -> tuple | None:
        paths = _paths(body)
        return self.rng.choice(paths) if paths else None

    def _wrong_type(self) -> bytes:
        body = self._body()
        paths = _paths(body)
        chosen = self.rng.sample(paths, min(len(paths), self.rng.choice((1, 1, 1, 2, 3))))
        for path in sorted(chosen, key=len, reverse=True):  # (deepest first: all still there)
            _set(body, path, wrong_value(self.rng))
        return _dumps(body)

    def _huge_int(self) -> bytes:
        body = self._body()
        ints = [p for p in _paths(body) if type(_get(body, p)) is int]
        path = self.rng.choice(ints + [("v",), ("t",)])
        _set(body, path, self.rng.choice(HUGE_INTS))
        return _dumps(body)

    def _deep(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.2:
            return deep_value(rng).data
        body = self._body()
        path = self._field(body) or ("x",)
        _set(body, path, deep_value(rng))
        return _dumps(body)

    def _long(self) -> bytes:
        rng = self.rng
        body = self._body()
        path = self._field(body) or ("x",)
        old = _get(body, path) if path != ("x",) else None
        if isinstance(old, list) or rng.random() < 0.3:
            n = rng.choice((m.MAX_LIST, m.MAX_LIST + 1, 20_000)) if rng.random() < 0.9 else 100_000
            item = old[0] if isinstance(old, list) and old else rng.choice((0, "x", {"id": "a"}))
            value: Any = [item] * n  # (one object n times: CBOR has no references, n copies)
        elif isinstance(old, bytes):
            value = rng.randbytes(rng.choice((70_000, 1 << 20)))
        else:
            value = "é" * rng.choice((m.MAX_STR, m.MAX_STR + 1)) if rng.random() < 0.5 else \
                "x" * rng.choice((m.MAX_STR + 1, 100_000, 1 << 20))
        _set(body, path, value)
        return _dumps(body)

    def _unknown_type(self) -> bytes:
        rng = self.rng
        body = self._body()
        choice = rng.randrange(6)
        if choice == 0:
            del body["t"]
        else:
            body["t"] = (rng.choice(("", "Ping", "PING", "ping ", "batch\x00", "answer", "zzz", "tree2"))
                         if choice < 4 else wrong_value(rng))
        return _dumps(body)

    def _version(self) -> bytes:
        rng = self.rng
        body = self._body()
        if rng.random() < 0.1:
            del body["v"]
        else:
            body["v"] = rng.choice((0, 1, 3, -2, m.PROTOCOL + 1, 2**64, 10**5000, "2", 2.0, True, None,
                                    [2], b"\x02", cbor2.CBORTag(2, b"\x02"), cbor2.undefined))
        return _dumps(body)

    def _missing_field(self) -> bytes:
        body = self._body()
        path = self._field(body)
        if path is not None:
            parent = _get(body, path[:-1])
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        return _dumps(body)

    def _extra_keys(self) -> bytes:
        rng = self.rng
        body = self._body()
        if rng.random() < 0.9:
            for i in range(rng.choice((1, 2, 3, 8))):
                key: Any = rng.choice((f"x{i}", i, b"k%d" % i, -i - 1, f"gossip{i}", 1.5, None))
                body[key] = wrong_value(rng)
        else:
            body.update({f"x{i}": i for i in range(rng.choice((100, 5000)))})
        return _dumps(body)

    def _ids(self) -> bytes:
        rng = self.rng
        body = self._body()
        paths = [p for p in _paths(body) if p[-1] in ID_FIELDS or (len(p) > 1 and p[-2] in ("visited", "path"))]
        chosen = rng.sample(paths, min(len(paths), rng.randint(1, 3)))
        for path in sorted(chosen, key=len, reverse=True):  # (deepest first: all still there)
            _set(body, path, rng.choice(self._id_values + (_hex(rng),)))
        return _dumps(body)

    def _tags(self) -> bytes:
        rng = self.rng
        body = self._body()
        if rng.random() < 0.15:
            return _dumps(cbor2.CBORTag(rng.choice(TAGS), body))
        path = self._field(body) or ("x",)
        old = _get(body, path) if path != ("x",) else 0
        _set(body, path, cbor2.CBORTag(rng.choice(TAGS), old))
        return _dumps(body)

    def _batch(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            frames: Any = [b"\xa0"] * (m.MAX_LIST + 1)
        elif r < 0.15:
            frames = [wrong_value(rng) for _ in range(rng.randint(1, 4))]
        else:
            frames = []
            for _ in range(rng.choice((0, 1, 2, 3, 5, 8, 20))):
                kind = rng.choice(KINDS[:-2])  # (no batch, no multipart inside)
                frames.append(self.one(kind) if kind != "deep" else self.one("bitflip"))
            if rng.random() < 0.1:  # a batch inside the batch
                frames.append(m.encode(m.Batch([rng.choice(self.frames)])))
        return _dumps({"v": m.PROTOCOL, "t": "batch", "frames": frames})
