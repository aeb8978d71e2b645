"""The container walk: where futures and the objects tasks write hide inside values.

``replace(x, visit)`` walks lists, tuples and dicts (their values) at any depth and
offers every node that is not None, a bool, a number, str or bytes to ``visit``:
``visit`` answers ``PASS`` (not one of its own: a container is walked into) or the
node's replacement (which is not walked into). Containers in which nothing was
replaced are returned as they are (no copy).
"""

from __future__ import annotations

from typing import Any

ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
PASS = object()  # ``visit``'s answer for a node it does not replace


def replace(x: Any, visit) -> Any:
    """``x`` with the nodes ``visit`` replaces replaced (see the module docstring)."""
    t = type(x)
    if t in ATOMS:
        return x
    new = visit(x)
    if new is not PASS:
        return new
    if t is list or t is tuple:
        items = None
        for i, item in enumerate(x):
            if type(item) in ATOMS:
                continue
            n = replace(item, visit)
            if n is not item:
                if items is None:
                    items = list(x)
                items[i] = n
        if items is None:
            return x
        return items if t is list else tuple(items)
    if t is dict:
        changed = None
        for k, v in x.items():
            if type(v) in ATOMS:
                continue
            n = replace(v, visit)
            if n is not v:
                if changed is None:
                    changed = dict(x)
                changed[k] = n
        return x if changed is None else changed
    return x
