"""Joining and dissemination: how the membership core learns of members, connects to
them, and spreads news of them.

A mixin of ``mesh.discovery.membership.Membership`` (pure, like the rest of it: it
opens no socket and reads no clock; the state it reads and changes is the table's).

Theory of operation
-------------------
Bootstrap. Nodes are learnt from seed addresses (``--peer``/MESH_PEERS), mDNS
announcements and gossip. mDNS and seeds only bootstrap; liveness comes only
from probes, because mDNS keeps dead services for a long time.

Connections are keyed by address: ``Connect(addr)`` opens our DEALER to the
peer's ROUTER. Requests (``Ping``, ``PingReq``, ``Leave``) travel over our own
connection; answers (``Pong``, ``IndirectAck``, ``Nack``) come back over the
requester's connection (``Reply`` to its identity). A seed's node id is unknown
until it answers; a second connection to a known node, or one to ourselves, is
closed.

Silent addresses. An address we connect to that no member answers on yet (a seed,
an mDNS announcement, gossip about a member we have not met, a ``PingReq`` target;
``_ghost``) is pinged with exponential back-off: after the ping that goes with the
connection, again after ``seed_retry``, then twice as long each time, at most
``dial_backoff_max`` apart (``_Dial``). After ``dial_attempts`` pings without an
answer it is forgotten (``Disconnect``): mDNS keeps dead services for a long time, and
gossip and ``PingReq`` may name addresses that are gone. Seeds are never forgotten;
they are pinged with the same back-off for as long as nobody answers there. (A dead
member keeps its own connection and slow ping every ``seed_retry`` until it is
forgotten, see ``mesh.discovery.membership``.)

The table of connections holds at most ``max_members`` addresses besides the seeds' (a
seed is connected whatever the table holds). When a new address needs room (``_room``),
the silent address pinged most (then the oldest) is forgotten first, then the oldest
dead or left member; the connections of live members and seeds are never given up. So
a new live member can always join: only a table full of live members (or seeds) turns
it away.

Dissemination: every message carries a few ``Digest``s from ``GossipBuffer``
(fresh news first), then random members' digests (anti-entropy, spreading joins).

News (``_apply``) follows SWIM's rules: a higher incarnation overrides older news,
and news of a member that left is final. News that we are suspect, dead or left is
refuted with a newer incarnation unless we are leaving (``_about_me``; see Suspicion
in ``mesh.discovery.probing``), and news of a member we suspect or hold dead goes
first on messages to it (``_gossip_for``). A member enters the table on its first
direct contact (``_heard``: its Ping to us, or its Pong); news of an unknown member
only makes us connect to it and ping it. When the table is full, the oldest dead or
left member is forgotten to make room (``_evict``, then ``Forgotten``), never an alive or
suspect one. Members joining faster than they are probed do not pile up in the round
robin (``_order``): it is pruned of forgotten ids when it outgrows the table.
"""

from __future__ import annotations

import random

from mesh.discovery.actions import (
    Action,
    Connect,
    DeclaredDead,
    Disconnect,
    Forgotten,
    MemberChanged,
    Send,
)
from mesh.discovery.detector import GossipBuffer, LocalHealth
from mesh.discovery.members import Member, _Dial, _Seed
from mesh.discovery.timing import Timing
from mesh.wire.messages import Digest, Load, NodeInfo, Ping


class Joining:
    """Mixin of ``Membership``: seeds, connections, direct contact, and the news
    piggybacked on every message.

    ``Membership.receive`` calls ``_heard``, ``_apply`` and ``_gossip_for``, ``tick``
    calls ``_slow_pings``, ``add_seed`` and ``discovered`` call ``_room``, ``_connect``
    and ``_ping``. It uses the state below, ``Membership._set_state`` and, from
    ``mesh.discovery.probing``, ``_suspect``."""

    me: NodeInfo
    timing: Timing
    rng: random.Random
    max_members: int
    members: dict[str, Member]
    seeds: dict[str, _Seed]
    health: LocalHealth
    gossip: GossipBuffer
    counters: dict[str, int]
    _conns: dict[str, str | None]
    _dials: dict[str, _Dial]
    _sent: dict[int, tuple[str, float]]
    _order: list[str]
    _seq: int
    _next_slow: float
    _load: Load
    _leaving: bool

    # ------------------------------------------------------------------ news

    def _apply(self, digests: list[Digest], now: float, sender: str | None) -> list[Action]:
        """SWIM's rules for news about a node (incarnations order the news)."""
        acts: list[Action] = []
        for d in digests:
            if d.state not in ("alive", "suspect", "dead", "left"):
                continue
            if d.id == self.me.id:
                acts += self._about_me(d)
                continue
            member = self.members.get(d.id)
            if member is None:
                if d.state in ("alive", "suspect") and d.address and d.address not in self._conns:
                    room = self._room(now)
                    if room is not None:
                        acts += room + self._connect(d.address, d.id, now)
                        acts.append(self._ping(d.address, now))
                continue
            inc = member.info.incarnation
            if member.state == "left" or d.incarnation < inc:
                continue
            if d.state == "alive":
                if d.incarnation > inc:
                    member.info = NodeInfo(d.id, d.name or member.info.name,
                                           d.address or member.info.address, d.cpus, d.incarnation)
                    if member.state in ("suspect", "dead"):
                        acts += self._set_state(member, "alive", now)
                    self.gossip.add(member.digest())
            elif d.state == "suspect":
                if d.incarnation > inc:
                    member.info = NodeInfo(member.info.id, member.info.name, member.info.address,
                                           member.info.cpus, d.incarnation)
                acts += self._suspect(member, d.incarnation, sender or "?", now)
            elif d.state == "dead":
                if member.state in ("alive", "suspect"):
                    acts += self._set_state(member, "dead", now)
                    self.gossip.add(member.digest())
            elif d.state == "left":
                acts += self._set_state(member, "left", now)
                self.gossip.add(member.digest())
                acts += self._drop_conn(member)
        return acts

    def _about_me(self, d: Digest) -> list[Action]:
        if d.state == "alive" or self._leaving or d.incarnation < self.me.incarnation:
            return []
        # suspected or declared dead (or left) by someone: refute with a newer incarnation
        self.me = NodeInfo(self.me.id, self.me.name, self.me.address, self.me.cpus, d.incarnation + 1)
        self.counters["refuted"] += 1
        self.health.up()
        self.gossip.add(Digest(self.me.id, self.me.name, self.me.address, "alive",
                               self.me.incarnation, self.me.cpus))
        return [DeclaredDead(d.incarnation)] if d.state in ("dead", "left") else []

    def _gossip_for(self, receiver: str | None) -> list[Digest]:
        """What to piggyback on a message to ``receiver``: its own bad news first (so a
        suspect can refute at once), then fresh updates, then random members."""
        live = sum(1 for m in self.members.values() if m.state in ("alive", "suspect")) + 1
        first = None
        member = self.members.get(receiver) if receiver else None
        if member is not None and member.state in ("suspect", "dead"):
            first = member.digest()
        out = self.gossip.take(self.timing.gossip_fanout, live, first)
        room = self.timing.gossip_fanout - len(out)
        if room > 0:
            known = {d.id for d in out}
            pool = [m for m in self.members.values()
                    if m.state == "alive" and m.info.id not in known and m.info.id != receiver]
            for m in self.rng.sample(pool, min(room, len(pool))):
                out.append(m.digest())
        return out

    # ------------------------------------------------------------------ connections

    def _ping(self, address: str, now: float) -> Send:
        self._seq += 1
        self._sent[self._seq] = (address, now)
        receiver = self._conns.get(address)
        return Send(address, Ping(self._seq, self.me, self._load, self._gossip_for(receiver)))

    def _slow_pings(self, now: float) -> list[Action]:
        """Every seed_retry: dead members; silent addresses whose back-off is over (or
        forgotten after ``dial_attempts``, seeds aside); seeds not connected."""
        if now < self._next_slow:
            return []
        t = self.timing
        self._next_slow = now + t.seed_retry
        acts: list[Action] = []
        for member in self.members.values():
            if member.state == "dead" and member.conn is not None:
                acts.append(self._ping(member.conn, now))
        for address in list(self._conns):
            if not self._ghost(address):
                self._dials.pop(address, None)  # a member answers there now
                continue
            dial = self._dials.get(address)
            if dial is None:
                dial = self._dials[address] = _Dial(now, now, 0)
            if now < dial.next:
                continue
            if dial.pings >= t.dial_attempts and address not in self.seeds:
                self.counters["silent_forgotten"] += 1
                acts += self._forget_address(address)
                continue
            acts.append(self._ping(address, now))  # answers tell us who is there
            dial.pings += 1
            dial.next = now + min(t.seed_retry * 2 ** min(dial.pings - 1, 32), t.dial_backoff_max)
        for seed in self.seeds.values():
            member = self.members.get(seed.node_id) if seed.node_id else None
            reachable = member is not None and member.state in ("alive", "suspect")
            if not reachable and seed.address not in self._conns:
                acts += self._connect(seed.address, None, now)
                acts.append(self._ping(seed.address, now))
        return acts

    def _connect(self, address: str, node_id: str | None, now: float) -> list[Action]:
        """Connect to ``address`` (the caller pings it at once): silent until a member
        answers there (``_Dial``). Callers make room first (``_room``), seeds aside."""
        if address in self._conns:
            return []
        self._conns[address] = node_id
        self._dials[address] = _Dial(now, now + self.timing.seed_retry)
        return [Connect(address)]

    def _ghost(self, address: str) -> bool:
        """Whether no member answers on this connection (yet, or any more)."""
        node_id = self._conns.get(address)
        member = self.members.get(node_id) if node_id is not None else None
        return member is None or member.conn != address

    def _room(self, now: float) -> list[Action] | None:
        """Room in the table of connections for one more address (module docstring):
        the actions that made it (none if there was room), or None if every connection
        is a live member's or a seed's."""
        acts: list[Action] = []
        while len(self._conns) >= self.max_members:
            ghosts = [a for a in self._conns if a not in self.seeds and self._ghost(a)]
            if ghosts:
                dials, never = self._dials, _Dial(now, now, 0)
                worst = max(ghosts, key=lambda a: (dials.get(a, never).pings, -dials.get(a, never).since))
                self.counters["silent_forgotten"] += 1
                acts += self._forget_address(worst)
                continue
            evicted = self._evict()
            if evicted is None:
                return None
            acts += evicted
        return acts

    def _forget_address(self, address: str) -> list[Action]:
        del self._conns[address]
        self._dials.pop(address, None)
        return [Disconnect(address)]

    def _drop_conn(self, member: Member) -> list[Action]:
        address, member.conn = member.conn, None
        if address is None or self._conns.get(address, member.info.id) != member.info.id:
            return []  # none, or now another member's (a node restarted at this address)
        self._conns.pop(address, None)
        self._dials.pop(address, None)
        return [Disconnect(address)]

    def _heard(self, info: NodeInfo, load: Load, now: float, via: str | None) -> list[Action]:
        """Direct contact from ``info`` (a Ping to us, or a Pong over ``via``)."""
        acts: list[Action] = []
        if via is not None:
            for seed in self.seeds.values():
                if seed.address == via:
                    seed.node_id = info.id
        if info.id == self.me.id:
            # one of our seeds (or an announcement) was ourselves
            if via is not None and via in self._conns:
                acts += self._forget_address(via)
            if via is not None:
                self.seeds.pop(via, None)  # else we would reconnect to ourselves forever
            return acts
        member = self.members.get(info.id)
        if member is None:
            if len(self.members) >= self.max_members:
                evicted = self._evict()
                if evicted is None:
                    return acts
                acts += evicted
            member = Member(info, "alive", None, now, now, load)
            self.members[info.id] = member
            acts.append(MemberChanged(info.id, info.name, "new", "alive", info.incarnation))
            self.gossip.add(member.digest())  # spread the join
            if len(self._order) > 2 * len(self.members):  # (joins faster than probes)
                self._order = [i for i in self._order if i in self.members]
            self._order.append(info.id)  # probe it soon: measures its round trip
        else:
            if info.incarnation > member.info.incarnation:
                member.info = info
                if member.state in ("suspect", "dead"):
                    acts += self._set_state(member, "alive", now)
                    self.gossip.add(member.digest())
            member.load = load
        member.last_heard = now
        if via is not None:
            if member.conn is None:
                member.conn = via
                self._conns[via] = info.id
            elif member.conn != via and via in self._conns:
                acts += self._forget_address(via)  # a second path to a known member: keep one
        elif member.conn is None and member.state != "left":
            if info.address not in self._conns:  # (a member's connection: made even when
                acts += self._room(now) or []  # the table is full of others' and seeds)
                acts += self._connect(info.address, info.id, now)
            member.conn = info.address
            self._conns[info.address] = info.id  # the seed connection may be open, id unknown
            acts.append(self._ping(info.address, now))
        return acts

    def _evict(self) -> list[Action] | None:
        """Forget the oldest dead or left member and close its connection (then
        ``Forgotten``); None if every member is alive or suspect."""
        gone = [m for m in self.members.values() if m.state in ("dead", "left")]
        if not gone:
            return None
        oldest = min(gone, key=lambda m: m.changed_at)
        del self.members[oldest.info.id]
        return self._drop_conn(oldest) + [Forgotten(oldest.info.id)]
