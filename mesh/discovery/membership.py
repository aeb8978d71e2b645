"""Membership and failure detection: SWIM with Lifeguard's refinements.

Theory of operation
-------------------
A pure state machine: the agent feeds it events with the current monotonic time
(``now``) and carries out the actions it returns. It opens no socket and reads
no clock; randomness comes from the ``random.Random`` it is given.

Bootstrap. Nodes are learnt from seed addresses (``--peer``/MESH_PEERS), mDNS
announcements and gossip. mDNS and seeds only bootstrap; liveness comes only
from probes, because mDNS keeps dead services for a long time.

Connections are keyed by address: ``Connect(addr)`` opens our DEALER to the
peer's ROUTER. Requests (``Ping``, ``PingReq``, ``Leave``) travel over our own
connection; answers (``Pong``, ``IndirectAck``, ``Nack``) come back over the
requester's connection (``Reply`` to its identity). A seed's node id is unknown
until it answers; a second connection to a known node, or one to ourselves, is
closed.

Probing (SWIM). Every protocol period a node probes one member: members it has
heard are suspect first, then the others in a shuffled round robin. It sends
``Ping``; with no answer within ``ack_timeout`` it asks ``indirect`` other members
to probe the target (``PingReq``), and they answer ``IndirectAck`` or ``Nack``.
Any message from the target during the probe counts as its answer. With no
answer by the end of the period the target becomes *suspect*. A connection
reset (``connection_lost``) makes a node probe that member at once: a TCP reset
is a welcome hint, never the detector itself.

Suspicion (Lifeguard). A suspect becomes *dead* after ``suspicion_timeout``,
which starts long and shrinks with independent confirmations. A suspect that
hears of its own suspicion refutes it by raising its incarnation and
disseminating ``alive``; news with a higher incarnation overrides older news.
Messages to a member we suspect, or believe dead, carry that news first, so a
frozen node that wakes up learns it at once and refutes (rejoins).

Local health (Lifeguard, ``detector.LocalHealth``) stretches our probe timeouts
when we have signs that we are the slow one.

Dissemination: every message carries a few ``Digest``s from ``GossipBuffer``
(fresh news first), then random members' digests (anti-entropy, spreading joins).

Member states and the allowed transitions (``TRANSITIONS``):

    alive   -> suspect   a probe failed, or we heard a suspicion
    suspect -> alive     a refutation (higher incarnation)
    alive|suspect -> dead   the suspicion timed out, or we heard of the death
    dead    -> alive     it came back with a higher incarnation (was frozen/cut off)
    alive|suspect|dead -> left   it left gracefully (``Leave``); final for that id

Dead members keep their connection (ZeroMQ reconnects by itself) and get a slow
ping every ``seed_retry`` seconds; dead and left members are forgotten after
``forget_after``; the table holds at most ``max_members``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mesh.discovery.actions import (
    Action,
    Connect,
    DeclaredDead,
    Disconnect,
    MemberChanged,
    Reply,
    Send,
)
from mesh.discovery.detector import GossipBuffer, LocalHealth, suspicion_bounds, suspicion_timeout
from mesh.discovery.timing import Timing
from mesh.errors import LocalProtocolError
from mesh.messages import (
    Digest,
    IndirectAck,
    Leave,
    Load,
    Message,
    Nack,
    NodeInfo,
    Ping,
    PingReq,
    Pong,
)

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
ROUTER_MESSAGES = (Ping, PingReq, Leave)  # arrive on our ROUTER
DEALER_MESSAGES = (Pong, IndirectAck, Nack)  # arrive on our own connections


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
    suspected_at: float = 0.0
    suspecters: set[str] = field(default_factory=set)  # who suspects it (confirmations)

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
        i = self.info
        return Digest(i.id, i.name, i.address, self.state, i.incarnation, i.cpus)


@dataclass
class _Seed:
    address: str
    node_id: str | None = None  # learnt from its first answer


@dataclass
class _Probe:
    """Our probe of one member in the current period."""

    target: str
    seq: int
    sent: float
    ack_deadline: float
    end: float
    helpers: int = 0
    nacks: int = 0
    acked: bool = False


@dataclass
class _Relay:
    """A probe we make on behalf of another member (``PingReq``)."""

    requester: bytes
    their_seq: int
    target: str
    deadline: float


@dataclass
class Membership:
    """The membership table and failure detector of one node. See the module docstring."""

    me: NodeInfo
    timing: Timing = field(default_factory=Timing)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    max_members: int = 1024
    members: dict[str, Member] = field(default_factory=dict)
    seeds: dict[str, _Seed] = field(default_factory=dict)
    health: LocalHealth = field(default_factory=LocalHealth)
    gossip: GossipBuffer = field(default_factory=GossipBuffer)
    counters: dict[str, int] = field(default_factory=lambda: {
        "probes": 0, "probe_failures": 0, "indirect": 0, "suspicions": 0, "refuted": 0,
        "deaths": 0, "forged_leaves": 0})
    _conns: dict[str, str | None] = field(default_factory=dict)  # address -> node id
    _sent: dict[int, tuple[str, float]] = field(default_factory=dict)  # seq -> (address, t)
    _relays: dict[int, _Relay] = field(default_factory=dict)  # our seq -> relay
    _probe: _Probe | None = None
    _order: list[str] = field(default_factory=list)  # round robin of probe targets
    _urgent: list[str] = field(default_factory=list)  # members to probe before the rest
    _seq: int = 0
    _next_period: float = 0.0
    _next_slow: float = 0.0
    _last_tick: float | None = None
    _load: Load = field(default_factory=lambda: Load(0, 0, 0, 0))
    _leaving: bool = False

    def __post_init__(self) -> None:
        self.gossip.retransmit_mult = self.timing.retransmit_mult

    # ------------------------------------------------------------------ inputs

    def set_load(self, load: Load) -> None:
        """The load reported in our next messages."""
        self._load = load

    def add_seed(self, address: str, now: float) -> list[Action]:
        """Contact ``address`` (host:port) until it answers; keep it as a seed for good."""
        if address == self.me.address or address in self.seeds:
            return []
        self.seeds[address] = _Seed(address)
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
        """A membership message arrived: over our connection to ``via`` (answers), or
        on our ROUTER from connection ``identity`` (requests)."""
        if isinstance(msg, Ping):
            acts = self._heard(msg.sender, msg.load, now, via)
            acts += self._apply(msg.gossip, now, msg.sender.id)
            if identity is not None:  # also to ourselves: the Pong reveals a seed that is us
                acts.append(Reply(identity, Pong(msg.seq, self.me, self._load,
                                                  self._gossip_for(msg.sender.id))))
            return acts
        if isinstance(msg, Pong):
            acts = self._heard(msg.sender, msg.load, now, via)
            member = self.members.get(msg.sender.id)
            sent = self._sent.pop(msg.seq, None)
            if sent is not None and member is not None and sent[0] == member.conn:
                sample = max(now - sent[1], 0.0)
                member.rtt = sample if member.rtt is None else 0.8 * member.rtt + 0.2 * sample
            relay = self._relays.pop(msg.seq, None)
            if relay is not None and relay.target == msg.sender.id:
                acts.append(Reply(relay.requester, IndirectAck(
                    relay.their_seq, relay.target, self._gossip_for(None))))
            acts += self._apply(msg.gossip, now, msg.sender.id)
            return acts
        if isinstance(msg, PingReq):
            return self._ping_req(msg, now, identity)
        if isinstance(msg, IndirectAck):
            probe = self._probe
            if probe is not None and probe.seq == msg.seq and probe.target == msg.target:
                self._acked(now)
            return self._apply(msg.gossip, now, None)
        if isinstance(msg, Nack):
            probe = self._probe
            if probe is not None and probe.seq == msg.seq:
                probe.nacks += 1
            return []
        if isinstance(msg, Leave):
            if identity is None or identity.hex() != msg.node_id:
                self.counters["forged_leaves"] += 1  # only a node itself may say it leaves
                return []
            return self._apply([Digest(msg.node_id, "", "", "left", msg.incarnation)], now, msg.node_id)
        return []

    def heard_from(self, node_id: str, now: float) -> list[Action]:
        """Any message from a member is a sign of life: it answers our probe of it."""
        member = self.members.get(node_id)
        if member is None:
            return []
        member.last_heard = now
        probe = self._probe
        if probe is not None and probe.target == node_id and not probe.acked:
            self._acked(now)
        return []

    def connection_lost(self, address: str, now: float) -> list[Action]:
        """Our connection to ``address`` was reset (TCP FIN/RST): probe its member now."""
        node_id = self._conns.get(address)
        member = self.members.get(node_id) if node_id else None
        if member is None or member.state not in ("alive", "suspect"):
            return []
        if node_id not in self._urgent:
            self._urgent.insert(0, node_id)
        probe = self._probe
        if probe is not None and not probe.acked:
            if probe.target == node_id:
                return []  # already probing it
            # abandon, not fail, the probe of another member: ended now, it would suspect
            # a member whose answer or indirect acks are still on their way
            self._probe = None
        self._next_period = now  # start the next period (and this probe) at once
        return []

    def declare_lost(self, node_id: str, now: float) -> list[Action]:
        """An operator says this member is gone (COMPSs lostNode): dead at once, and
        the news spreads. A member that is in fact alive refutes and comes back."""
        member = self.members.get(node_id)
        if member is None or member.state not in ("alive", "suspect"):
            return []
        acts = self._set_state(member, "dead", now)
        self.counters["deaths"] += 1
        self.gossip.add(member.digest())
        return acts

    def find(self, name_or_id: str) -> Member | None:
        """A member by id, id prefix (8+ hex digits) or name (unique)."""
        if name_or_id in self.members:
            return self.members[name_or_id]
        hits = [m for m in self.members.values()
                if m.info.name == name_or_id or (len(name_or_id) >= 8 and m.info.id.startswith(name_or_id))]
        return hits[0] if len(hits) == 1 else None

    def set_cpus(self, cpus: int) -> None:
        """Our slot count changed: newer news about ourselves (incarnation + 1)."""
        self.me = NodeInfo(self.me.id, self.me.name, self.me.address, cpus, self.me.incarnation + 1)
        self.gossip.add(Digest(self.me.id, self.me.name, self.me.address, "alive", self.me.incarnation, cpus))

    def probe_soon(self, node_id: str) -> None:
        """Probe this member before the others (someone needs its round-trip time)."""
        member = self.members.get(node_id)
        if member is not None and member.state in ("alive", "suspect") and node_id not in self._urgent:
            self._urgent.append(node_id)

    def tick(self, now: float) -> list[Action]:
        """Timers: probes, indirect probes, suspicion time-outs, seeds, forgetting."""
        acts: list[Action] = []
        t = self.timing
        if self._last_tick is not None and now - self._last_tick > t.starved_after:
            self.health.up()  # our own loop was late: we may be the slow one
        self._last_tick = now
        acts += self._expire(now)
        if self._leaving:
            return acts
        acts += self._probe_timers(now)
        if now >= self._next_period:
            acts += self._end_period(now)
            self._next_period = now + self.health.scale(t.period)
            acts += self._start_probe(now)
        acts += self._slow_pings(now)
        for s in [s for s, (_, t0) in self._sent.items() if now - t0 > t.forget_after / 4]:
            del self._sent[s]
        return acts

    def next_timer(self, now: float) -> float:
        """The latest time by which ``tick`` should run again."""
        if self._leaving:  # no more probes: tick only expires and forgets members
            return now + self.timing.period
        times = [self._next_period, self._next_slow]
        probe = self._probe
        if probe is not None:
            if not probe.acked and probe.helpers == 0:  # else it has passed: not a timer any more
                times.append(probe.ack_deadline)
            times.append(probe.end)
        times += [r.deadline for r in self._relays.values()]
        times += [m.suspected_at + self._suspicion_timeout(m) for m in self.members.values()
                  if m.state == "suspect"]
        return max(min(times), now)

    def leave(self) -> list[Action]:
        """Tell every reachable member that we leave; stop probing."""
        self._leaving = True
        msg = Leave(self.me.id, self.me.incarnation)
        return [Send(m.conn, msg) for m in self.members.values()
                if m.conn is not None and m.state in ("alive", "suspect")]

    # ------------------------------------------------------------------ queries

    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == "alive"]

    def member_at(self, address: str) -> Member | None:
        node_id = self._conns.get(address)
        return self.members.get(node_id) if node_id else None

    def views(self) -> list[dict]:
        return [m.view() for m in sorted(self.members.values(), key=lambda m: m.info.name)]

    # ------------------------------------------------------------------ probing

    def _start_probe(self, now: float) -> list[Action]:
        target = self._next_target()
        if target is None:
            return []
        member = self.members[target]
        t = self.timing
        ping = self._ping(member.conn, now)
        self._probe = _Probe(target, ping.message.seq, now, now + self.health.scale(t.ack_timeout),
                             now + self.health.scale(t.period))
        self.counters["probes"] += 1
        return [ping]

    def _next_target(self) -> str | None:
        def probeable(node_id: str) -> bool:
            m = self.members.get(node_id)
            return m is not None and m.state in ("alive", "suspect") and m.conn is not None

        while self._urgent:
            node_id = self._urgent.pop(0)
            if probeable(node_id):
                return node_id
        for _ in range(2):
            while self._order:
                node_id = self._order.pop()
                if probeable(node_id):
                    return node_id
            self._order = [i for i in self.members if probeable(i)]
            self.rng.shuffle(self._order)
        return None

    def _probe_timers(self, now: float) -> list[Action]:
        acts: list[Action] = []
        probe = self._probe
        if probe is not None and not probe.acked and probe.helpers == 0 and now >= probe.ack_deadline:
            acts += self._ask_helpers(probe, now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                acts.append(Reply(relay.requester, Nack(relay.their_seq, relay.target)))
        if probe is not None and now >= probe.end:
            acts += self._end_period(now)
        return acts

    def _ask_helpers(self, probe: _Probe, now: float) -> list[Action]:
        target = self.members.get(probe.target)
        if target is None:
            return []
        helpers = [m for m in self.members.values()
                   if m.state == "alive" and m.conn is not None and m.info.id != probe.target]
        helpers = self.rng.sample(helpers, min(self.timing.indirect, len(helpers)))
        probe.helpers = len(helpers) if helpers else -1  # -1: nobody to ask
        self.counters["indirect"] += 1
        return [Send(h.conn, PingReq(probe.seq, probe.target, target.info.address, self.me,
                                     self._gossip_for(h.info.id))) for h in helpers]

    def _ping_req(self, req: PingReq, now: float, identity: bytes | None) -> list[Action]:
        acts = self._apply(req.gossip, now, req.sender.id)
        if identity is None or req.target == self.me.id:
            return acts
        target = self.members.get(req.target)
        address = target.conn if target is not None and target.conn else req.address
        if address not in self._conns:
            if len(self._conns) >= self.max_members:
                return acts + [Reply(identity, Nack(req.seq, req.target))]
            acts += self._connect(address, req.target)
        ping = self._ping(address, now)
        self._relays[ping.message.seq] = _Relay(identity, req.seq, req.target,
                                                now + self.timing.ack_timeout)
        return acts + [ping]

    def _acked(self, now: float) -> None:
        if self._probe is not None and not self._probe.acked:
            self._probe.acked = True
            self.health.down()

    def _end_period(self, now: float) -> list[Action]:
        probe, self._probe = self._probe, None
        if probe is None or probe.acked:
            return []
        self.counters["probe_failures"] += 1
        if probe.helpers > 0 and probe.nacks == 0:
            self.health.up()  # not even the helpers answered: we may be the problem
        member = self.members.get(probe.target)
        if member is None or member.state not in ("alive", "suspect"):
            return []
        return self._suspect(member, member.info.incarnation, self.me.id, now)

    # ------------------------------------------------------------------ suspicion

    def _suspicion_timeout(self, member: Member) -> float:
        t = self.timing
        n = sum(1 for m in self.members.values() if m.state in ("alive", "suspect")) + 1
        low, high = suspicion_bounds(n, t.period, t.suspicion_alpha, t.suspicion_beta)
        expected = min(t.expected_confirmations, max(n - 2, 0))
        return suspicion_timeout(low, high, max(len(member.suspecters) - 1, 0), expected)

    def _suspect(self, member: Member, incarnation: int, by: str, now: float) -> list[Action]:
        if member.state == "alive":
            acts = self._set_state(member, "suspect", now)
            member.suspected_at = now
            member.suspecters = {by}
            self.counters["suspicions"] += 1
            if member.info.id not in self._urgent:
                self._urgent.append(member.info.id)  # see for ourselves soon
        elif member.state == "suspect" and by not in member.suspecters:
            member.suspecters.add(by)  # an independent confirmation: the time-out shrinks
            acts = []
        else:
            return []
        self.gossip.add(Digest(member.info.id, member.info.name, member.info.address, "suspect",
                               incarnation, member.info.cpus))
        return acts

    def _expire(self, now: float) -> list[Action]:
        acts: list[Action] = []
        for member in list(self.members.values()):
            if member.state == "suspect" and now - member.suspected_at >= self._suspicion_timeout(member):
                acts += self._set_state(member, "dead", now)
                self.counters["deaths"] += 1
                self.gossip.add(member.digest())
            elif member.state in ("dead", "left") and now - member.changed_at > self.timing.forget_after:
                acts += self._drop_conn(member)
                del self.members[member.info.id]
        return acts

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
                if d.state in ("alive", "suspect") and d.address and d.address not in self._conns \
                        and len(self._conns) < self.max_members:
                    acts += self._connect(d.address, d.id)
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
        """Seeds not yet (or no longer) reachable, and dead members, every seed_retry."""
        if now < self._next_slow:
            return []
        self._next_slow = now + self.timing.seed_retry
        acts: list[Action] = []
        for member in self.members.values():
            if member.state == "dead" and member.conn is not None:
                acts.append(self._ping(member.conn, now))
        for address, node_id in list(self._conns.items()):
            if node_id is None or node_id not in self.members:
                acts.append(self._ping(address, now))  # answers tell us who is there
        for seed in self.seeds.values():
            member = self.members.get(seed.node_id) if seed.node_id else None
            reachable = member is not None and member.state in ("alive", "suspect")
            if not reachable and seed.address not in self._conns:
                acts += self._connect(seed.address, None)
                acts.append(self._ping(seed.address, now))
        return acts

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
        """Direct contact from ``info`` (a Ping to us, or a Pong over ``via``)."""
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
                del self._conns[via]  # a second path to a known member: keep one
                acts.append(Disconnect(via))
        elif member.conn is None and member.state != "left":
            acts += self._connect(info.address, info.id)
            member.conn = info.address
            self._conns[info.address] = info.id  # the seed connection may be open, id unknown
            acts.append(self._ping(info.address, now))
        return acts

    def _set_state(self, member: Member, new: str, now: float) -> list[Action]:
        old = member.state
        if old == new:
            return []
        if (old, new) not in TRANSITIONS:
            raise LocalProtocolError(f"member {member.info.name}: {old} -> {new} is not allowed")
        member.state = new
        member.changed_at = now
        if new == "alive":
            member.suspecters = set()
        return [MemberChanged(member.info.id, member.info.name, old, new, member.info.incarnation)]

    def _evict(self) -> list[Action] | None:
        """Forget the oldest dead or left member and close its connection; None if
        every member is alive or suspect."""
        gone = [m for m in self.members.values() if m.state in ("dead", "left")]
        if not gone:
            return None
        oldest = min(gone, key=lambda m: m.changed_at)
        del self.members[oldest.info.id]
        return self._drop_conn(oldest)
