"""Connections of the membership core (``Dialer``): seeds, the connection per address,
silent addresses with back-off, and room in the tables.

Theory of operation
-------------------
Connections are keyed by address: ``Connect(addr)`` opens our DEALER to the peer's
ROUTER. Requests (``Ping``, ``PingReq``, ``Leave``) travel over our own connection;
answers (``Pong``, ``IndirectAck``, ``Nack``) come back over the requester's
connection (``Reply`` to its identity). A seed's node id is unknown until it answers;
a second connection to a known node, or one to ourselves, is closed (the news rules
in ``mesh.discovery.membership`` decide which).

Silent addresses. An address we connect to that no member answers on yet (a seed,
an mDNS announcement, gossip about a member we have not met, a ``PingReq`` target;
``ghost``) is pinged with exponential back-off: after the ping that goes with the
connection, again after ``seed_retry``, then twice as long each time, at most
``dial_backoff_max`` apart (``_Dial``). After ``dial_attempts`` pings without an
answer it is forgotten (``Disconnect``): mDNS keeps dead services for a long time, and
gossip and ``PingReq`` may name addresses that are gone. Seeds are never forgotten;
they are pinged with the same back-off for as long as nobody answers there, and one
whose member is unreachable is connected to again. Dead members keep their own
connection and get a slow ping every ``seed_retry`` until they are forgotten
(ZeroMQ reconnects by itself: a member that was cut off answers again).

Room. The table of connections holds at most ``capacity`` addresses besides the
seeds' (a seed is connected whatever the table holds). When a new address needs room
(``room``), the silent address pinged most (then the oldest) is forgotten first, then
the oldest dead or left member (``forget``: its connection goes with it, then
``Forgotten``); the connections of live members and seeds are never given up. So a
new live member can always join: only a table full of live members (or seeds) turns
it away. The silent addresses are looked for among ``dials`` (every new connection,
and every connection no member answered on at the last slow tick), not among all
connections: news of nodes we have no room for, which every message may carry in a
mesh larger than our table, costs no pass over the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.discovery.actions import Action, Connect, Disconnect, Forgotten, Send
from mesh.discovery.members import Member, MemberTable
from mesh.discovery.outbox import Outbox
from mesh.discovery.timing import Timing


@dataclass
class _Seed:
    address: str
    node_id: str | None = None  # learnt from its first answer


@dataclass
class _Dial:
    """An address we are connected to that no member answers on yet: pinged with
    exponential back-off (module docstring)."""

    since: float  # when we connected to it
    next: float  # when to ping it again
    pings: int = 1  # pings sent to it so far (the first goes with the connection)


class Dialer:
    """Our connections by address, the seeds, and the silent addresses. See the module
    docstring."""

    def __init__(self, table: MemberTable, outbox: Outbox, timing: Timing) -> None:
        self.seeds: dict[str, _Seed] = {}
        self.conns: dict[str, str | None] = {}  # address -> node id (None: not known yet)
        self.dials: dict[str, _Dial] = {}  # silent addresses (all of them in conns)
        self.counters = {"silent_forgotten": 0}
        self._table = table
        self._outbox = outbox
        self._timing = timing
        self._next_slow = 0.0

    # ------------------------------------------------------------------ queries

    def member_at(self, address: str) -> Member | None:
        """The member that answers on our connection to ``address``, if known."""
        return self._table.get(self.conns.get(address))

    def ghost(self, address: str) -> bool:
        """Whether no member answers on this connection (yet, or any more)."""
        member = self.member_at(address)
        return member is None or member.conn != address

    def next_timer(self) -> float:
        return self._next_slow

    def just_dialled(self, address: str, now: float) -> bool:
        """Whether we connected to ``address`` less than ``ack_timeout`` ago: every
        connection starts with a ping, whose answer is then still on its way."""
        dial = self.dials.get(address)
        return dial is not None and now - dial.since < self._timing.ack_timeout

    # ------------------------------------------------------------------ dialling

    def ping(self, address: str, now: float) -> Send:
        return self._outbox.ping(address, self.conns.get(address), now)

    def add_seed(self, address: str, now: float) -> list[Action]:
        """Keep ``address`` as a seed for good, and dial it."""
        if address in self.seeds:
            return []
        self.seeds[address] = _Seed(address)
        return self.dial(address, None, now)

    def seed_answered(self, address: str, node_id: str) -> None:
        """``node_id`` answered on ``address``: if a seed, now we know who it is."""
        seed = self.seeds.get(address)
        if seed is not None:
            seed.node_id = node_id

    def drop_seed(self, address: str) -> None:
        self.seeds.pop(address, None)

    def dial(self, address: str, node_id: str | None, now: float) -> list[Action]:
        """Connect to ``address`` (unless connected) and ping it."""
        return self.connect(address, node_id, now) + [self.ping(address, now)]

    def connect(self, address: str, node_id: str | None, now: float) -> list[Action]:
        """Connect to ``address``: silent until a member answers there (``_Dial``).
        Callers make room first (``room``), seeds aside, and ping it at once."""
        if address in self.conns:
            return []
        self.conns[address] = node_id
        self.dials[address] = _Dial(now, now + self._timing.seed_retry)
        return [Connect(address)]

    def bind(self, address: str, node_id: str) -> None:
        """The connection to ``address`` is ``node_id``'s (opened, or known now)."""
        self.conns[address] = node_id

    # ------------------------------------------------------------------ room

    def room(self, now: float) -> list[Action] | None:
        """Room for one more address (module docstring): the actions that made it (none
        if there was room), or None if every connection is a live member's or a seed's."""
        acts: list[Action] = []
        while len(self.conns) >= self._table.capacity:
            ghosts = [a for a in self.dials if a not in self.seeds and self.ghost(a)]
            if ghosts:
                dials = self.dials
                worst = max(ghosts, key=lambda a: (dials[a].pings, -dials[a].since))
                self.counters["silent_forgotten"] += 1
                acts += self.forget_address(worst)
                continue
            evicted = self.evict()
            if evicted is None:
                return None
            acts += evicted
        return acts

    def evict(self) -> list[Action] | None:
        """Forget the oldest dead or left member (``forget``); None if every member is
        alive or suspect."""
        oldest = self._table.oldest_gone()
        return None if oldest is None else self.forget(oldest)

    def forget(self, member: Member) -> list[Action]:
        """Drop ``member`` from the table, with its connection; then ``Forgotten``."""
        self._table.remove(member)
        return self.drop_conn(member) + [Forgotten(member.info.id)]

    def forget_address(self, address: str) -> list[Action]:
        del self.conns[address]
        self.dials.pop(address, None)
        return [Disconnect(address)]

    def drop_conn(self, member: Member) -> list[Action]:
        """Close ``member``'s connection, unless it is now another member's."""
        address, member.conn = member.conn, None
        if address is None or self.conns.get(address, member.info.id) != member.info.id:
            return []  # none, or now another member's (a node restarted at this address)
        self.conns.pop(address, None)
        self.dials.pop(address, None)
        return [Disconnect(address)]

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> list[Action]:
        """Every seed_retry: dead members; silent addresses whose back-off is over (or
        forgotten after ``dial_attempts``, seeds aside); seeds not connected."""
        if now < self._next_slow:
            return []
        t = self._timing
        self._next_slow = now + t.seed_retry
        acts: list[Action] = []
        for member in self._table.gone():
            if member.state == "dead" and member.conn is not None:
                acts.append(self.ping(member.conn, now))
        for address in list(self.conns):
            if not self.ghost(address):
                self.dials.pop(address, None)  # a member answers there now
                continue
            dial = self.dials.get(address)
            if dial is None:
                dial = self.dials[address] = _Dial(now, now, 0)
            if now < dial.next:
                continue
            if dial.pings >= t.dial_attempts and address not in self.seeds:
                self.counters["silent_forgotten"] += 1
                acts += self.forget_address(address)
                continue
            acts.append(self.ping(address, now))  # answers tell us who is there
            dial.pings += 1
            dial.next = now + min(t.seed_retry * 2 ** min(dial.pings - 1, 32), t.dial_backoff_max)
        for seed in self.seeds.values():
            member = self._table.get(seed.node_id)
            reachable = member is not None and member.state in ("alive", "suspect")
            if not reachable and seed.address not in self.conns:
                acts += self.dial(seed.address, None, now)
        return acts
