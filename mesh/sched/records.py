"""The dispatcher's records (``mesh.sched.dispatch``): a ``Pending`` entry of the call
ledger and each ``Requester`` of it; ``PeerSlots``, what we believe of a peer's capacity,
and ``LocalSlots``, our own; ``fits``, whether a capacity meets a call's constraints."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.wire.messages import Call, Needs

MAX_COUNT = 2**31 - 1  # the most slots or calls a peer's report is believed to say
MAX_MEMORY = 2**62  # the most bytes


def count(n: int, most: int = MAX_COUNT) -> int:
    """A count from the wire (a peer's load, a call's needs), between 0 and ``most``: a
    member's word is taken, not any integer it sends (one of 10**400 made placement
    divide it and raise)."""
    return n if 0 <= n <= most else (0 if n < 0 else most)


def fits(needs: Needs | None, cpus: int, memory: int, labels) -> bool:
    """Whether an agent with ``cpus`` slots, ``memory`` bytes offered (0: not said) and
    ``labels`` can run a call that ``needs`` (``messages.Needs``; None: anything can)."""
    if needs is None:
        return True
    if cpus < needs.cpus or (needs.memory and memory and memory < needs.memory):
        return False
    return all(label in labels for label in needs.labels)


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

    @property
    def waiting(self) -> int:
        """Calls waiting there: its last reported queue, plus what we sent it since
        beyond its free slots."""
        return self.queued + max(self.sent - self.free, 0)

    def fits(self, needs: Needs | None) -> bool:
        return fits(needs, self.cpus, self.memory, self.labels)


class LocalSlots:
    """Our own worker slots, as the dispatcher counts them: how many (``cpus``), how
    many are taken (``running``: by calls here, a call waiting at a worker takes one),
    how fast each is (``speed``, effective cores: ``mesh.agent.cpuquota``), what they
    offer to tasks (``memory``, ``labels``), and how many calls a slot may hold
    (``depth``: one running, the rest waiting at its worker; the agent sets it)."""

    def __init__(self, name: str, node_id: str, cpus: int, speed: float = 1.0,
                 memory: int = 0, labels: frozenset = frozenset(), depth: int = 1) -> None:
        self.name = name
        self.node_id = node_id
        self.cpus = cpus
        self.speed = speed
        self.memory = memory
        self.labels = labels
        self.depth = depth
        self.running = 0
        self.blocked: set[str] = set()  # calls running here that wait for other tasks (lent)

    @property
    def free(self) -> int:
        return max(self.cpus - self.running, 0)

    def fits(self, needs: Needs | None) -> bool:
        return fits(needs, self.cpus, self.memory, self.labels)


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
    losses: int = 0  # times it was lost on the way to a holder, or its result was (leases)

    @property
    def slots(self) -> int:
        """Worker slots it takes while it runs (``@constraint(cpus=...)``), at least one (a
        call that claims none, or fewer, still takes one: else ``running`` counted fewer
        calls than ran)."""
        needs = self.call.needs
        return 1 if needs is None or needs.cpus < 1 else needs.cpus

    @property
    def reply_to(self) -> bytes:
        return self.requesters[0].identity

    @property
    def from_peer(self) -> str | None:
        return self.requesters[0].peer

    def peers_asking(self) -> list[str]:
        return [r.peer for r in self.requesters if r.peer is not None]
