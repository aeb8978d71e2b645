"""Task outputs kept where they were made: references, the agent's object store, fetches.

Theory of operation
-------------------
A task's output that pickles to more than ``inline_max`` bytes (an agent setting,
100 kB by default as in Ray) does not travel back to the program. The worker hands its
bytes to its own agent (``put``) and the result carries a ``Ref`` instead: the object's
id, the node id of the agent holding it and its size. The program's task graph keeps
the ``Ref`` as that data version's value, so a task reading it gets the ``Ref`` in its
call (a few dozen bytes) and:

* the call says where its inputs are (``Call.inputs``: bytes per holder), and placement
  prefers the agent holding most of them when it has a free slot (``mesh.sched.dispatch``);
* the worker running it asks its agent for each ``Ref`` (``get``): the agent answers from
  its store (the common case: the consumer ran where the data is), or fetches the bytes
  from the holder directly (``Fetch``/``Object``), never through the program.

``wait_on`` fetches the same way, through the program's agent. When the program
releases a version (no task will read it again), it frees the object at its holder
(``Free``).

The holder may leave or die with the object. A fetch then fails with ``ObjectLost``, and
the program-side runtime (``mesh.program.runtime``) runs the task that made it again (its
lineage: the task's call as it was sent, with its own ``Ref`` inputs recomputed the
same way when they are lost too), then the reader. So a lost device costs
recomputation, never a wrong or missing result.

``Objects`` is the agent's part, a sans-IO state machine like the other cores: events
(``put``, ``get``, ``serve``, ``fetched``, ``holder_lost``, ``origin_lost``, ``free``,
``tick``) in, actions (``Give``: answer a waiter; ``FetchFrom``: ask a holder) out.
The store is bounded (``max_bytes``); a worker is told how many bytes it may put, and
keeps an output inline when the store is full, so nothing is ever evicted. Copies
fetched from other agents are kept in a small LRU cache, so several readers on one agent
cost one transfer.

Bounds: the store holds at most ``max_bytes`` and the cache ``cache_bytes`` (each object
more than ``inline_max`` bytes); an object goes when its program frees it, its client
session ends (``owner_closed``) or its origin agent is lost (``origin_lost``); a fetch
ends within ``fetch_timeout``; ended sessions are remembered, the newest ``max_closed``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

INLINE_MAX = 100_000  # bytes: bigger task outputs stay where they were made
FETCH_TIMEOUT = 60.0  # seconds without an answer from a live holder


class ObjectLost(Exception):
    """A task output kept at another agent is gone (its holder left, died, or the object
    was freed). The program-side runtime recomputes it."""

    def __init__(self, oid: str, text: str) -> None:
        super().__init__(text)
        self.oid = oid

    def __reduce__(self):
        return (ObjectLost, (self.oid, str(self)))


class Ref:
    """A task output held by an agent (see the module docstring). Stands in for the value
    in the program's graph and in calls; workers and ``wait_on`` fetch the value."""

    __slots__ = ("oid", "holder", "size")

    def __init__(self, oid: str, holder: str, size: int) -> None:
        self.oid = oid
        self.holder = holder  # node id of the agent holding the bytes
        self.size = size  # pickled bytes

    def __reduce__(self):
        return (Ref, (self.oid, self.holder, self.size))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.oid == self.oid

    def __hash__(self) -> int:
        return hash(self.oid)

    def __repr__(self) -> str:
        return f"<Ref {self.oid[:8]} at {self.holder[:8]}, {self.size} bytes>"


def new_oid() -> str:
    return os.urandom(16).hex()


# ------------------------------------------------------------------ the agent's part


@dataclass(frozen=True)
class Give:
    """Answer ``waiter`` (opaque to this module: a worker, a client's identity) with the
    object's bytes, or with ``error`` when it cannot be had."""

    waiter: Any
    oid: str
    data: bytes | None
    error: str = ""


@dataclass(frozen=True)
class FetchFrom:
    """Ask the agent ``holder`` (a node id) for the object ``oid``."""

    holder: str
    oid: str


@dataclass
class _Stored:
    data: bytes
    origin: str  # node id of the agent whose program owns it ("" unknown)
    owner: str = ""  # the client session whose call made it


@dataclass
class _Fetching:
    holder: str
    since: float
    waiters: list = field(default_factory=list)


@dataclass
class Objects:
    """The object store of one agent and its fetches in flight (module docstring)."""

    node_id: str
    max_bytes: int = 1 << 30
    cache_bytes: int = 64 << 20
    fetch_timeout: float = FETCH_TIMEOUT
    stored: dict[str, _Stored] = field(default_factory=dict)
    nbytes: int = 0
    cache: OrderedDict = field(default_factory=OrderedDict)  # oid -> bytes (fetched copies)
    cached: int = 0
    fetching: dict[str, _Fetching] = field(default_factory=dict)
    closed: OrderedDict = field(default_factory=OrderedDict)  # client sessions that ended
    max_closed: int = 10_000
    counters: dict[str, int] = field(default_factory=lambda: {
        "put": 0, "put_bytes": 0, "refused": 0, "freed": 0, "dropped": 0,
        "local_reads": 0, "served": 0, "served_bytes": 0, "fetched": 0, "fetched_bytes": 0,
        "cache_hits": 0, "lost": 0,
    })

    # ------------------------------------------------------------------ queries

    def room(self) -> int:
        """Bytes a put may still take."""
        return max(self.max_bytes - self.nbytes, 0)

    def has(self, oid: str) -> bool:
        return oid in self.stored

    # ------------------------------------------------------------------ events

    def put(self, oid: str, data: bytes, origin: str = "", owner: str = "") -> bool:
        """A local worker kept a task output here. False (and nothing stored) if the
        store is full or the id is taken (the worker was told the room, so this is only
        an overshoot of concurrent puts: a reader recomputes it), or if its owner's
        session ended (nobody can read it: dropped, counted)."""
        if owner and owner in self.closed:
            self.counters["dropped"] += 1
            return False
        if oid in self.stored or len(data) > self.room():
            self.counters["refused"] += 1
            return False
        self.stored[oid] = _Stored(data, origin, owner)
        self.nbytes += len(data)
        self.counters["put"] += 1
        self.counters["put_bytes"] += len(data)
        return True

    def get(self, oid: str, holder: str, waiter: Any, now: float) -> list:
        """Someone here (a worker, a client) wants ``oid``, held by ``holder``."""
        stored = self.stored.get(oid)
        if stored is not None:
            self.counters["local_reads"] += 1
            return [Give(waiter, oid, stored.data)]
        data = self.cache.get(oid)
        if data is not None:
            self.cache.move_to_end(oid)
            self.counters["cache_hits"] += 1
            return [Give(waiter, oid, data)]
        if not holder or holder == self.node_id:
            self.counters["lost"] += 1
            return [Give(waiter, oid, None, f"ObjectLost: object {oid[:8]} is not held here "
                                            "(freed, or this agent restarted)")]
        pending = self.fetching.get(oid)
        if pending is not None:
            pending.waiters.append(waiter)
            return []
        self.fetching[oid] = _Fetching(holder, now, [waiter])
        return [FetchFrom(holder, oid)]

    def serve(self, oid: str) -> tuple[bytes | None, str]:
        """Another agent asks for ``oid``: (bytes, "") or (None, why not)."""
        stored = self.stored.get(oid)
        data = stored.data if stored is not None else self.cache.get(oid)
        if data is None:
            self.counters["lost"] += 1
            return None, f"ObjectLost: object {oid[:8]} is not held by this agent (freed?)"
        self.counters["served"] += 1
        self.counters["served_bytes"] += len(data)
        return data, ""

    def fetched(self, oid: str, data: bytes | None, error: str = "") -> list:
        """The holder answered (``data`` None: it does not have it)."""
        pending = self.fetching.pop(oid, None)
        if pending is None:
            return []  # timed out or failed already
        if data is None:
            self.counters["lost"] += 1
            return [Give(w, oid, None, error or "ObjectLost") for w in pending.waiters]
        self.counters["fetched"] += 1
        self.counters["fetched_bytes"] += len(data)
        self._cache(oid, data)
        return [Give(w, oid, data) for w in pending.waiters]

    def holder_lost(self, holder: str, why: str = "left or died") -> list:
        """The agent ``holder`` is gone: what we were fetching from it is lost."""
        acts = []
        for oid, pending in list(self.fetching.items()):
            if pending.holder == holder:
                del self.fetching[oid]
                self.counters["lost"] += 1
                acts += [Give(w, oid, None, f"ObjectLost: its holder {why}") for w in pending.waiters]
        return acts

    def origin_lost(self, origin: str) -> int:
        """The agent whose program owned these objects is gone: nobody can free or read
        them any more. Returns how many were dropped."""
        gone = [oid for oid, s in self.stored.items() if s.origin == origin and origin]
        for oid in gone:
            self.nbytes -= len(self.stored.pop(oid).data)
        self.counters["dropped"] += len(gone)
        return len(gone)

    def owner_closed(self, owner: str) -> int:
        """A client session ended: drop its objects, and those its calls still make.
        Returns how many were dropped."""
        self.closed[owner] = True
        while len(self.closed) > self.max_closed:
            self.closed.popitem(last=False)
        gone = [oid for oid, s in self.stored.items() if s.owner == owner]
        for oid in gone:
            self.nbytes -= len(self.stored.pop(oid).data)
        self.counters["dropped"] += len(gone)
        return len(gone)

    def free(self, oids: list[str]) -> int:
        """The program will not read these again."""
        n = 0
        for oid in oids:
            stored = self.stored.pop(oid, None)
            if stored is not None:
                self.nbytes -= len(stored.data)
                n += 1
            data = self.cache.pop(oid, None)
            if data is not None:
                self.cached -= len(data)
        self.counters["freed"] += n
        return n

    def tick(self, now: float) -> list:
        """Fail fetches a live holder never answered."""
        acts = []
        for oid, pending in list(self.fetching.items()):
            if now - pending.since > self.fetch_timeout:
                del self.fetching[oid]
                self.counters["lost"] += 1
                acts += [Give(w, oid, None, f"ObjectLost: no answer from its holder in "
                                            f"{self.fetch_timeout:.0f} s") for w in pending.waiters]
        return acts

    def status(self) -> dict:
        return {"objects": len(self.stored), "bytes": self.nbytes, "max_bytes": self.max_bytes,
                "cached": len(self.cache), "fetching": len(self.fetching), **self.counters}

    def _cache(self, oid: str, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        self.cache[oid] = data
        self.cached += len(data)
        while self.cached > self.cache_bytes:
            _, old = self.cache.popitem(last=False)
            self.cached -= len(old)
