"""The one CBOR codec of every wire message (the messages are defined in ``mesh.wire.messages``).

Theory of operation
-------------------
A frame is one CBOR map: ``{"v": protocol, "t": <type tag>, <field>: <value>, ...}``.
Each message type is a frozen dataclass registered under its tag; nested records are
CBOR maps of their own fields. This module knows no message class: ``mesh.wire.messages``
builds one ``Codec`` from its registries and re-exports its bound functions, so imports
go one way only (messages -> codec) and there is no cycle.

``Codec.decode`` checks, in this order, and raises ``DecodeError`` (and nothing else)
with the ``reason`` in brackets:

* the frame's size, before parsing: at most ``max_size`` bytes (``MAX_FRAME``) [oversized];
* that cbor2 parses it, with maps and lists nested at most ``MAX_DEPTH`` deep (any
  exception it raises, ``RecursionError`` included) [cbor], into a map [cbor];
* ``v``: exactly the int ``protocol`` (``True`` and ``1.0`` are not) [version];
* ``t``: a registered tag [type];
* every field, in the class's field order: present, or it has a default (taken, a fresh
  one from a default factory); of its type: ``bool`` is not an ``int``, an ``int`` is a
  ``float`` (converted), text at most ``MAX_STR`` characters, lists at most ``MAX_LIST``
  items (items checked the same way: text in them at most ``MAX_STR``), records CBOR
  maps checked the same way, ``Any`` anything [field]. The first bad field in field
  order is the one reported.

Unknown extra keys are ignored at every level, so a newer peer of the same protocol
version may add optional fields.

``Codec.encode`` keeps the contract that every frame it returns is one that ``decode``
accepts (with the default ``max_size``: a frame's size is the sender's to check, where
it knows what the bytes are), using the same limits (``mesh.wire.fields``):

* text longer than ``MAX_STR``, in a text field or in a list of text, is cut (head and
  tail: error messages, tracebacks; a name in ``Call.avoid`` is cut as the same name is
  in the ``NodeInfo`` and ``Result`` that carried it); text that is not valid UTF-8 (lone
  surrogates) has those characters escaped (``scrub``);
* a list longer than ``MAX_LIST`` raises ``EncodeError``: dropping items would change
  what the message says (a sender of many ids splits them: ``messages.Free.split``);
* maps and lists nested deeper than ``MAX_DEPTH`` (only an ``Any`` value, or a record
  that nests itself, can be) raise ``EncodeError``; so does a value cbor2 cannot encode.

It does not otherwise validate (the dataclasses are built by our own code): a value of
the wrong type is sent as it is and refused by ``decode``. ``Any`` values are sent as
they are (dataclasses in them and in their lists become maps), and so are nested
fields that are ``None`` or ``[]``.

Speed
-----
Every call crosses ``encode``/``decode`` about four times, so the per-class work is done
once per class, at first use. The *generic* path (``Codec.record``, ``Codec.to_wire``)
walks a ``_Layout`` with one checker function per field (both in ``mesh.wire.fields``); it is the reference, and it
decides every case that the *generated* path does not take. The generated path is
straight-line code per class, made with ``exec`` as ``dataclasses`` makes ``__init__``:
the decoder reads every field, and only when all are present and all the plain ones
(text, int, bool, bytes, float, ``Any``) already have exactly the type that cbor2 gives
for valid data does it build the object itself (nested records, lists and optional
fields go through their checkers, in field order); otherwise it hands the whole map to
``Codec.record``. So its result, or its error, is the generic path's by construction
(``tests/test_codec.py`` checks it differentially). The encoder builds the map in one
expression, in the same key order as the generic path, with the same converters per
field (``wirer``): frames are byte-identical.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import cbor2

from mesh.errors import DecodeError, EncodeError
from mesh.wire.fields import (  # noqa: F401 (the limits and cut: re-exported)
    _EXACT,
    _MISSING,
    _NONE,
    _SCALARS,
    BATCH_BYTES,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_INT,
    MAX_LIST,
    MAX_STR,
    MAX_VALUE,
    Checker,
    Wire,
    _check_depth,
    _compile,
    _cut_text,
    _Layout,
    _list_checker,
    _optional,
    _wire_int,
    _wire_list,
    _wire_texts,
    cut,
    scrub,
)


class Codec:
    """Encode and decode the messages of one protocol: ``messages`` maps each type tag
    to its frozen dataclass (with a ``TAG`` class attribute), ``records`` are the
    dataclasses that fields may nest, and ``batch`` is the message class whose one field
    ``frames`` carries several encoded frames.

    ``generate=False`` keeps to the generic path (``record``, ``to_wire``, ``new`` by
    the layout): the reference that the generated code is tested and measured against."""

    def __init__(self, protocol: int, messages: Mapping[str, type], records: Iterable[type],
                 batch: type, *, generate: bool = True) -> None:
        self.protocol = protocol
        self.messages = messages
        self.records = tuple(records)
        self.batch = batch
        self.generate = generate
        self._layouts: dict[type, _Layout] = {}
        self._decoders: dict[type, Checker] = {}  # class -> (body, where) -> instance
        self._encoders: dict[type, Callable[[Any], bytes]] = {}
        self._bodies: dict[type, Callable[[Any], Any]] = {}  # record class -> its CBOR map
        self._makers: dict[type, Callable[[dict], Any]] = {}
        self._compiling: set[type] = set()
        self._deeps: dict[type, bool] = {}

    # ----------------------------------------------------------------- the generic path

    def layout(self, cls: type) -> _Layout:
        """The ``_Layout`` of a dataclass (made at first use). Raises TypeError for a
        field type the codec does not support (our bug, not the peer's)."""
        layout = self._layouts.get(cls)
        if layout is None:
            layout = self._layouts[cls] = _Layout(cls, self.checker, self.wirer)
        return layout

    def checker(self, hint: Any, generated: bool = False) -> Checker:
        """The function that checks (and converts) a decoded value of type ``hint``: the
        generic one, or (``generated``) the same with the generated decoders for records."""
        scalar = _SCALARS.get(hint)
        if scalar is not None:
            return scalar
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            args = typing.get_args(hint)
            inner = self.checker([o for o in args if o is not _NONE][0], generated)
            if _NONE not in args:
                return inner
            return lambda value, where: None if value is None else inner(value, where)
        if origin is list:
            (item,) = typing.get_args(hint)
            return _list_checker(self.checker(item, generated))
        if hint in self.records:
            if generated:
                return self._decoder(hint)
            return lambda value, where: self.record(hint, value, where)
        raise TypeError(f"unsupported field type {hint!r}")  # our bug, not the peer's

    def wirer(self, hint: Any, where: str) -> Wire | None:
        """The encode side of ``checker``: the function that turns a value of type
        ``hint`` into what CBOR carries, within the limits ``decode`` checks (``where``
        names the field in an ``EncodeError``); None for a value sent as it is."""
        if hint in (bool, float, bytes):
            return None
        if hint is int:
            return _wire_int(where)
        if hint is str:
            return _cut_text
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            args = typing.get_args(hint)
            inner = self.wirer([o for o in args if o is not _NONE][0], where)
            if inner is None or _NONE not in args:
                return inner
            return lambda value: None if value is None else inner(value)
        if origin is list:
            (item,) = typing.get_args(hint)
            if item is str:
                return _wire_texts(where)
            return _wire_list(self.wirer(item, f"{where}[]"), where)
        if hint is Any or hint in self.records:
            return self._wire if self.generate else self.to_wire
        raise TypeError(f"unsupported field type {hint!r}")  # our bug, not the peer's

    def deep(self, cls: type, _within: tuple = ()) -> bool:
        """Whether a frame of ``cls`` may nest deeper than ``MAX_DEPTH``: it has an
        ``Any`` field, or a record that nests itself, anywhere below it (then ``encode``
        checks the depth of each frame; a frame of any other class is as deep as its
        schema, a few levels)."""
        if cls in _within:
            return True
        known = self._deeps.get(cls)
        if known is not None:
            return known
        hints = list(self.layout(cls).hints)
        found = False
        while hints and not found:
            hint = hints.pop()
            if hint is Any:
                found = True
            elif hint in self.records:
                found = self.deep(hint, (*_within, cls))
            else:
                hints += [h for h in typing.get_args(hint) if h is not _NONE]
        if not _within:
            self._deeps[cls] = found
        return found

    def record(self, cls: type, body: Any, where: str) -> Any:
        """An instance of ``cls`` from the CBOR map ``body``, every field checked; a missing
        field takes its default, or is an error if it has none. ``where`` names the map in
        errors (``call``, ``ping.sender``, ``ping.gossip[]``). Raises ``DecodeError``."""
        if not isinstance(body, dict):
            raise DecodeError("field", f"{where}: expected a map")
        layout = self.layout(cls)
        values = {}
        for (name, check, default, factory), path in zip(layout.fields, layout.paths(where),
                                                          strict=True):
            if name in body:
                values[name] = check(body[name], path)
            elif default is not _MISSING:
                values[name] = default
            elif factory is not _MISSING:
                values[name] = factory()
            else:
                raise DecodeError("field", f"{where}: missing field {name!r}")
        return layout.build(values)

    def to_wire(self, value: Any) -> Any:
        """``value`` as CBOR-ready data: dataclasses as maps of their fields (text fields
        cut), lists item by item, anything else as it is."""
        layout = self._layouts.get(type(value))
        if layout is None:
            if isinstance(value, list):
                return [self.to_wire(v) for v in value]
            if not dataclasses.is_dataclass(value) or isinstance(value, type):
                return value
            layout = self.layout(type(value))
        if layout.direct:
            fields = value.__dict__
            body = {name: fields[name] for name in layout.names}
        else:
            body = {name: getattr(value, name) for name in layout.names}
        for name in layout.text:
            text = body[name]
            if isinstance(text, str) and len(text) > MAX_STR:
                body[name] = cut(text)
        for name, wire in layout.wires.items():
            v = body[name]
            if v is not None and (type(v) is not list or v):  # (None and [] stay as they are)
                body[name] = wire(v)
        return body

    def _encode_generic(self, msg: Any) -> bytes:
        body = self.to_wire(msg)
        body["v"] = self.protocol
        body["t"] = msg.TAG
        if self.deep(type(msg)):
            _check_depth(body, type(msg).__name__)
        return cbor2.dumps(body)

    def _encode_scrubbed(self, msg: Any) -> bytes:
        """``encode`` of a message with text that is not valid UTF-8 (the rare case:
        cbor2 refused it): the reference map with that text escaped (``scrub``)."""
        body = scrub(self.to_wire(msg))
        body["v"] = self.protocol
        body["t"] = msg.TAG
        return cbor2.dumps(body)

    def _new_generic(self, cls: type, values: dict[str, Any]) -> Any:
        layout = self.layout(cls)
        if not layout.direct:
            return cls(**values)
        fields = dict(layout.defaults)
        for name, factory in layout.factories:
            fields[name] = factory()
        fields.update(values)
        if len(fields) != len(layout.names):
            raise _new_error(cls, layout, fields)
        obj = object.__new__(cls)
        obj.__dict__.update(fields)
        return obj

    # ----------------------------------------------------------------- the public functions

    def encode(self, msg: Any) -> bytes:
        """Encode a message to one CBOR frame that ``decode`` accepts (module docstring):
        text longer than ``MAX_STR`` (error messages and tracebacks of user code) is cut,
        text that is not UTF-8 escaped. Raises ``EncodeError`` (nothing is sent) for a
        list longer than ``MAX_LIST``, nesting deeper than ``MAX_DEPTH``, or a value CBOR
        cannot carry."""
        enc = self._encoders.get(type(msg))
        if enc is None:
            enc = self._encoder(type(msg))
        try:
            return enc(msg)
        except UnicodeEncodeError:
            enc = self._encode_scrubbed
        except RecursionError:  # (an Any value deeper than Python recurses, < MAX_DEPTH)
            raise EncodeError(f"{type(msg).__name__}: containers nested more than "
                              f"{MAX_DEPTH} deep, which decode refuses") from None
        except cbor2.CBOREncodeError as exc:
            raise EncodeError(f"{type(msg).__name__}: {exc}") from None
        try:
            return enc(msg)
        except (UnicodeEncodeError, cbor2.CBOREncodeError) as exc:
            raise EncodeError(f"{type(msg).__name__}: {exc}") from None

    def decode(self, frame: bytes, max_size: int = MAX_FRAME) -> Any:
        """Decode one frame.

        Raises ``DecodeError`` (and only that) when the frame is oversized, not CBOR,
        not a map, of another protocol version, of an unknown type, or has a field of
        the wrong type."""
        if len(frame) > max_size:
            raise DecodeError("oversized", f"{len(frame)} bytes > {max_size}")
        try:
            body = cbor2.loads(frame, max_depth=MAX_DEPTH)
        except Exception as exc:  # cbor2 raises many types on garbage (and RecursionError)
            raise DecodeError("cbor", type(exc).__name__) from None
        if not isinstance(body, dict):
            raise DecodeError("cbor", "frame is not a map")
        version = body.get("v")
        if type(version) is not int or version != self.protocol:  # True == 1.0 == 1 in Python
            raise DecodeError("version", f"protocol {_shown(version)}, expected {self.protocol}")
        tag = body.get("t")
        cls = self.messages.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise DecodeError("type", f"unknown message type {_shown(tag)}")
        decoder = self._decoders.get(cls) or self._decoder(cls)
        return decoder(body, cls.TAG)

    def new(self, cls: type, **values: Any) -> Any:
        """``cls(**values)`` for a message or record class, without the generated frozen
        ``__init__`` (which sets each field through ``object.__setattr__``): fields not
        given take their defaults. As for ``evolve``, nothing is validated: for our own
        code, on a per-call path (the client makes a ``Call`` per task). Raises TypeError
        for a missing field or one the class does not have."""
        make = self._makers.get(cls)
        if make is None:
            make = self._maker(cls)
        return make(values)

    def evolve(self, msg: Any, **changes: Any) -> Any:
        """``dataclasses.replace`` for messages and records, without the generated
        ``__init__`` (a copy of the fields with ``changes`` applied; like ``replace``,
        nothing is validated, and an unknown field name is a TypeError)."""
        layout = self.layout(type(msg))
        if not layout.direct:
            return dataclasses.replace(msg, **changes)
        for name in changes:
            if name not in layout.names:
                raise TypeError(f"{type(msg).__name__} has no field {name!r}")
        obj = object.__new__(layout.cls)  # (a direct layout's instance is its __dict__)
        obj.__dict__.update(msg.__dict__)
        obj.__dict__.update(changes)
        return obj

    def batches(self, frames: list[bytes]) -> list[bytes]:
        """``frames`` (encoded messages, in order) as few frames as possible: runs of small
        frames become one batch message each (at most ``MAX_LIST`` frames and about
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
                out.append(self.encode(self.batch(list(run))))
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

    def unbatch(self, msg: Any, max_size: int = MAX_FRAME) -> tuple[list[Any], list[DecodeError]]:
        """The messages in ``msg`` (itself when it is not a batch), and the errors of the
        frames inside that did not decode (a batch inside a batch is one)."""
        if not isinstance(msg, self.batch):
            return [msg], []
        msgs: list[Any] = []
        errors: list[DecodeError] = []
        for frame in msg.frames:
            try:
                inner = self.decode(frame, max_size)
            except DecodeError as exc:
                errors.append(exc)
                continue
            if isinstance(inner, self.batch):
                errors.append(DecodeError("type", "a batch inside a batch"))
            else:
                msgs.append(inner)
        return msgs, errors

    # ----------------------------------------------------------------- the generated path

    def _decoder(self, cls: type) -> Checker:
        """The ``(body, where) -> instance`` decoder of a message or record class."""
        dec = self._decoders.get(cls)
        if dec is not None:
            return dec
        layout = self.layout(cls)
        if not self.generate or not layout.direct:
            dec = functools.partial(self.record, cls)
        elif cls in self._compiling:  # a record that nests itself (or another thread's
            # compile of it is under way): look its decoder up when it is called
            return lambda body, where: self._decoder(cls)(body, where)
        else:
            self._compiling.add(cls)
            try:
                dec = self._compile_decoder(cls, layout)
            finally:
                self._compiling.discard(cls)
        self._decoders[cls] = dec
        return dec

    def _compile_decoder(self, cls: type, layout: _Layout) -> Checker:
        """Straight-line ``record(cls, ...)``: it returns an object only when the generic
        path would return an equal one, and otherwise hands the map to the generic path
        (``slow``). A plain field that passes its ``_EXACT`` test is one its checker returns
        unchanged; when all do, the generic path's first error, if any, is in one of the
        other fields, which are checked here in field order by the same checkers (with
        the generated decoders for records), under the same paths."""
        ns: dict[str, Any] = {"cls": cls, "new": object.__new__, "MAX_STR": MAX_STR, "MAX_INT": MAX_INT,
                              "slow": functools.partial(self.record, cls)}
        lines = ["    if not isinstance(body, dict):",
                 "        return slow(body, where)",
                 "    try:"]
        lines += [f"        f{i} = body[{name!r}]" for i, name in enumerate(layout.names)]
        lines += ["    except KeyError:",  # a field left out: defaults or an error
                  "        return slow(body, where)"]
        exact, convert = [], []
        for i, (name, hint) in enumerate(zip(layout.names, layout.hints, strict=True)):
            v = f"f{i}"
            test = _EXACT.get(hint)
            if test is not None:
                if test:
                    exact.append(test.format(v=v))
                continue
            inner = _optional(hint)
            ns[f"check{i}"] = self.checker(hint if inner is None else inner, generated=True)
            call = f"{v} = check{i}({v}, where + {'.' + name!r})"
            if inner is not None:  # None, the usual case, is checked here
                convert.append(f"    if {v} is not None:\n        {call}")
            elif typing.get_origin(hint) is list:  # and so is []
                convert.append(f"    if type({v}) is not list or {v}:\n        {call}")
            else:
                convert.append(f"    {call}")
        if exact:
            lines += ["    if not (" + "\n            and ".join(exact) + "):",
                      "        return slow(body, where)"]
        lines += convert  # every plain field is fine: the first error is among these, in order
        items = ", ".join(f"{name!r}: f{i}" for i, name in enumerate(layout.names))
        lines += ["    obj = new(cls)",
                  f"    obj.__dict__.update({{{items}}})",
                  "    return obj"]
        return _compile(f"decode_{cls.__name__}", "body, where", lines, ns)

    def _encoder(self, cls: type) -> Callable[[Any], bytes]:
        """The ``msg -> frame`` encoder of a message class."""
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return self._encode_generic  # (not cached: not a message; encode fails as it did)
        layout = self.layout(cls)  # (TypeError for an unsupported field type, as to_wire)
        if self.generate and layout.direct and hasattr(cls, "TAG"):
            enc = self._compile_wire(cls, layout, frame=True)
        else:
            enc = self._encode_generic
        self._encoders[cls] = enc
        return enc

    def _wire(self, value: Any) -> Any:
        """``to_wire(value)``, with the generated map builders for records (a record
        field's, or an ``Any`` field's, converter: ``wirer``)."""
        make = self._bodies.get(type(value))
        if make is not None:
            return make(value)
        if isinstance(value, list):
            return [self._wire(v) for v in value]
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            return value
        cls = type(value)
        layout = self.layout(cls)
        if self.generate and layout.direct:
            make = self._compile_wire(cls, layout, frame=False)
        else:
            make = self.to_wire
        self._bodies[cls] = make
        return make(value)

    def _compile_wire(self, cls: type, layout: _Layout, *, frame: bool) -> Callable:
        """The generated ``to_wire`` of one direct class (``frame``: its whole encoded
        frame, with ``v`` and ``t``, its depth checked if it may be deep). Same steps as
        ``to_wire``: read every field, cut text, convert the others by the same
        converters; the map's keys in the same order."""
        ns: dict[str, Any] = {"cbor2": cbor2, "MAX_STR": MAX_STR, "cut_text": _cut_text,
                              "check_depth": _check_depth}
        name = f"{'encode' if frame else 'wire'}_{cls.__name__}"
        lines = ["    d = value.__dict__"]
        lines += [f"    f{i} = d[{n!r}]" for i, n in enumerate(layout.names)]
        for i, n in enumerate(layout.names):
            if n in layout.text:
                lines.append(f"    if type(f{i}) is not str or len(f{i}) > MAX_STR:\n"
                             f"        f{i} = cut_text(f{i})")
        for i, n in enumerate(layout.names):
            wire = layout.wires.get(n)
            if wire is not None:
                ns[f"wire{i}"] = wire
                lines.append(f"    if f{i} is not None and (type(f{i}) is not list or f{i}):\n"
                             f"        f{i} = wire{i}(f{i})")
        items = ", ".join(f"{n!r}: f{i}" for i, n in enumerate(layout.names))
        if frame and self.deep(cls):
            items += f", 'v': {self.protocol!r}, 't': {cls.TAG!r}"
            lines += [f"    body = {{{items}}}",
                      f"    check_depth(body, {cls.__name__!r})",
                      "    return cbor2.dumps(body)"]
        elif frame:
            items += f", 'v': {self.protocol!r}, 't': {cls.TAG!r}"
            lines.append(f"    return cbor2.dumps({{{items}}})")
        else:
            lines.append(f"    return {{{items}}}")
        return _compile(name, "value", lines, ns)

    def _maker(self, cls: type) -> Callable[[dict], Any]:
        """The ``values -> instance`` function of ``new`` for one class."""
        layout = self.layout(cls)
        if not self.generate or not layout.direct:
            make = functools.partial(self._new_generic, cls)
        else:
            ns: dict[str, Any] = {"cls": cls, "layout": layout, "new": object.__new__,
                                  "defaults": layout.defaults, "error": _new_error}
            fresh = []
            for i, (name, factory) in enumerate(layout.factories):
                ns[f"factory{i}"] = factory
                fresh.append(f"{name!r}: {'[]' if factory is list else f'factory{i}()'}")
            lines = [f"    fields = {{**defaults, {''.join(f + ', ' for f in fresh)}**values}}",
                     f"    if len(fields) != {len(layout.names)}:",
                     "        raise error(cls, layout, fields)",
                     "    obj = new(cls)",
                     "    obj.__dict__.update(fields)",
                     "    return obj"]
            make = _compile(f"new_{cls.__name__}", "values", lines, ns)
        self._makers[cls] = make
        return make


def _new_error(cls: type, layout: _Layout, fields: dict[str, Any]) -> TypeError:
    missing = [n for n in layout.names if n not in fields]
    return TypeError(f"{cls.__name__}: missing {missing}" if missing else
                     f"{cls.__name__} has no field {sorted(set(fields) - set(layout.names))}")


def _shown(value: Any) -> str:
    """A peer's value, for an error message: short, and never failing (``repr`` of an int
    of more than 4,300 digits raises ValueError)."""
    if type(value) is int and not -MAX_INT <= value <= MAX_INT:
        return f"<an int of {value.bit_length()} bits>"
    text = repr(value) if isinstance(value, (int, float, str, bytes, bool, type(None))) else \
        f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."
