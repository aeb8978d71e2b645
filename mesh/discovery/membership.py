"""Membership and failure detection: SWIM with Lifeguard's refinements.

Theory of operation
-------------------
A pure state machine: the agent feeds it events with the current monotonic time
(``now``) and carries out the actions it returns. It opens no socket and reads
no clock; randomness comes from the ``random.Random`` it is given.

``Membership`` takes the inputs, applies the rules for news, and runs the timers; it
is made of parts that each own their state (memberlist's shape), each with its own
theory of operation:

* ``MemberTable`` (``mesh.discovery.members``): the members and the states a member may
  go through (``TRANSITIONS``);
* ``Outbox`` (``mesh.discovery.outbox``): who we are, our requests' sequence numbers
  and round trips, and the gossip every message carries;
* ``Dialer`` (``mesh.discovery.dialer``): seeds, connections, silent addresses and
  their back-off, and room in the tables;
* ``Prober`` (``mesh.discovery.probing``): the probe of each period, indirect probes,
  suspicion and its time-out, local health.

Bootstrap. Nodes are learnt from seed addresses (``--peer``/MESH_PEERS), mDNS
announcements and gossip. mDNS and seeds only bootstrap; liveness comes only from
probes, because mDNS keeps dead services for a long time. A member enters the table
on its first direct contact (``_heard``: its Ping to us, or its Pong); news of an
unknown member only makes us connect to it and ping it. A member whose Ping came
first gets our connection back and a ping, unless we dialled it ourselves moments
ago (``Dialer.just_dialled``: the ping that went with our connection is on its way;
when gossip reaches two nodes at once they dial each other, and a second ping each
way would double the pings of a joining mesh). When the table is full, the
oldest dead or left member is forgotten to make room (then ``Forgotten``), never an
alive or suspect one.

News (``_apply``) follows SWIM's rules: a higher incarnation overrides older news,
and news of a member that left is final. News that we are suspect, dead or left is
refuted with a newer incarnation unless we are leaving (``_about_me``; then
``DeclaredDead`` when we had been declared dead or left).

Dead members keep their connection and get a slow ping every ``seed_retry``
seconds; dead and left members are forgotten after ``forget_after`` (``Forgotten``:
the shell's other parts drop what they keep about them). The table holds at most
``max_members``, and so does the table of connections besides the seeds'.
"""

from __future__ import annotations

import random

from mesh.discovery.actions import (
    Action,
    Connect,  # noqa: F401 (re-exported: the agent, the simulator and tests take it from here)
    DeclaredDead,
    Disconnect,  # noqa: F401 (re-exported)
    Forgotten,  # noqa: F401 (re-exported)
    MemberChanged,
    Reply,
    Send,
)
from mesh.discovery.detector import GossipBuffer, LocalHealth
from mesh.discovery.dialer import Dialer
from mesh.discovery.members import TRANSITIONS, Member, MemberTable
from mesh.discovery.outbox import Outbox
from mesh.discovery.probing import Prober
from mesh.discovery.timing import Timing
from mesh.wire.messages import (
    STATES,
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

__all__ = [
    "DEALER_MESSAGES", "ROUTER_MESSAGES", "TRANSITIONS", "Action", "Connect", "DeclaredDead",
    "Disconnect", "Forgotten", "MemberChanged", "Membership", "Reply", "Send", "Timing",
]

ROUTER_MESSAGES = (Ping, PingReq, Leave)  # arrive on our ROUTER
DEALER_MESSAGES = (Pong, IndirectAck, Nack)  # arrive on our own connections


class Membership:
    """The membership table and failure detector of one node. See the module docstring."""

    def __init__(self, me: NodeInfo, timing: Timing | None = None, rng: random.Random | None = None,
                 max_members: int = 1024) -> None:
        self.timing = timing or Timing()
        rng = rng or random.Random(0)
        self.table = MemberTable(max_members)
        self.outbox = Outbox(me, self.table, self.timing, rng)
        self.dialer = Dialer(self.table, self.outbox, self.timing)
        self.prober = Prober(self.table, self.outbox, self.dialer, self.timing, rng)
        self._counters = {"refuted": 0, "forged_leaves": 0}
        self._last_tick: float | None = None
        self._leaving = False

    # ------------------------------------------------------------------ the parts' state

    @property
    def me(self) -> NodeInfo:
        return self.outbox.me

    @property
    def members(self) -> dict[str, Member]:
        """The members by id (read only: changes go through ``table``)."""
        return self.table.members

    @property
    def seeds(self) -> dict:
        return self.dialer.seeds

    @property
    def health(self) -> LocalHealth:
        return self.prober.health

    @property
    def gossip(self) -> GossipBuffer:
        return self.outbox.gossip

    @property
    def counters(self) -> dict[str, int]:
        p, d, c = self.prober.counters, self.dialer.counters, self._counters
        return {"probes": p["probes"], "probe_failures": p["probe_failures"], "indirect": p["indirect"],
                "suspicions": p["suspicions"], "refuted": c["refuted"], "deaths": p["deaths"],
                "forged_leaves": c["forged_leaves"], "silent_forgotten": d["silent_forgotten"]}

    # ------------------------------------------------------------------ inputs

    def set_load(self, load: Load) -> None:
        """The load reported in our next messages."""
        self.outbox.load = load

    def add_seed(self, address: str, now: float) -> list[Action]:
        """Contact ``address`` (host:port) until it answers, with back-off; keep it as a
        seed for good."""
        if address == self.me.address:
            return []
        return self.dialer.add_seed(address, now)

    def discovered(self, node_id: str, address: str, now: float) -> list[Action]:
        """An mDNS announcement: a node may exist at ``address``."""
        if node_id == self.me.id:
            return []
        member = self.table.get(node_id)
        if member is not None and member.conn is not None:
            return []
        if address in self.dialer.conns:
            return []
        room = self.dialer.room(now)
        if room is None:  # our table is full of live members
            return []
        return room + self.dialer.dial(address, node_id, now)

    def receive(
        self, msg: Message, now: float, *, via: str | None = None, identity: bytes | None = None
    ) -> list[Action]:
        """A membership message arrived: over our connection to ``via`` (answers), or
        on our ROUTER from connection ``identity`` (requests)."""
        if isinstance(msg, Ping):
            acts = self._heard(msg.sender, msg.load, now, via)
            acts += self._apply(msg.gossip, now, msg.sender.id)
            if identity is not None:  # also to ourselves: the Pong reveals a seed that is us
                acts.append(Reply(identity, self.outbox.pong(msg.seq, msg.sender.id)))
            return acts
        if isinstance(msg, Pong):
            acts = self._heard(msg.sender, msg.load, now, via)
            member = self.table.get(msg.sender.id)
            sent = self.outbox.answered(msg.seq)
            if sent is not None and member is not None and sent[0] == member.conn:
                sample = max(now - sent[1], 0.0)
                member.rtt = sample if member.rtt is None else 0.8 * member.rtt + 0.2 * sample
            ack = self.prober.relayed(msg.seq, msg.sender.id)
            if ack is not None:
                acts.append(ack)
            acts += self._apply(msg.gossip, now, msg.sender.id)
            return acts
        if isinstance(msg, PingReq):
            acts = self._apply(msg.gossip, now, msg.sender.id)
            if identity is None or msg.target == self.me.id:
                return acts
            return acts + self.prober.relay(msg, identity, now)
        if isinstance(msg, IndirectAck):
            self.prober.indirect_ack(msg.seq, msg.target)
            return self._apply(msg.gossip, now, None)
        if isinstance(msg, Nack):
            self.prober.nack(msg.seq)
            return []
        if isinstance(msg, Leave):
            if identity is None or identity.hex() != msg.node_id:
                self._counters["forged_leaves"] += 1  # only a node itself may say it leaves
                return []
            return self._apply([Digest(msg.node_id, "", "", "left", msg.incarnation)], now, msg.node_id)
        return []

    def heard_from(self, node_id: str, now: float) -> list[Action]:
        """Any message from a member is a sign of life: it answers our probe of it."""
        member = self.table.get(node_id)
        if member is None:
            return []
        member.last_heard = now
        self.prober.answered(node_id)
        return []

    def connection_lost(self, address: str, now: float) -> list[Action]:
        """Our connection to ``address`` was reset (TCP FIN/RST): probe its member now."""
        member = self.dialer.member_at(address)
        if member is None or member.state not in ("alive", "suspect"):
            return []
        self.prober.connection_lost(member.info.id, now)
        return []

    def declare_lost(self, node_id: str, now: float) -> list[Action]:
        """An operator says this member is gone (COMPSs lostNode): dead at once, and
        the news spreads. A member that is in fact alive refutes and comes back."""
        member = self.table.get(node_id)
        if member is None or member.state not in ("alive", "suspect"):
            return []
        return self.prober.declare_dead(member, now)

    def set_cpus(self, cpus: int) -> None:
        """Our slot count changed: newer news about ourselves (incarnation + 1)."""
        me = self.me
        self.outbox.me = NodeInfo(me.id, me.name, me.address, cpus, me.incarnation + 1)
        self.outbox.gossip.add(self.outbox.about_me())

    def probe_soon(self, node_id: str) -> None:
        """Probe this member before the others (someone needs its round-trip time)."""
        member = self.table.get(node_id)
        if member is not None and member.state in ("alive", "suspect"):
            self.prober.soon(node_id)

    def tick(self, now: float) -> list[Action]:
        """Timers: probes, indirect probes, suspicion time-outs, seeds, forgetting."""
        acts: list[Action] = []
        if self._last_tick is not None and now - self._last_tick > self.timing.starved_after:
            self.prober.health.up()  # our own loop was late: we may be the slow one
        self._last_tick = now
        acts += self.prober.expire(now)
        acts += self._forget_gone(now)
        if self._leaving:
            return acts
        acts += self.prober.tick(now)
        acts += self.dialer.tick(now)
        self.outbox.expire(now)
        return acts

    def next_timer(self, now: float) -> float:
        """The latest time by which ``tick`` should run again."""
        if self._leaving:  # no more probes: tick only expires and forgets members
            return now + self.timing.period
        return max(min(self.prober.next_timer(), self.dialer.next_timer()), now)

    def leave(self) -> list[Action]:
        """Tell every reachable member that we leave; stop probing."""
        self._leaving = True
        msg = Leave(self.me.id, self.me.incarnation)
        return [Send(m.conn, msg) for m in self.table
                if m.conn is not None and m.state in ("alive", "suspect")]

    # ------------------------------------------------------------------ queries

    def alive(self) -> list[Member]:
        return self.table.alive()

    def member_at(self, address: str) -> Member | None:
        return self.dialer.member_at(address)

    def find(self, name_or_id: str) -> Member | None:
        """A member by id, id prefix (8+ hex digits) or name (unique)."""
        return self.table.find(name_or_id)

    def views(self) -> list[dict]:
        return self.table.views()

    # ------------------------------------------------------------------ news

    def _apply(self, digests: list[Digest], now: float, sender: str | None) -> list[Action]:
        """SWIM's rules for news about a node (incarnations order the news)."""
        acts: list[Action] = []
        table, gossip, members, me = self.table, self.outbox.gossip, self.table.members, self.me.id
        for d in digests:
            if d.state not in STATES:
                continue
            if d.id == me:
                acts += self._about_me(d)
                continue
            member = members.get(d.id)
            if member is None:
                if d.state in ("alive", "suspect") and d.address and d.address not in self.dialer.conns:
                    room = self.dialer.room(now)
                    if room is not None:
                        acts += room + self.dialer.dial(d.address, d.id, now)
                continue
            inc = member.info.incarnation
            if member.state == "left" or d.incarnation < inc:
                continue
            if d.state == "alive":
                if d.incarnation > inc:
                    member.info = NodeInfo(d.id, d.name or member.info.name,
                                           d.address or member.info.address, d.cpus, d.incarnation)
                    if member.state in ("suspect", "dead"):
                        acts += table.set_state(member, "alive", now)
                    gossip.add(member.digest())
            elif d.state == "suspect":
                if d.incarnation > inc:
                    member.info = NodeInfo(member.info.id, member.info.name, member.info.address,
                                           member.info.cpus, d.incarnation)
                acts += self.prober.suspect(member, d.incarnation, sender or "?", now)
            elif d.state == "dead":
                if member.state in ("alive", "suspect"):
                    acts += table.set_state(member, "dead", now)
                    gossip.add(member.digest())
            elif d.state == "left":
                acts += table.set_state(member, "left", now)
                gossip.add(member.digest())
                acts += self.dialer.drop_conn(member)
        return acts

    def _about_me(self, d: Digest) -> list[Action]:
        me = self.me
        if d.state == "alive" or self._leaving or d.incarnation < me.incarnation:
            return []
        # suspected or declared dead (or left) by someone: refute with a newer incarnation
        self.outbox.me = NodeInfo(me.id, me.name, me.address, me.cpus, d.incarnation + 1)
        self._counters["refuted"] += 1
        self.prober.health.up()
        self.outbox.gossip.add(self.outbox.about_me())
        return [DeclaredDead(d.incarnation)] if d.state in ("dead", "left") else []

    def _heard(self, info: NodeInfo, load: Load, now: float, via: str | None) -> list[Action]:
        """Direct contact from ``info`` (a Ping to us, or a Pong over ``via``)."""
        acts: list[Action] = []
        dialer, table = self.dialer, self.table
        if via is not None:
            dialer.seed_answered(via, info.id)
        if info.id == self.me.id:
            # one of our seeds (or an announcement) was ourselves
            if via is not None and via in dialer.conns:
                acts += dialer.forget_address(via)
            if via is not None:
                dialer.drop_seed(via)  # else we would reconnect to ourselves forever
            return acts
        member = table.get(info.id)
        if member is None:
            if table.full():
                evicted = dialer.evict()
                if evicted is None:
                    return acts
                acts += evicted
            member = Member(info, "alive", None, now, now, load)
            table.add(member)
            acts.append(MemberChanged(info.id, info.name, "new", "alive", info.incarnation))
            self.outbox.gossip.add(member.digest())  # spread the join (probed from the next round)
        else:
            if info.incarnation > member.info.incarnation:
                member.info = info
                if member.state in ("suspect", "dead"):
                    acts += table.set_state(member, "alive", now)
                    self.outbox.gossip.add(member.digest())
            member.load = load
        member.last_heard = now
        if via is not None:
            if member.conn is None:
                member.conn = via
                dialer.bind(via, info.id)
            elif member.conn != via and via in dialer.conns:
                acts += dialer.forget_address(via)  # a second path to a known member: keep one
        elif member.conn is None and member.state != "left":
            on_its_way = dialer.just_dialled(info.address, now)  # we dialled it too, at once
            if info.address not in dialer.conns:  # (a member's connection: made even when
                acts += dialer.room(now) or []  # the table is full of others' and seeds)
                acts += dialer.connect(info.address, info.id, now)
            member.conn = info.address
            dialer.bind(info.address, info.id)  # the seed connection may be open, id unknown
            if not on_its_way:
                acts.append(dialer.ping(info.address, now))
        return acts

    def _forget_gone(self, now: float) -> list[Action]:
        """Dead and left members are forgotten ``forget_after`` their last change."""
        acts: list[Action] = []
        for member in self.table.gone():
            if now - member.changed_at > self.timing.forget_after:
                acts += self.dialer.forget(member)
        return acts
