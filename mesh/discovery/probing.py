"""Probes, indirect probes and suspicion: how the membership core finds failures.

A mixin of ``mesh.discovery.membership.Membership`` (pure, like the rest of it: it
opens no socket and reads no clock; the state it reads and changes is the table's).

Theory of operation
-------------------
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

Each probe is one ``_Probe`` (there is at most one, for the current period); each
probe we make for another member's ``PingReq`` is one ``_Relay``, answered with
``IndirectAck`` when the target answers us, or ``Nack`` at its deadline (at once
if our table is full of live members). A failed
probe suspects its target only if it is still alive or suspect; a suspect that
times out becomes dead; dead and left members are forgotten after ``forget_after``
(``Forgotten``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.discovery.actions import Action, Forgotten, Reply, Send
from mesh.discovery.detector import GossipBuffer, LocalHealth, suspicion_bounds, suspicion_timeout
from mesh.discovery.members import Member
from mesh.discovery.timing import Timing
from mesh.wire.messages import Digest, Nack, NodeInfo, PingReq


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


class Probing:
    """Mixin of ``Membership``: the probe of each protocol period, indirect probes (ours,
    and those we make for others), suspicion and its time-out.

    ``Membership.tick`` calls ``_probe_timers``, ``_end_period``, ``_start_probe`` and
    ``_expire``, ``next_timer`` calls ``_suspicion_timeout``, ``receive`` calls ``_acked``
    and ``_ping_req``. It uses the state below, ``Membership._set_state`` and, from
    ``mesh.discovery.joining``, ``_ping``, ``_room``, ``_connect``, ``_drop_conn``,
    ``_apply`` and ``_gossip_for``."""

    me: NodeInfo
    timing: Timing
    rng: random.Random
    max_members: int
    members: dict[str, Member]
    health: LocalHealth
    gossip: GossipBuffer
    counters: dict[str, int]
    _conns: dict[str, str | None]
    _relays: dict[int, _Relay]
    _probe: _Probe | None
    _order: list[str]
    _urgent: list[str]

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
            room = self._room(now)
            if room is None:  # our table is full of live members
                return acts + [Reply(identity, Nack(req.seq, req.target))]
            acts += room + self._connect(address, req.target, now)
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
                acts.append(Forgotten(member.info.id))
        return acts
