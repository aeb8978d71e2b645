"""The tree advert (the one record the tree core puts on the wire) and its ordering.

An ``Advert`` is what a node tells its tree neighbours about its route to the root.
Its fields are ints, floats, strings and one list of strings, so it can become a
record of ``mesh/wire/messages.py`` unchanged.

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
from dataclasses import dataclass, field

NO_ROUTE = -1.0  # ``rank`` of an advert whose sender has no route to a root now

Label = tuple  # (term, settled, score, root, seq, -rank)
BOTTOM: Label = (-1, 0, -math.inf, "", -1, -math.inf)  # worse than any real label


@dataclass(frozen=True)
class Advert:
    """What a node says about its place in the latency tree.

    ``root``/``term``/``settled``/``score``: the root key of the sender's tree ("" and
    -1 while it has never had one). ``succeeds``: the root whose loss opened this term
    ("" for a first root). ``seq``: the root's sequence number as the sender last got
    it. ``rank``: path latency to the root in seconds, or ``NO_ROUTE``. ``parent``:
    the sender's parent ("" if none). ``path``: the sender's ancestors, parent first,
    root last (empty for the root). ``stamp``: the sender's advert counter, so a
    receiver can drop an advert that arrives after a newer one. ``ask``: 1 asks the
    receiver to answer at once with its own advert.
    """

    root: str = ""
    term: int = -1
    settled: int = 0
    score: float = 0.0
    succeeds: str = ""
    seq: int = 0
    rank: float = NO_ROUTE
    parent: str = ""
    path: list[str] = field(default_factory=list)
    stamp: int = 0
    ask: int = 0

    @property
    def routed(self) -> bool:
        """Whether the sender has a route to a root now (``valid`` adverts only)."""
        return self.rank >= 0.0

    def key(self) -> tuple:
        """The root key: how trees compare (bigger wins)."""
        return (self.term, self.settled, self.score, self.root)

    def label(self) -> Label:
        """The label of this advert; ``BOTTOM``-like for one without a route."""
        if not self.routed:
            return (self.term, self.settled, self.score, self.root, self.seq, -math.inf)
        return (self.term, self.settled, self.score, self.root, self.seq, -self.rank)


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
