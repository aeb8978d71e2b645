"""The records of the membership table (``mesh.discovery.membership``): a ``Member``
as this node sees it, a seed address until it answers, and an address we dial that
no member answers on (``_Dial``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.wire.messages import Digest, Load, NodeInfo


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
class _Dial:
    """An address we are connected to that no member answers on yet (a seed, an mDNS
    announcement, gossip, a ``PingReq``): pinged with exponential back-off
    (``mesh.discovery.joining``)."""

    since: float  # when we connected to it
    next: float  # when to ping it again
    pings: int = 1  # pings sent to it so far (the first goes with the connection)
