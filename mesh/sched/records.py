"""The dispatcher's records (``mesh.sched.dispatch``): a ``Pending`` entry of the call
ledger and each ``Requester`` of it, and ``PeerSlots``, what we believe of a peer's
capacity."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.wire.messages import Call


@dataclass
class PeerSlots:
    """What we believe of a peer's capacity."""

    name: str
    cpus: int
    free: int
    rtt: float
    sent: int = 0  # calls we delegated to it since its last report
    queued: int = 0
    speed: float = 1.0  # effective cores per slot (a CPU-capped device: < 1)
    told: int = 0  # our free slots as it last heard them (heartbeats, a Result, a Reclaim)
    memory: int = 0  # bytes it offers to tasks (0: not said)
    labels: frozenset = frozenset()  # its capabilities (task constraints)

    @property
    def est_free(self) -> int:
        return self.free - self.sent


@dataclass(frozen=True)
class Requester:
    """Who wants a call's result: a connection on our ROUTER (``identity``; ``peer`` is
    its node id when it is a member, None for a client), or, with ``direct``, the
    call's origin answered over our own connection to it."""

    identity: bytes
    peer: str | None
    direct: bool = False


@dataclass
class Pending:
    call: Call
    requesters: list[Requester]
    where: str  # "local", "backlog" or a peer id
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    lent: bool = False  # running here, blocked on other tasks, its slot lent
    asked: str | None = None  # the holder we asked to give it back (Reclaim), once per holder
    since: float = 0.0  # when it arrived (for calls no known agent can run)

    @property
    def slots(self) -> int:
        """Worker slots it takes while it runs (``@constraint(cpus=...)``)."""
        needs = self.call.needs
        return needs.cpus if needs is not None else 1

    @property
    def reply_to(self) -> bytes:
        return self.requesters[0].identity

    @property
    def from_peer(self) -> str | None:
        return self.requesters[0].peer

    def peers_asking(self) -> list[str]:
        return [r.peer for r in self.requesters if r.peer is not None]
