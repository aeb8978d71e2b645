"""``pycompss.api.parameter``: parameter types and directions, and the keys of a parameter
given as a dictionary (``{Type: COLLECTION_IN, Depth: 2}``), as PyCOMPSs names them
(strings, as in PyCOMPSs).

On the mesh (``to_mesh``):

* ``IN``, ``IN_DELETE`` -> IN (the mesh keeps nothing of a plain input, so nothing
  needs deleting); ``OUT``; ``INOUT``;
* ``CONCURRENT``, ``COMMUTATIVE`` -> INOUT: the tasks sharing the object run one after
  the other, in call order, which is one of the orders commutativity allows and one
  of the interleavings concurrent access allows;
* ``FILE``/``FILE_IN``, ``FILE_OUT``, ``FILE_INOUT``; ``FILE_CONCURRENT``,
  ``FILE_COMMUTATIVE`` -> FILE_INOUT (as above);
* ``COLLECTION``/``COLLECTION_IN``/``COLLECTION_IN_DELETE``, ``COLLECTION_INOUT``,
  ``COLLECTION_OUT``, with ``Depth`` (1 by default, as PyCOMPSs) -> ``Collection``;
* refused with ``Unsupported`` (naming the type): directories (``DIRECTORY_*``),
  collections of files (``COLLECTION_FILE*``), dictionaries (``DICT_COLLECTION*``),
  streams (``STREAM_*``), the standard streams of binaries (``STDIN``...), and a
  ``StdIOStream``, ``Prefix``, ``Weight`` other than its default, ``Keep_rename=False``
  or ``Cache=True`` in a dictionary.
"""

from __future__ import annotations

from typing import Any

from mesh.compat.pycompss._layer import refuse
from mesh.program import api as _mesh

# directions and types, as PyCOMPSs spells them
IN = "IN"
IN_DELETE = "IN_DELETE"
OUT = "OUT"
INOUT = "INOUT"
CONCURRENT = "CONCURRENT"
COMMUTATIVE = "COMMUTATIVE"
FILE = "FILE"
FILE_IN = "FILE_IN"
FILE_OUT = "FILE_OUT"
FILE_INOUT = "FILE_INOUT"
FILE_CONCURRENT = "FILE_CONCURRENT"
FILE_COMMUTATIVE = "FILE_COMMUTATIVE"
FILE_STDIN = "FILE_STDIN"
FILE_STDERR = "FILE_STDERR"
FILE_STDOUT = "FILE_STDOUT"
FILE_IN_STDIN = "FILE_IN_STDIN"
FILE_IN_STDERR = "FILE_IN_STDERR"
FILE_IN_STDOUT = "FILE_IN_STDOUT"
FILE_OUT_STDIN = "FILE_OUT_STDIN"
FILE_OUT_STDERR = "FILE_OUT_STDERR"
FILE_OUT_STDOUT = "FILE_OUT_STDOUT"
FILE_INOUT_STDIN = "FILE_INOUT_STDIN"
FILE_INOUT_STDERR = "FILE_INOUT_STDERR"
FILE_INOUT_STDOUT = "FILE_INOUT_STDOUT"
FILE_CONCURRENT_STDIN = "FILE_CONCURRENT_STDIN"
FILE_CONCURRENT_STDERR = "FILE_CONCURRENT_STDERR"
FILE_CONCURRENT_STDOUT = "FILE_CONCURRENT_STDOUT"
FILE_COMMUTATIVE_STDIN = "FILE_COMMUTATIVE_STDIN"
FILE_COMMUTATIVE_STDERR = "FILE_COMMUTATIVE_STDERR"
FILE_COMMUTATIVE_STDOUT = "FILE_COMMUTATIVE_STDOUT"
DIRECTORY = "DIRECTORY"
DIRECTORY_IN = "DIRECTORY_IN"
DIRECTORY_OUT = "DIRECTORY_OUT"
DIRECTORY_INOUT = "DIRECTORY_INOUT"
COLLECTION = "COLLECTION"
COLLECTION_IN = "COLLECTION_IN"
COLLECTION_INOUT = "COLLECTION_INOUT"
COLLECTION_OUT = "COLLECTION_OUT"
COLLECTION_IN_DELETE = "COLLECTION_IN_DELETE"
COLLECTION_FILE = "COLLECTION_FILE"
COLLECTION_FILE_IN = "COLLECTION_FILE_IN"
COLLECTION_FILE_INOUT = "COLLECTION_FILE_INOUT"
COLLECTION_FILE_OUT = "COLLECTION_FILE_OUT"
DICT_COLLECTION = "DICT_COLLECTION"
DICT_COLLECTION_IN = "DICT_COLLECTION_IN"
DICT_COLLECTION_INOUT = "DICT_COLLECTION_INOUT"
DICT_COLLECTION_OUT = "DICT_COLLECTION_OUT"
DICT_COLLECTION_IN_DELETE = "DICT_COLLECTION_IN_DELETE"
STREAM_IN = "STREAM_IN"
STREAM_OUT = "STREAM_OUT"
STDIN = "STDIN"
STDOUT = "STDOUT"
STDERR = "STDERR"

# keys of a parameter given as a dictionary
Type = "type"
Direction = "direction"
StdIOStream = "stream"
Prefix = "prefix"
Depth = "depth"
Weight = "weight"
Keep_rename = "keep_rename"
Cache = "cache"

# what ``from pycompss.api.parameter import *`` gives a program: the types and the keys
__all__ = [n for n, v in list(globals().items()) if isinstance(v, str) and n[:1].isupper()]

_DIRECTIONS = {  # PyCOMPSs' name -> the mesh's direction
    "IN": _mesh.IN, "IN_DELETE": _mesh.IN, "OUT": _mesh.OUT, "INOUT": _mesh.INOUT,
    "CONCURRENT": _mesh.INOUT, "COMMUTATIVE": _mesh.INOUT,
    "FILE": _mesh.FILE_IN, "FILE_IN": _mesh.FILE_IN, "FILE_OUT": _mesh.FILE_OUT,
    "FILE_INOUT": _mesh.FILE_INOUT, "FILE_CONCURRENT": _mesh.FILE_INOUT,
    "FILE_COMMUTATIVE": _mesh.FILE_INOUT,
}
_COLLECTIONS = {"COLLECTION": _mesh.IN, "COLLECTION_IN": _mesh.IN, "COLLECTION_IN_DELETE": _mesh.IN,
                "COLLECTION_INOUT": _mesh.INOUT, "COLLECTION_OUT": _mesh.OUT}
_REFUSED = {
    "DIRECTORY": "directory parameters", "COLLECTION_FILE": "collections of files",
    "DICT_COLLECTION": "dictionary collections", "STREAM": "stream parameters",
    "STD": "standard streams (of binary tasks)",
}
_DEFAULTS = {StdIOStream: ("UNSPECIFIED", None), Prefix: ("null", "", None),
             Weight: ("1", "1.0", 1, 1.0), Keep_rename: (True,), Cache: (False, None)}


def is_parameter(value: Any) -> bool:
    """Whether a ``@task`` keyword's value is a parameter's type (else an option)."""
    if isinstance(value, str):
        return value in _DIRECTIONS or value in _COLLECTIONS or _refused(value) is not None
    return isinstance(value, dict) and Type in value


def to_mesh(name: str, value: Any) -> Any:
    """The mesh's direction (or ``Collection``) for the parameter ``name`` declared as
    ``value``; ``Unsupported`` for what the mesh does not offer (module docstring)."""
    depth = 1
    if isinstance(value, dict):
        spec = dict(value)
        kind = spec.pop(Type, None)
        depth = spec.pop(Depth, 1)
        spec.pop(Direction, None)  # (the type names the direction already: FILE_INOUT, ...)
        for key, val in spec.items():
            if key not in _DEFAULTS:
                raise TypeError(f"parameter {name!r}: unknown key {key!r} (Type, Depth, StdIOStream, "
                                f"Prefix, Weight, Keep_rename, Cache)")
            if val not in _DEFAULTS[key]:
                raise refuse(f"{key}={val!r} (parameter {name!r})",
                             "the mesh chooses where data lives and how it is named")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise TypeError(f"parameter {name!r}: Depth must be an int >= 1, not {depth!r}")
    else:
        kind = value
    if kind in _DIRECTIONS:
        return _DIRECTIONS[kind]
    if kind in _COLLECTIONS:
        return _mesh.Collection(_COLLECTIONS[kind], depth)
    what = _refused(kind) if isinstance(kind, str) else None
    if what is not None:
        raise refuse(f"{kind} (parameter {name!r})", f"{what} are not offered")
    raise TypeError(f"parameter {name!r}: {kind!r} is not a PyCOMPSs parameter type")


def _refused(kind: str) -> str | None:
    for prefix, what in _REFUSED.items():
        if kind.startswith(prefix) or (prefix == "STD" and "_STD" in kind):
            return what
    return None
