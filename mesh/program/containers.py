"""The container walk: the one rule for where task values hide inside arguments.

The rule, the same on both sides (the program's runtime and the worker):

* a task argument, a ``wait_on`` value and a value put in a call for a worker are
  walked through **lists, tuples and dicts (their values)**, exactly those types, at any
  depth up to ``MAX_DEPTH`` (100) containers inside one another, the value itself
  being depth 0. That is where futures (dependencies), objects a task writes
  (INOUT/OUT: their latest version) and ``Ref`` (task outputs kept at agents: fetched
  by the worker) are found and put in place. PyCOMPSs' ``compss_wait_on`` walks lists
  and dicts at any depth; tuples are walked here too, as they were;
* a value nested deeper raises ``ValueError`` when the task is called (or in
  ``wait_on``): nothing is passed on unresolved silently;
* sets, frozensets, dict keys and subclasses of list, tuple or dict (named tuples,
  ``OrderedDict``...) are not walked into, as in PyCOMPSs: their items are hashed or
  their type cannot be rebuilt. They are searched (to the same depth), and one holding
  a future or an object a task writes raises ``TypeError`` at the call: pass a list;
* None, bools, numbers, str and bytes are never looked at (an immutable value is not
  an object a task writes in place).

``replace(x, visit)`` offers each node to ``visit`` (containers before their items):
``visit`` answers ``PASS`` (not one of its own: a container is walked into) or the
node's replacement (not walked into). Containers in which nothing was replaced are
returned as they are (no copy); ``visit`` may also only record what it sees.
"""

from __future__ import annotations

from typing import Any

ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
MAX_DEPTH = 100  # containers inside one another, at most, where futures are looked for
PASS = object()  # ``visit``'s answer for a node it does not replace
_OPAQUE = (list, tuple, dict, set, frozenset)  # (their subclasses, sets: searched only)


def replace(x: Any, visit, depth: int = 0) -> Any:
    """``x`` with the nodes ``visit`` replaces replaced (see the module docstring).
    Raises ValueError beyond ``MAX_DEPTH``, TypeError for a future or a written object
    inside a set, a dict key or a subclass of list, tuple or dict."""
    t = type(x)
    if t in ATOMS:
        return x
    new = visit(x)
    if new is not PASS:
        return new
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            _too_deep()
        items = None
        for i, item in enumerate(x):
            if type(item) in ATOMS:
                continue
            n = replace(item, visit, depth + 1)
            if n is not item:
                if items is None:
                    items = list(x)
                items[i] = n
        if items is None:
            return x
        return items if t is list else tuple(items)
    if t is dict:
        if depth >= MAX_DEPTH:
            _too_deep()
        changed = None
        for k, v in x.items():
            if type(k) not in ATOMS:
                _refuse_inside(k, visit, depth + 1, "a dict key")
            if type(v) in ATOMS:
                continue
            n = replace(v, visit, depth + 1)
            if n is not v:
                if changed is None:
                    changed = dict(x)
                changed[k] = n
        return x if changed is None else changed
    if isinstance(x, _OPAQUE):
        _refuse_inside(x, visit, depth, f"a {t.__name__}")
    return x


def _refuse_inside(x: Any, visit, depth: int, where: str) -> None:
    """``x`` is not walked into (a set, a key, a subclass): raise if anything ``visit``
    would replace is in it, to the same depth."""
    t = type(x)
    if t in ATOMS:
        return
    if visit(x) is not PASS:
        raise TypeError(f"{x!r:.80} is inside {where}, where task values are not looked "
                        f"for (only inside lists, tuples and dict values): pass a list")
    if isinstance(x, _OPAQUE):
        if depth >= MAX_DEPTH:
            _too_deep()
        items = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
        for item in items:
            _refuse_inside(item, visit, depth + 1, where)


def _too_deep() -> None:
    raise ValueError(f"a value nests lists, tuples and dicts more than {MAX_DEPTH} deep: "
                     f"task values (futures, objects tasks write) are looked for that deep "
                     f"only, so it cannot be passed to a task or waited on")


def leaves(coll: list, depth: int | None) -> list:
    """The elements of a collection parameter (``COLLECTION_*``), in order: the items of
    ``coll``, an item that is itself a list being a sub-collection walked in turn while
    ``depth`` (None: ``MAX_DEPTH``) allows; every other item is an element. The same
    walk on both sides: the program makes one datum of each element, the worker sends
    back the elements the task left."""
    out: list = []
    _leaves(coll, MAX_DEPTH if depth is None else depth, out.append, 0)
    return out


def map_leaves(coll: list, depth: int | None, fn) -> list:
    """A copy of the collection ``coll`` (new lists, same shape) with each element
    (``leaves``' walk, in its order) replaced by ``fn(element)``."""
    return _map(coll, MAX_DEPTH if depth is None else depth, fn, 0)


def _leaves(coll: list, depth: int, add, level: int) -> None:
    if level >= MAX_DEPTH:
        _too_deep()
    for item in coll:
        if type(item) is list and depth > 1:
            _leaves(item, depth - 1, add, level + 1)
        else:
            add(item)


def _map(coll: list, depth: int, fn, level: int) -> list:
    if level >= MAX_DEPTH:
        _too_deep()
    return [_map(item, depth - 1, fn, level + 1) if type(item) is list and depth > 1 else fn(item)
            for item in coll]
