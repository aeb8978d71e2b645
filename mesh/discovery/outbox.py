"""What the membership core says (``Outbox``): who we are, our requests, and the news on
every message.

Theory of operation
-------------------
Every membership message names its sender (``me``: our ``NodeInfo``, whose
incarnation only goes up) and carries our load and a few ``Digest``s. Our requests
(``Ping``, ``PingReq``) carry a sequence number; a ``Ping``'s send time is kept until
its ``Pong`` comes back over the same connection (a round-trip sample: ``answered``)
or for ``forget_after / 4`` (``expire``): an answer that late is no sample.

Dissemination (SWIM): what a message to ``receiver`` carries (``gossip_for``) is the
receiver's own bad news first, when we suspect it or hold it dead (so that it can
refute at once), then fresh updates from ``GossipBuffer`` (least sent first), then
random alive members' digests (anti-entropy: how joins spread to everyone), at most
``gossip_fanout`` in all. The random picks come from the table's index of alive
members (``MemberTable.pick_alive``), so a message costs no pass over the table.
"""

from __future__ import annotations

import random

from mesh.discovery.actions import Send
from mesh.discovery.detector import GossipBuffer
from mesh.discovery.members import Member, MemberTable
from mesh.discovery.timing import Timing
from mesh.wire.messages import Digest, IndirectAck, Load, NodeInfo, Ping, PingReq, Pong


class Outbox:
    """Our identity and load, our requests' sequence numbers and send times, and the
    gossip buffer. See the module docstring."""

    def __init__(self, me: NodeInfo, table: MemberTable, timing: Timing, rng: random.Random) -> None:
        self.me = me
        self.load = Load(0, 0, 0, 0)
        self.gossip = GossipBuffer(timing.retransmit_mult, 2 * table.capacity)
        self._table = table
        self._timing = timing
        self._rng = rng
        self._seq = 0
        self._sent: dict[int, tuple[str, float]] = {}  # seq -> (address, when), oldest first

    # ------------------------------------------------------------------ messages

    def ping(self, address: str, receiver: str | None, now: float) -> Send:
        """A ``Ping`` over our connection to ``address`` (``receiver``: the member there,
        if known); its send time is kept for the round trip."""
        self._seq += 1
        self._sent[self._seq] = (address, now)
        return Send(address, Ping(self._seq, self.me, self.load, self.gossip_for(receiver)))

    def ping_req(self, seq: int, target: Member, helper: Member) -> Send:
        """Ask ``helper`` to probe ``target`` for our probe ``seq``."""
        assert helper.conn is not None
        return Send(helper.conn, PingReq(seq, target.info.id, target.info.address, self.me,
                                         self.gossip_for(helper.info.id)))

    def pong(self, seq: int, receiver: str) -> Pong:
        return Pong(seq, self.me, self.load, self.gossip_for(receiver))

    def indirect_ack(self, seq: int, target: str) -> IndirectAck:
        return IndirectAck(seq, target, self.gossip_for(None))

    def about_me(self) -> Digest:
        """News that we are alive, at our current incarnation."""
        me = self.me
        return Digest(me.id, me.name, me.address, "alive", me.incarnation, me.cpus)

    # ------------------------------------------------------------------ round trips

    def answered(self, seq: int) -> tuple[str, float] | None:
        """The answer to our ping ``seq`` came: the address it went to and when (None:
        not ours, answered already, or too old)."""
        return self._sent.pop(seq, None)

    def expire(self, now: float) -> None:
        """Forget pings unanswered for ``forget_after / 4`` (the oldest are first: ``now``
        only goes forward, so this costs only what it forgets)."""
        sent, cutoff = self._sent, now - self._timing.forget_after / 4
        while sent:
            seq = next(iter(sent))
            if sent[seq][1] >= cutoff:
                return
            del sent[seq]

    def pending(self) -> int:
        """How many pings wait for their answer."""
        return len(self._sent)

    @property
    def last_seq(self) -> int:
        return self._seq

    # ------------------------------------------------------------------ dissemination

    def gossip_for(self, receiver: str | None) -> list[Digest]:
        """What to piggyback on a message to ``receiver`` (module docstring)."""
        fanout = self._timing.gossip_fanout
        first = None
        member = self._table.get(receiver)
        if member is not None and member.state in ("suspect", "dead"):
            first = member.digest()
        out = self.gossip.take(fanout, self._table.live() + 1, first)
        room = fanout - len(out)
        if room > 0:
            known = [d.id for d in out]
            if receiver is not None:
                known.append(receiver)
            out += [m.digest() for m in self._table.pick_alive(room, self._rng, known)]
        return out
