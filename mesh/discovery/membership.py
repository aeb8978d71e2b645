"""Membership and failure detection: SWIM with Lifeguard's refinements.

Theory of operation
-------------------
A pure state machine: the agent feeds it events with the current monotonic time
(``now``) and carries out the actions it returns. It opens no socket and reads
no clock; randomness comes from the ``random.Random`` it is given.

It is split by concern into mixins of ``Membership``, each with its own theory of
operation: ``mesh.discovery.joining`` (bootstrap, connections and dissemination: how
members are learnt and how news of them spreads) and ``mesh.discovery.probing``
(probes, indirect probes, suspicion and local health: how failures are found). The
records of the table are in ``mesh.discovery.members``. This module holds the table,
the inputs, the timers, and the states of a member.

Member states and the allowed transitions (``TRANSITIONS``):

    alive   -> suspect   a probe failed, or we heard a suspicion
    suspect -> alive     a refutation (higher incarnation)
    alive|suspect -> dead   the suspicion timed out, or we heard of the death
    dead    -> alive     it came back with a higher incarnation (was frozen/cut off)
    alive|suspect|dead -> left   it left gracefully (``Leave``); final for that id

Dead members keep their connection (ZeroMQ reconnects by itself) and get a slow
ping every ``seed_retry`` seconds; dead and left members are forgotten after
``forget_after`` (``Forgotten``: the shell's other parts drop what they keep about
them); the table holds at most ``max_members``. Addresses no member answers
on are pinged with back-off and forgotten after ``dial_attempts`` pings, seeds aside;
the table of connections holds at most ``max_members`` (silent addresses, then dead
members make room for new ones: ``mesh.discovery.joining``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mesh.discovery.actions import (
    Action,
    Connect,  # noqa: F401 (re-exported: the agent, the simulator and tests take it from here)
    DeclaredDead,  # noqa: F401 (re-exported)
    Disconnect,  # noqa: F401 (re-exported)
    Forgotten,  # noqa: F401 (re-exported)
    MemberChanged,
    Reply,
    Send,
)
from mesh.discovery.detector import GossipBuffer, LocalHealth
from mesh.discovery.joining import Joining
from mesh.discovery.members import Member, _Dial, _Seed
from mesh.discovery.probing import Probing, _Probe, _Relay
from mesh.discovery.timing import Timing
from mesh.errors import LocalProtocolError
from mesh.wire.messages import (
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


@dataclass
class Membership(Joining, Probing):
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
        "deaths": 0, "forged_leaves": 0, "silent_forgotten": 0})
    _conns: dict[str, str | None] = field(default_factory=dict)  # address -> node id
    _dials: dict[str, _Dial] = field(default_factory=dict)  # silent addresses (in _conns)
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
        self.gossip.max_updates = 2 * self.max_members

    # ------------------------------------------------------------------ inputs

    def set_load(self, load: Load) -> None:
        """The load reported in our next messages."""
        self._load = load

    def add_seed(self, address: str, now: float) -> list[Action]:
        """Contact ``address`` (host:port) until it answers, with back-off; keep it as a
        seed for good."""
        if address == self.me.address or address in self.seeds:
            return []
        self.seeds[address] = _Seed(address)
        return self._connect(address, None, now) + [self._ping(address, now)]

    def discovered(self, node_id: str, address: str, now: float) -> list[Action]:
        """An mDNS announcement: a node may exist at ``address``."""
        if node_id == self.me.id:
            return []
        member = self.members.get(node_id)
        if member is not None and member.conn is not None:
            return []
        if address in self._conns:
            return []
        room = self._room(now)
        if room is None:  # our table is full of live members
            return []
        return room + self._connect(address, node_id, now) + [self._ping(address, now)]

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

    # ------------------------------------------------------------------ states

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
