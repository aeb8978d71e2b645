"""The fields of wire messages, for ``mesh.wire.codec``: the limits, one checker per field
type (each raises ``DecodeError`` with reason ``field`` and the field's path), and a
class's layout (its fields in order, their checkers, defaults and factories, which
fields are text to cut and which need converting). ``_EXACT`` gives, per plain type,
the generated decoder's test for a value that the checker would return unchanged.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from mesh.errors import DecodeError

MAX_FRAME = 64 * 1024 * 1024  # bytes; larger frames are dropped unread
MAX_VALUE = MAX_FRAME - (1 << 20)  # the most pickled bytes one message carries (a call's
# payload, a result's value), leaving room for the rest of its frame: bigger ones are
# refused where they are made (``mesh.errors.ValueTooLarge``), never sent
MAX_STR = 4096  # longest accepted text field (names, addresses, error messages are cut)
MAX_LIST = 4096  # longest accepted list field
BATCH_BYTES = 1 << 20  # frames bigger than this travel alone; a batch stops growing there

_NONE = type(None)
_MISSING = dataclasses.MISSING

Checker = Callable[[Any, str], Any]  # (value, where) -> value, or DecodeError


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


# --------------------------------------------------------------------------- checkers


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

# The generated decoder's test for a value of a plain type that the generic checker
# returns unchanged: true only for the exact types cbor2 produces for valid data (a
# ``float`` field given an int, or anything else, goes to the generic path). ``{v}`` is
# the variable holding the value.
_EXACT: dict[Any, str] = {
    Any: "", bool: "({v} is True or {v} is False)", int: "type({v}) is int",
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


class _Layout:
    """What the generic ``encode`` and ``decode`` need to know about one dataclass,
    worked out once: its field names and type hints in order; per field its checker,
    default and default factory; which fields are text (cut by ``encode``) and which
    need converting (records, lists of them, ``Any``); and the error paths of its fields
    under a given parent path."""

    def __init__(self, cls: type, checker: Callable[[Any], Checker]) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self.cls = cls
        self.names = tuple(f.name for f in fields)
        self.hints = tuple(hints[f.name] for f in fields)
        self.fields = tuple((f.name, checker(hints[f.name]), f.default, f.default_factory)
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


def _compile(name: str, params: str, lines: list[str], namespace: dict[str, Any]) -> Callable:
    """The function ``def name(params)`` of body ``lines``, its globals ``namespace``
    (``name`` may be any text: a class name of ``make_dataclass`` is)."""
    source = "\n".join([f"def generated({params}):", *lines])
    exec(source, namespace)  # (our own source, made from our own schema)
    fn = namespace["generated"]
    fn.__name__ = fn.__qualname__ = name
    return fn
