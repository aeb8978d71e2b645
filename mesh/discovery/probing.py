"""Probes, indirect probes and suspicion (``Prober``): how the membership core finds
failures.

Theory of operation
-------------------
Probing (SWIM). Every protocol period a node probes one member: members to see to
first (``soon``: a suspect, a member whose connection was reset, one whose round trip
someone needs), then the others in a round robin (``_Round``): each round is the
members of the table when it starts, shuffled, walked one member a period. A member
that joins meanwhile gets its place, at random, in the next round. So a round lasts
at most as many periods as the table had members at its start, and every member is
probed at least once in any two rounds, however fast others join. (Newcomers used to
be probed next: joins faster than one a period then kept a node from ever coming back
to the others, and a silent one from being suspected. SWIM's insertion at a random
place in the current round has the same flaw in a milder form: each newcomer placed
ahead lengthens the round.)

A probe sends ``Ping``; with no answer within ``ack_timeout`` it asks ``indirect``
other members to probe the target (``PingReq``), and they answer ``IndirectAck`` or
``Nack``. Any message from the target during the probe counts as its answer. With no
answer by the end of the period the target becomes *suspect*. A connection reset
(``connection_lost``) makes a node probe that member at once: a TCP reset is a
welcome hint, never the detector itself.

Suspicion (Lifeguard). A suspect becomes *dead* after ``suspicion_timeout``, which
starts long and shrinks with independent confirmations (``detector``). A suspect that
hears of its own suspicion refutes it by raising its incarnation and disseminating
``alive`` (``mesh.discovery.membership``); news with a higher incarnation overrides
older news. Messages to a member we suspect, or believe dead, carry that news first
(``mesh.discovery.outbox``), so a frozen node that wakes up learns it at once and
refutes (rejoins).

Local health (Lifeguard, ``detector.LocalHealth``) stretches our probe timeouts and
the period when we have signs that we are the slow one.

Each probe is one ``_Probe`` (there is at most one, for the current period); each
probe we make for another member's ``PingReq`` is one ``_Relay``, answered with
``IndirectAck`` when the target answers us, or ``Nack`` at its deadline (at once if
our table of connections is full of live members). A failed probe suspects its
target only if it is still alive or suspect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.discovery.actions import Action, Reply
from mesh.discovery.detector import LocalHealth, suspicion_bounds, suspicion_timeout
from mesh.discovery.dialer import Dialer
from mesh.discovery.members import Member, MemberTable
from mesh.discovery.outbox import Outbox
from mesh.discovery.timing import Timing
from mesh.wire.messages import Digest, Nack, PingReq


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


class _Round:
    """One round of the round robin: probeable members, shuffled, walked from ``next``
    (module docstring). Ids of members gone since are skipped when they are reached."""

    def __init__(self, rng: random.Random) -> None:
        self.ids: list[str] = []
        self.next = 0
        self._rng = rng

    def __len__(self) -> int:
        return len(self.ids)

    def pop(self) -> str | None:
        if self.next >= len(self.ids):
            return None
        self.next += 1
        return self.ids[self.next - 1]

    def restart(self, ids: list[str]) -> None:
        self._rng.shuffle(ids)
        self.ids, self.next = ids, 0


class Prober:
    """The probe of each protocol period, indirect probes (ours, and those we make for
    others), suspicion and its time-out, and local health. See the module docstring."""

    def __init__(self, table: MemberTable, outbox: Outbox, dialer: Dialer, timing: Timing,
                 rng: random.Random) -> None:
        self.health = LocalHealth()
        self.counters = {"probes": 0, "probe_failures": 0, "indirect": 0, "suspicions": 0,
                         "deaths": 0}
        self.probe: _Probe | None = None
        self.relays: dict[int, _Relay] = {}  # our seq -> relay
        self.round = _Round(rng)
        self.urgent: list[str] = []  # members to probe before the round robin
        self.next_period = 0.0
        self._table = table
        self._outbox = outbox
        self._dialer = dialer
        self._timing = timing
        self._rng = rng

    # ------------------------------------------------------------------ targets

    def soon(self, node_id: str, first: bool = False) -> None:
        """Probe this member before the round robin (``first``: before the others too)."""
        if node_id not in self.urgent:
            if first:
                self.urgent.insert(0, node_id)
            else:
                self.urgent.append(node_id)

    def _probeable(self, node_id: str) -> bool:
        m = self._table.get(node_id)
        return m is not None and m.state in ("alive", "suspect") and m.conn is not None

    def _next_target(self) -> str | None:
        while self.urgent:
            node_id = self.urgent.pop(0)
            if self._probeable(node_id):
                return node_id
        for _ in range(2):
            while (node_id := self.round.pop()) is not None:
                if self._probeable(node_id):
                    return node_id
            self.round.restart([i for i in self._table.members if self._probeable(i)])
        return None

    # ------------------------------------------------------------------ our probe

    def tick(self, now: float) -> list[Action]:
        """The probe's timers, relays' deadlines, and a new period when it is due."""
        acts: list[Action] = []
        probe = self.probe
        if probe is not None and not probe.acked and probe.helpers == 0 and now >= probe.ack_deadline:
            acts += self._ask_helpers(probe, now)
        for seq, relay in list(self.relays.items()):
            if now >= relay.deadline:
                del self.relays[seq]
                acts.append(Reply(relay.requester, Nack(relay.their_seq, relay.target)))
        if probe is not None and now >= probe.end:
            acts += self._end_period(now)
        if now >= self.next_period:
            acts += self._end_period(now)
            self.next_period = now + self.health.scale(self._timing.period)
            acts += self._start_probe(now)
        return acts

    def next_timer(self) -> float:
        times = [self.next_period]
        probe = self.probe
        if probe is not None:
            if not probe.acked and probe.helpers == 0:  # else it has passed: not a timer any more
                times.append(probe.ack_deadline)
            times.append(probe.end)
        times += [r.deadline for r in self.relays.values()]
        times += [m.suspected_at + self.suspicion_timeout(m) for m in self._table.suspects()]
        return min(times)

    def _start_probe(self, now: float) -> list[Action]:
        target = self._next_target()
        if target is None:
            return []
        member = self._table.members[target]
        assert member.conn is not None
        t, scale = self._timing, self.health.scale
        ping = self._dialer.ping(member.conn, now)
        self.probe = _Probe(target, ping.message.seq, now, now + scale(t.ack_timeout), now + scale(t.period))
        self.counters["probes"] += 1
        return [ping]

    def _ask_helpers(self, probe: _Probe, now: float) -> list[Action]:
        target = self._table.get(probe.target)
        if target is None:
            return []
        helpers = [m for m in self._table.alive() if m.conn is not None and m.info.id != probe.target]
        helpers = self._rng.sample(helpers, min(self._timing.indirect, len(helpers)))
        probe.helpers = len(helpers) if helpers else -1  # -1: nobody to ask
        self.counters["indirect"] += 1
        return [self._outbox.ping_req(probe.seq, target, h) for h in helpers]

    def answered(self, node_id: str | None = None) -> None:
        """Our probe was answered (by ``node_id``: only if it is the target)."""
        probe = self.probe
        if probe is not None and not probe.acked and node_id in (None, probe.target):
            probe.acked = True
            self.health.down()

    def indirect_ack(self, seq: int, target: str) -> None:
        probe = self.probe
        if probe is not None and probe.seq == seq and probe.target == target:
            self.answered()

    def nack(self, seq: int) -> None:
        probe = self.probe
        if probe is not None and probe.seq == seq:
            probe.nacks += 1

    def connection_lost(self, node_id: str, now: float) -> None:
        """Probe ``node_id`` now (its connection was reset)."""
        self.soon(node_id, first=True)
        probe = self.probe
        if probe is not None and not probe.acked:
            if probe.target == node_id:
                return  # already probing it
            # abandon, not fail, the probe of another member: ended now, it would suspect
            # a member whose answer or indirect acks are still on their way
            self.probe = None
        self.next_period = now  # start the next period (and this probe) at once

    def _end_period(self, now: float) -> list[Action]:
        probe, self.probe = self.probe, None
        if probe is None or probe.acked:
            return []
        self.counters["probe_failures"] += 1
        if probe.helpers > 0 and probe.nacks == 0:
            self.health.up()  # not even the helpers answered: we may be the problem
        member = self._table.get(probe.target)
        if member is None or member.state not in ("alive", "suspect"):
            return []
        return self.suspect(member, member.info.incarnation, self._outbox.me.id, now)

    # ------------------------------------------------------------------ others' probes

    def relay(self, req: PingReq, identity: bytes, now: float) -> list[Action]:
        """Probe ``req.target`` for the member on connection ``identity``."""
        target = self._table.get(req.target)
        address = target.conn if target is not None and target.conn else req.address
        acts: list[Action] = []
        if address not in self._dialer.conns:
            room = self._dialer.room(now)
            if room is None:  # our table is full of live members
                return [Reply(identity, Nack(req.seq, req.target))]
            acts += room + self._dialer.connect(address, req.target, now)
        ping = self._dialer.ping(address, now)
        self.relays[ping.message.seq] = _Relay(identity, req.seq, req.target, now + self._timing.ack_timeout)
        return acts + [ping]

    def relayed(self, seq: int, node_id: str) -> Reply | None:
        """``node_id`` answered our ping ``seq``: the ``IndirectAck`` it was for, if any."""
        relay = self.relays.pop(seq, None)
        if relay is None or relay.target != node_id:
            return None
        return Reply(relay.requester, self._outbox.indirect_ack(relay.their_seq, relay.target))

    # ------------------------------------------------------------------ suspicion

    def suspicion_timeout(self, member: Member) -> float:
        t = self._timing
        n = self._table.live() + 1
        low, high = suspicion_bounds(n, t.period, t.suspicion_alpha, t.suspicion_beta)
        expected = min(t.expected_confirmations, max(n - 2, 0))
        return suspicion_timeout(low, high, max(len(member.suspecters) - 1, 0), expected)

    def suspect(self, member: Member, incarnation: int, by: str, now: float) -> list[Action]:
        """``by`` suspects ``member`` at ``incarnation`` (us, after a failed probe, or news)."""
        if member.state == "alive":
            acts: list[Action] = list(self._table.set_state(member, "suspect", now))
            member.suspected_at = now
            member.suspecters = {by}
            self.counters["suspicions"] += 1
            self.soon(member.info.id)  # see for ourselves soon
        elif member.state == "suspect" and by not in member.suspecters:
            member.suspecters.add(by)  # an independent confirmation: the time-out shrinks
            acts = []
        else:
            return []
        self._outbox.gossip.add(Digest(member.info.id, member.info.name, member.info.address, "suspect",
                                       incarnation, member.info.cpus))
        return acts

    def declare_dead(self, member: Member, now: float) -> list[Action]:
        """``member`` (alive or suspect) is dead: its suspicion timed out, or an operator
        said so. The news spreads."""
        acts: list[Action] = list(self._table.set_state(member, "dead", now))
        self.counters["deaths"] += 1
        self._outbox.gossip.add(member.digest())
        return acts

    def expire(self, now: float) -> list[Action]:
        """Suspects whose time-out is over become dead."""
        acts: list[Action] = []
        for member in self._table.suspects():
            if now - member.suspected_at >= self.suspicion_timeout(member):
                acts += self.declare_dead(member, now)
        return acts
