"""Membership: who is in the mesh, how to reach them, whether they answer.

Theory of operation
-------------------
A pure state machine: the agent feeds it events with the current monotonic time
(``now``) and carries out the actions it returns. It opens no socket and reads
no clock.

Nodes are learnt three ways: seed addresses (``--peer``/MESH_PEERS), mDNS
announcements, and gossip (every ``Ping``/``Pong`` carries a few ``Digest``s of
what the sender knows). mDNS and seeds only bootstrap; liveness comes only from
heartbeats, because mDNS keeps dead services for a long time.

Connections are keyed by address: ``Connect(addr)`` opens our outgoing DEALER to
the peer's ROUTER, on which we send ``Ping``; the peer answers ``Pong`` on the same
path and pings us over its own connection, so heartbeats flow both ways. A seed's
node id is unknown until its first ``Pong``; if that id is already connected under
another address, or is ourselves, the extra connection is closed.

Member states and the allowed transitions (``TRANSITIONS``):

    alive   -> suspect   nothing heard for ``suspect_after``
    suspect -> alive     anything heard
    suspect -> dead      nothing heard for ``dead_after``
    alive|suspect -> left   a ``Leave`` was received
    dead|left -> alive   heard again with an incarnation at least as new
                          (a restarted node has a new id, so this is a node
                          that was frozen or cut off and came back)

Dead members keep their connection (ZeroMQ reconnects by itself) and are pinged
every ``seed_retry`` seconds, so a node that was frozen or cut off is noticed when
it comes back. Dead and left members are kept for ``forget_after`` seconds, then
forgotten; the table holds at most ``max_members`` (evicting the oldest dead or
left member with its connection), and gossip or mDNS open no connection beyond that.

This is the simple liveness counter of the walking skeleton; SWIM-style probing,
indirect probes and suspicion refutation come with the membership issue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from mesh.errors import LocalProtocolError
from mesh.messages import Digest, Leave, Load, Message, NodeInfo, Ping, Pong

TRANSITIONS = {
    ("alive", "suspect"),
    ("suspect", "alive"),
    ("suspect", "dead"),
    ("alive", "left"),
    ("suspect", "left"),
    ("dead", "alive"),
    ("left", "alive"),
}


@dataclass(frozen=True)
class Timing:
    """Heartbeat timings, in seconds."""

    ping_interval: float = 0.5
    suspect_after: float = 1.5
    dead_after: float = 4.0
    seed_retry: float = 1.0
    forget_after: float = 120.0
    gossip_fanout: int = 6

    @classmethod
    def profile(cls, name: str) -> Timing:
        """``default`` (LAN/Wi-Fi) or ``fast`` (wired/lab). Raises ValueError otherwise."""
        if name == "default":
            return cls()
        if name == "fast":
            return cls(ping_interval=0.1, suspect_after=0.3, dead_after=0.8, seed_retry=0.3)
        raise ValueError(f"unknown timing profile {name!r} (expected default or fast)")


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Connect:
    address: str


@dataclass(frozen=True)
class Disconnect:
    address: str


@dataclass(frozen=True)
class Send:
    """Send over our own connection to ``address``."""

    address: str
    message: Message


@dataclass(frozen=True)
class Reply:
    """Send back over our ROUTER to the connection ``identity`` that reached us."""

    identity: bytes
    message: Message


@dataclass(frozen=True)
class MemberChanged:
    """A member changed state; the agent logs it and re-plans calls held by it."""

    node_id: str
    name: str
    old: str
    new: str


Action = Connect | Disconnect | Send | Reply | MemberChanged


# ----------------------------------------------------------------------------- state


@dataclass
class Member:
    info: NodeInfo
    state: str
    conn: str | None  # address of our connection to it, if any
    last_heard: float
    changed_at: float
    load: Load | None = None
    rtt: float | None = None  # smoothed round-trip time, seconds

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
        }


@dataclass
class _Seed:
    address: str
    next_try: float
    node_id: str | None = None  # learnt from its first Pong


@dataclass
class Membership:
    """The membership table of one node. See the module docstring."""

    me: NodeInfo
    timing: Timing = field(default_factory=Timing)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    max_members: int = 1024
    members: dict[str, Member] = field(default_factory=dict)
    seeds: dict[str, _Seed] = field(default_factory=dict)
    _conns: dict[str, str | None] = field(default_factory=dict)  # address -> node id
    _sent: dict[int, tuple[str, float]] = field(default_factory=dict)  # seq -> (address, t)
    _seq: int = 0
    _next_ping: float = 0.0
    _next_slow_ping: float = 0.0
    _load: Load = field(default_factory=lambda: Load(0, 0, 0, 0))
    _leaving: bool = False

    # ------------------------------------------------------------------ inputs

    def set_load(self, load: Load) -> None:
        """The load reported in our next heartbeats."""
        self._load = load

    def add_seed(self, address: str, now: float) -> list[Action]:
        """Contact ``address`` (host:port) until it answers; keep it as a seed for good."""
        if address == self.me.address or address in self.seeds:
            return []
        self.seeds[address] = _Seed(address, next_try=now)
        return self._connect(address, None) + [self._ping(address, now)]

    def discovered(self, node_id: str, address: str, now: float) -> list[Action]:
        """An mDNS announcement: a node may exist at ``address``."""
        if node_id == self.me.id:
            return []
        member = self.members.get(node_id)
        if member is not None and member.conn is not None:
            return []
        if address in self._conns or len(self._conns) >= self.max_members:
            return []
        return self._connect(address, node_id) + [self._ping(address, now)]

    def receive(
        self, msg: Message, now: float, *, via: str | None = None, identity: bytes | None = None
    ) -> list[Action]:
        """A membership message arrived: over our connection to ``via``, or on our
        ROUTER from connection ``identity``."""
        if isinstance(msg, Ping):
            acts = self._heard(msg.sender, msg.load, now, via)
            acts += self._gossip_in(msg.gossip, now)
            if identity is not None:  # also to ourselves: the Pong reveals a seed that is us
                acts.append(Reply(identity, Pong(msg.seq, self.me, self._load, self._gossip_out())))
            return acts
        if isinstance(msg, Pong):
            acts = []
            sent = self._sent.pop(msg.seq, None)
            acts += self._heard(msg.sender, msg.load, now, via)
            member = self.members.get(msg.sender.id)
            if sent is not None and member is not None and sent[0] == member.conn:
                sample = max(now - sent[1], 0.0)
                member.rtt = sample if member.rtt is None else 0.8 * member.rtt + 0.2 * sample
            acts += self._gossip_in(msg.gossip, now)
            return acts
        if isinstance(msg, Leave):
            member = self.members.get(msg.node_id)
            if member is None or member.state not in ("alive", "suspect"):
                return []
            acts = self._set_state(member, "left", now)
            return acts + self._drop_conn(member)
        return []

    def heard_from(self, node_id: str, now: float) -> None:
        """Any other message from a member is a sign of life."""
        member = self.members.get(node_id)
        if member is not None and member.state in ("alive", "suspect"):
            member.last_heard = now
            if member.state == "suspect":
                self._set_state(member, "alive", now)

    def tick(self, now: float) -> list[Action]:
        """Timers: heartbeats, suspicion, death, seed retries, forgetting."""
        acts: list[Action] = []
        t = self.timing
        for member in list(self.members.values()):
            silent = now - member.last_heard
            if member.state == "alive" and silent > t.suspect_after:
                acts += self._set_state(member, "suspect", now)
            elif member.state == "suspect" and silent > t.dead_after:
                # keep the connection: ZeroMQ reconnects by itself, and a slow ping
                # notices a node that was frozen or cut off and comes back
                acts += self._set_state(member, "dead", now)
            elif member.state in ("dead", "left") and now - member.changed_at > t.forget_after:
                acts += self._drop_conn(member)
                del self.members[member.info.id]
        if self._leaving:
            return acts
        if now >= self._next_ping:
            self._next_ping = now + t.ping_interval
            slow = now >= self._next_slow_ping
            if slow:
                self._next_slow_ping = now + t.seed_retry
            for member in self.members.values():
                if member.conn is None:
                    continue
                if member.state in ("alive", "suspect") or (member.state == "dead" and slow):
                    acts.append(self._ping(member.conn, now))
            for address, node_id in self._conns.items():
                if node_id is None or node_id not in self.members:
                    acts.append(self._ping(address, now))
        for seed in self.seeds.values():
            member = self.members.get(seed.node_id) if seed.node_id else None
            reachable = member is not None and member.state in ("alive", "suspect")
            if not reachable and now >= seed.next_try:
                seed.next_try = now + t.seed_retry
                if seed.address not in self._conns:
                    acts += self._connect(seed.address, None)
                acts.append(self._ping(seed.address, now))
        # forget pings that were never answered
        stale = [s for s, (_, t0) in self._sent.items() if now - t0 > t.dead_after]
        for s in stale:
            del self._sent[s]
        return acts

    def leave(self) -> list[Action]:
        """Tell every reachable member that we leave; stop heartbeats."""
        self._leaving = True
        msg = Leave(self.me.id, self.me.incarnation)
        return [
            Send(m.conn, msg)
            for m in self.members.values()
            if m.conn is not None and m.state in ("alive", "suspect")
        ]

    # ------------------------------------------------------------------ queries

    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == "alive"]

    def member_at(self, address: str) -> Member | None:
        node_id = self._conns.get(address)
        return self.members.get(node_id) if node_id else None

    def views(self) -> list[dict]:
        return [m.view() for m in sorted(self.members.values(), key=lambda m: m.info.name)]

    # ------------------------------------------------------------------ internals

    def _ping(self, address: str, now: float) -> Send:
        self._seq += 1
        self._sent[self._seq] = (address, now)
        return Send(address, Ping(self._seq, self.me, self._load, self._gossip_out()))

    def _connect(self, address: str, node_id: str | None) -> list[Action]:
        if address in self._conns:
            return []
        self._conns[address] = node_id
        return [Connect(address)]

    def _drop_conn(self, member: Member) -> list[Action]:
        address, member.conn = member.conn, None
        if address is None or self._conns.get(address, member.info.id) != member.info.id:
            return []  # none, or now another member's (a node restarted at this address)
        self._conns.pop(address, None)
        return [Disconnect(address)]

    def _heard(self, info: NodeInfo, load: Load, now: float, via: str | None) -> list[Action]:
        acts: list[Action] = []
        if via is not None:
            for seed in self.seeds.values():
                if seed.address == via:
                    seed.node_id = info.id
        if info.id == self.me.id:
            # one of our seeds (or an announcement) was ourselves
            if via is not None and via in self._conns:
                del self._conns[via]
                acts.append(Disconnect(via))
            if via is not None:
                self.seeds.pop(via, None)  # else tick() would reconnect to ourselves forever
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
            acts.append(MemberChanged(info.id, info.name, "new", "alive"))
        else:
            if member.state in ("dead", "left"):
                if info.incarnation < member.info.incarnation:
                    return acts
                acts += self._set_state(member, "alive", now)
            elif member.state == "suspect":
                acts += self._set_state(member, "alive", now)
            if info.incarnation >= member.info.incarnation:
                member.info = info
            member.load = load
        member.last_heard = now
        if via is not None:
            if member.conn is None:
                member.conn = via
                self._conns[via] = info.id
            elif member.conn != via and via in self._conns:
                del self._conns[via]  # a second path to a known member: keep one
                acts.append(Disconnect(via))
        elif member.conn is None:
            acts += self._connect(info.address, info.id)
            member.conn = info.address
            self._conns[info.address] = info.id  # the seed connection may be open, id unknown
            acts.append(self._ping(info.address, now))
        return acts

    def _gossip_in(self, digests: list[Digest], now: float) -> list[Action]:
        acts: list[Action] = []
        for d in digests:
            if d.id == self.me.id or d.state != "alive":
                continue  # deaths are decided locally; a full SWIM dissemination comes later
            if d.id in self.members or d.address in self._conns:
                continue
            if len(self._conns) >= self.max_members:
                break  # bounded: no more connections than the table can hold members
            acts += self._connect(d.address, d.id)
            acts.append(self._ping(d.address, now))
        return acts

    def _gossip_out(self) -> list[Digest]:
        alive = [m for m in self.members.values() if m.state in ("alive", "suspect")]
        if len(alive) > self.timing.gossip_fanout:
            alive = self.rng.sample(alive, self.timing.gossip_fanout)
        return [
            Digest(m.info.id, m.info.name, m.info.address, m.state, m.info.incarnation, m.info.cpus)
            for m in alive
        ]

    def _set_state(self, member: Member, new: str, now: float) -> list[Action]:
        old = member.state
        if (old, new) not in TRANSITIONS:
            raise LocalProtocolError(f"member {member.info.name}: {old} -> {new} is not allowed")
        member.state = new
        member.changed_at = now
        return [MemberChanged(member.info.id, member.info.name, old, new)]

    def _evict(self) -> list[Action] | None:
        """Forget the oldest dead or left member and close its connection; None if
        every member is alive or suspect."""
        gone = [m for m in self.members.values() if m.state in ("dead", "left")]
        if not gone:
            return None
        oldest = min(gone, key=lambda m: m.changed_at)
        del self.members[oldest.info.id]
        return self._drop_conn(oldest)


def with_incarnation(info: NodeInfo, incarnation: int) -> NodeInfo:
    return replace(info, incarnation=incarnation)
