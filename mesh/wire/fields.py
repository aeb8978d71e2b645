"""The fields of wire messages, for ``mesh.wire.codec``: the limits, one checker per field
type (each raises ``DecodeError`` with reason ``field`` and the field's path), the
encode side of the same limits (text cut, list lengths and nesting depth checked:
``EncodeError``), and a class's layout (its fields in order, their checkers, defaults
and factories, which fields are text to cut and how the others are converted for the
wire). ``_EXACT`` gives, per plain type, the generated decoder's test for a value that
the checker would return unchanged.

Each limit is defined once, here, and both sides use it: ``decode`` refuses what
exceeds it, ``encode`` never produces it (it cuts text, where cutting is harmless,
and raises ``EncodeError`` for a list or a nesting that would not be accepted).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from mesh.errors import DecodeError, EncodeError

MAX_FRAME = 64 * 1024 * 1024  # bytes; larger frames are dropped unread
MAX_VALUE = MAX_FRAME - (1 << 20)  # the most pickled bytes one message carries (a call's
# payload, a result's value), leaving room for the rest of its frame: bigger ones are
# refused where they are made (``mesh.errors.ValueTooLarge``), never sent
MAX_INT = (1 << 64) - 1  # largest magnitude of an accepted int (CBOR's own integers: 64 bits)
MAX_STR = 4096  # longest accepted text field or text in a list field (encode cuts longer)
MAX_LIST = 4096  # longest accepted list field (encode raises EncodeError beyond)
MAX_DEPTH = 400  # deepest nesting of maps and lists in a frame, its own map included
BATCH_BYTES = 1 << 20  # frames bigger than this travel alone; a batch stops growing there

_NONE = type(None)
_MISSING = dataclasses.MISSING

Checker = Callable[[Any, str], Any]  # (value, where) -> value, or DecodeError
Wire = Callable[[Any], Any]  # a field's value -> what CBOR carries, or EncodeError


def cut(text: str) -> str:
    """Text longer than MAX_STR, which ``decode`` refuses, cut to its head and tail
    (a traceback keeps its first frames and the exception line)."""
    if len(text) <= MAX_STR:
        return text
    mark = "\n[...]\n"
    head = (MAX_STR - len(mark)) // 2
    return text[:head] + mark + text[len(text) - (MAX_STR - len(mark) - head):]


def _cut_text(value: Any) -> Any:
    """``value`` cut if it is text (of any str type) longer than MAX_STR, else as it is."""
    return cut(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- encode side


def _wire_texts(where: str) -> Wire:
    """A ``list[str]`` field for the wire: at most MAX_LIST items, each text cut as a text
    field is (the same ``cut``, so a name in a list stays the name the peers know)."""
    def wire_texts(value: Any) -> Any:
        if type(value) is not list:
            return value  # (not ours to check: sent as it is, decode refuses it)
        if len(value) > MAX_LIST:
            raise _too_many(where, len(value))
        for v in value:
            if type(v) is not str or len(v) > MAX_STR:
                return [_cut_text(v) for v in value]
        return value
    return wire_texts


def _wire_int(where: str) -> Wire:
    """An int field for the wire: within MAX_INT (a bigger one would go as a CBOR bignum,
    which decode refuses: EncodeError, nothing sent)."""
    def wire_int(value: Any) -> Any:
        if type(value) is int and not -MAX_INT <= value <= MAX_INT:
            raise EncodeError(f"{where}: an int of {value.bit_length()} bits, more than the "
                              "64 that decode accepts")
        return value
    return wire_int


def _wire_list(item: Wire | None, where: str) -> Wire:
    """A list field for the wire: at most MAX_LIST items, each converted by ``item``
    (None: sent as they are)."""
    def wire_list(value: Any) -> Any:
        if type(value) is not list:
            return value  # (not ours to check: sent as it is, decode refuses it)
        if len(value) > MAX_LIST:
            raise _too_many(where, len(value))
        if item is None or not value:
            return value
        return [item(v) for v in value]
    return wire_list


def _too_many(where: str, n: int) -> EncodeError:
    return EncodeError(f"{where}: {n} items, more than the {MAX_LIST} that decode accepts "
                       f"(send them in several messages)")


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _check_depth(body: dict, name: str) -> None:
    """Raise ``EncodeError`` if maps and lists nest deeper than MAX_DEPTH in ``body``
    (a frame's CBOR-ready map: depth 1). Iterative: the value may be deeper than
    Python's recursion limit."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise EncodeError(f"{name}: containers nested more than {MAX_DEPTH} deep, which "
                              f"decode refuses")
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in items if isinstance(v, _CONTAINERS))


def scrub(value: Any) -> Any:
    """``value`` (CBOR-ready data) with every text that is not valid UTF-8 (lone
    surrogates, e.g. a file name decoded with ``surrogateescape`` in an error message)
    made valid by escaping those characters (``\\udcff``), and cut again if that made
    a text that fit MAX_STR longer. Maps and lists are rebuilt, the rest kept."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            fixed = value.encode("utf-8", "backslashreplace").decode("utf-8")
            return cut(fixed) if len(value) <= MAX_STR else fixed
        return value
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


# --------------------------------------------------------------------------- checkers


def _check_any(value: Any, where: str) -> Any:
    return value


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError("field", f"{where}: expected bool")
    return value


def _check_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -MAX_INT <= value <= MAX_INT:
        raise DecodeError("field", f"{where}: expected an int of at most 64 bits")
    return value


def _check_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            type(value) is int and not -MAX_INT <= value <= MAX_INT):
        raise DecodeError("field", f"{where}: expected a number (ints of at most 64 bits)")
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

# The generated decoder's test for a value of a plain type that the generic checker
# returns unchanged: true only for the exact types cbor2 produces for valid data (a
# ``float`` field given an int, or anything else, goes to the generic path). ``{v}`` is
# the variable holding the value.
_EXACT: dict[Any, str] = {
    Any: "", bool: "({v} is True or {v} is False)", int: "type({v}) is int and -MAX_INT <= {v} <= MAX_INT",
    float: "type({v}) is float", str: "type({v}) is str and len({v}) <= MAX_STR",
    bytes: "type({v}) is bytes",
}


def _list_checker(item: Checker) -> Checker:
    def check_list(value: Any, where: str) -> list:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise DecodeError("field", f"{where}: expected a list of at most {MAX_LIST}")
        if not value:  # the usual case (Call.visited, Call.avoid); a fresh list from CBOR
            return value
        where = f"{where}[]"
        return [item(v, where) for v in value]
    return check_list


def _optional(hint: Any) -> Any:
    """The inner type of ``X | None`` (None for any other hint)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = typing.get_args(hint)
        if _NONE in args:
            return [o for o in args if o is not _NONE][0]
    return None


class _Layout:
    """What the generic ``encode`` and ``decode`` need to know about one dataclass,
    worked out once: its field names and type hints in order; per field its checker,
    default and default factory; which fields are text (cut by ``encode``) and how the
    others are converted for the wire (``wires``: lists, records, ``Any``; plain values
    go as they are); and the error paths of its fields under a given parent path."""

    def __init__(self, cls: type, checker: Callable[[Any], Checker],
                 wirer: Callable[[Any, str], Wire | None]) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self.cls = cls
        self.names = tuple(f.name for f in fields)
        self.hints = tuple(hints[f.name] for f in fields)
        self.fields = tuple((f.name, checker(hints[f.name]), f.default, f.default_factory)
                            for f in fields)
        self.text = tuple(f.name for f in fields if hints[f.name] is str)
        wires = ((f.name, wirer(hints[f.name], f"{cls.__name__}.{f.name}")) for f in fields
                 if hints[f.name] is not str)
        self.wires = {name: wire for name, wire in wires if wire is not None}
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


def _compile(name: str, params: str, lines: list[str], namespace: dict[str, Any]) -> Callable:
    """The function ``def name(params)`` of body ``lines``, its globals ``namespace``
    (``name`` may be any text: a class name of ``make_dataclass`` is)."""
    source = "\n".join([f"def generated({params}):", *lines])
    exec(source, namespace)  # (our own source, made from our own schema)
    fn = namespace["generated"]
    fn.__name__ = fn.__qualname__ = name
    return fn
