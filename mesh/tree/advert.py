"""The ordering of tree adverts: labels, root keys, and the check of a peer's advert.

An ``Advert`` (a record of the wire, ``mesh.wire.messages``) is what a node tells its
tree neighbours about its route to the root; this module says how adverts compare.

Labels
------
Every advert that carries a route has a *label*, a tuple compared
lexicographically, bigger is better::

    (term, settled, score, root, seq, -rank)
     \\_____ root key _________/

* the **root key** ``(term, settled, score, root)`` orders trees (election rule, see
  ``mesh/tree/core.py``);
* ``seq`` is the root's sequence number, raised by the root every period and copied
  down the tree (fresher is better);
* ``rank`` is the path latency to the root in seconds (smaller is better).

A node's *feasibility label* (its "feasible distance", as in Babel and DSDV) is the
best label it has ever advertised. The loop-freedom argument in the core rests on
two facts about it, both enforced here or in the core: every advert a node sends
has a label no better than its feasibility label, and that label never decreases.
"""

from __future__ import annotations

import math

from mesh.wire.messages import NO_ROUTE, Advert

__all__ = ["BOTTOM", "NO_ROUTE", "Advert", "Label", "key", "label", "routed", "valid"]

Label = tuple  # (term, settled, score, root, seq, -rank)
BOTTOM: Label = (-1, 0, -math.inf, "", -1, -math.inf)  # worse than any real label


def routed(a: Advert) -> bool:
    """Whether the sender has a route to a root now (``valid`` adverts only)."""
    return a.rank >= 0.0


def key(a: Advert) -> tuple:
    """The root key: how trees compare (bigger wins)."""
    return (a.term, a.settled, a.score, a.root)


def label(a: Advert) -> Label:
    """The label of an advert; ``BOTTOM``-like for one without a route."""
    return (a.term, a.settled, a.score, a.root, a.seq, -a.rank if a.rank >= 0.0 else -math.inf)


def valid(advert: object, max_depth: int) -> bool:
    """Whether a peer's advert makes sense (a peer's fault is dropped, never raised).

    Field types are the codec's job (``messages.decode`` checks every field against
    the dataclass); this checks the values."""
    if type(advert) is not Advert:
        return False
    a = advert
    try:
        return (a.settled in (0, 1) and a.ask in (0, 1) and a.term >= -1 and a.seq >= 0
                and math.isfinite(a.score) and math.isfinite(a.rank)
                and (a.rank == NO_ROUTE or (a.rank >= 0.0 and a.term >= 0))
                and (a.term < 0 or a.root != "") and len(a.path) <= max_depth)
    except TypeError:
        return False
