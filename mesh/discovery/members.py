"""The membership table (``MemberTable``): every node this one knows, as a ``Member``
record, and the rules for its state.

Theory of operation
-------------------
A member's state changes only through ``MemberTable.set_state``, which checks it
against ``TRANSITIONS`` and returns the ``MemberChanged`` to announce:

    alive   -> suspect   a probe failed, or we heard a suspicion
    suspect -> alive     a refutation (higher incarnation)
    alive|suspect -> dead   the suspicion timed out, or we heard of the death
    dead    -> alive     it came back with a higher incarnation (was frozen/cut off)
    alive|suspect|dead -> left   it left gracefully (``Leave``); final for that id

Members enter with ``add`` and go with ``remove``. The table holds at most
``capacity`` members; ``oldest_gone`` names the dead or left member to forget first
when it is full (the caller forgets it: its connection goes too).

Every message carries random alive members (anti-entropy) and every timer looks at the
suspects, so the table keeps, besides the records by id, the ids by state: the alive
ones in a list for picks at random without a pass over the table (``pick_alive``), the
suspects, and the dead or left ones. The records' other fields (``conn``, ``rtt``,
``load``, ``info``, ...) are the callers' to change.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from mesh.discovery.actions import MemberChanged
from mesh.errors import LocalProtocolError
from mesh.wire.messages import Digest, Load, NodeInfo

TRANSITIONS = {
    ("alive", "suspect"),
    ("suspect", "alive"),
    ("alive", "dead"),
    ("suspect", "dead"),
    ("dead", "alive"),
    ("alive", "left"),
    ("suspect", "left"),
    ("dead", "left"),
}


@dataclass
class Member:
    """A node as this one sees it."""

    info: NodeInfo
    state: str
    conn: str | None  # address of our connection to it, if any
    last_heard: float
    changed_at: float
    load: Load | None = None
    rtt: float | None = None  # smoothed round-trip time, seconds
    suspected_at: float = 0.0
    suspecters: set[str] = field(default_factory=set)  # who suspects it (confirmations)
    # (the digest, made again when the state or the info, a frozen record, changes)
    _digest: Digest | None = field(default=None, repr=False, compare=False)
    _digest_of: NodeInfo | None = field(default=None, repr=False, compare=False)

    def view(self) -> dict:
        return {
            "id": self.info.id,
            "name": self.info.name,
            "address": self.info.address,
            "state": self.state,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "cpus": self.info.cpus,
            "free": None if self.load is None else self.load.free,
            "load": None if self.load is None else self.load.running + self.load.queued,
            "incarnation": self.info.incarnation,
            "labels": [] if self.load is None else list(self.load.labels),
            "memory": None if self.load is None or not self.load.memory else self.load.memory,
        }

    def digest(self) -> Digest:
        """What we believe about it, as gossip (every message carries a few)."""
        i, d = self.info, self._digest
        if d is None or d.state != self.state or self._digest_of is not i:
            d = self._digest = Digest(i.id, i.name, i.address, self.state, i.incarnation, i.cpus)
            self._digest_of = i
        return d


class MemberTable:
    """The members by id, and their ids by state. See the module docstring."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.members: dict[str, Member] = {}
        self._alive: list[str] = []  # alive ids, in no order (removal swaps with the last)
        self._slot: dict[str, int] = {}  # alive id -> its index in _alive
        # (dicts, not sets: iteration in a fixed order, so one seed gives one run)
        self._suspects: dict[str, None] = {}
        self._gone: dict[str, None] = {}  # dead or left

    # ------------------------------------------------------------------ changes

    def add(self, member: Member) -> None:
        """A member not in the table yet (the caller made room: ``full``, ``oldest_gone``)."""
        node_id = member.info.id
        if node_id in self.members:
            raise LocalProtocolError(f"member {member.info.name} is already in the table")
        self.members[node_id] = member
        self._index(node_id, member.state)

    def remove(self, member: Member) -> None:
        node_id = member.info.id
        del self.members[node_id]
        self._unindex(node_id, member.state)

    def set_state(self, member: Member, new: str, now: float) -> list[MemberChanged]:
        """Move ``member`` to ``new`` (``TRANSITIONS``): the news to announce, none if it
        was in that state already. Raises ``LocalProtocolError`` for a move not allowed."""
        old = member.state
        if old == new:
            return []
        if (old, new) not in TRANSITIONS:
            raise LocalProtocolError(f"member {member.info.name}: {old} -> {new} is not allowed")
        self._unindex(member.info.id, old)
        member.state = new
        member.changed_at = now
        if new == "alive":
            member.suspecters = set()
        self._index(member.info.id, new)
        return [MemberChanged(member.info.id, member.info.name, old, new, member.info.incarnation)]

    def _index(self, node_id: str, state: str) -> None:
        if state == "alive":
            self._slot[node_id] = len(self._alive)
            self._alive.append(node_id)
        elif state == "suspect":
            self._suspects[node_id] = None
        else:
            self._gone[node_id] = None

    def _unindex(self, node_id: str, state: str) -> None:
        if state == "alive":
            i = self._slot.pop(node_id)
            last = self._alive.pop()
            if last != node_id:
                self._alive[i] = last
                self._slot[last] = i
        elif state == "suspect":
            self._suspects.pop(node_id, None)
        else:
            self._gone.pop(node_id, None)

    # ------------------------------------------------------------------ queries

    def get(self, node_id: str | None) -> Member | None:
        return self.members.get(node_id) if node_id is not None else None

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def full(self) -> bool:
        return len(self.members) >= self.capacity

    def live(self) -> int:
        """How many members are alive or suspect."""
        return len(self._alive) + len(self._suspects)

    def alive(self) -> list[Member]:
        """The alive members, in no particular order."""
        return [self.members[i] for i in self._alive]

    def suspects(self) -> list[Member]:
        return [self.members[i] for i in self._suspects]

    def gone(self) -> list[Member]:
        """The dead and left members."""
        return [self.members[i] for i in self._gone]

    def oldest_gone(self) -> Member | None:
        """The dead or left member that changed state first (None: there is none)."""
        if not self._gone:
            return None
        return min((self.members[i] for i in self._gone), key=lambda m: m.changed_at)

    def pick_alive(self, k: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[Member]:
        """Up to ``k`` alive members drawn at random, none of ``exclude``: every subset of
        the right size as likely, and no pass over the table."""
        alive, slot = self._alive, self._slot
        barred = {i for i in exclude if i in slot}
        want = min(k, len(alive) - len(barred))
        if want <= 0:
            return []
        if 2 * (want + len(barred)) >= len(alive):  # most of them: one pass is cheaper
            pool = [i for i in alive if i not in barred]
            return [self.members[i] for i in rng.sample(pool, want)]
        picked: list[str] = []
        seen, n, draw = set(barred), len(alive), rng.random
        while len(picked) < want:  # rejection: over half the draws are good
            node_id = alive[int(draw() * n)]
            if node_id not in seen:
                seen.add(node_id)
                picked.append(node_id)
        return [self.members[i] for i in picked]

    def find(self, name_or_id: str) -> Member | None:
        """A member by id, id prefix (8+ hex digits) or name (unique)."""
        if name_or_id in self.members:
            return self.members[name_or_id]
        hits = [m for m in self.members.values()
                if m.info.name == name_or_id or (len(name_or_id) >= 8 and m.info.id.startswith(name_or_id))]
        return hits[0] if len(hits) == 1 else None

    def views(self) -> list[dict]:
        return [m.view() for m in sorted(self.members.values(), key=lambda m: m.info.name)]
