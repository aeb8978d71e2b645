"""Settings and actions of the latency tree core (see ``mesh/tree/core.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire.messages import Advert


@dataclass(frozen=True)
class TreeConfig:
    """Tree timings (``period`` in seconds, the others in periods) and bounds."""

    period: float = 1.0  # the root raises its sequence number once a period
    join_wait: float = 3.0  # a new node listens this long for a tree before founding one
    parent_timeout: float = 3.0  # a parent silent this long is given up
    settle_after: float = 60.0  # uptime after which a node counts as settled (election)
    refresh_every: float = 5.0  # adverts to parent and candidates (children: every period)
    forget_after: float = 12.0  # a silent neighbour (not the parent) is forgotten
    explore_every: float = 10.0  # probe one offered member, even with a full neighbour set
    max_candidates: int = 8  # neighbours besides parent and children
    diverse: int = 2  # candidates kept whose route avoids our parent (for repair)
    max_offers: int = 32  # members offered by the shell, not yet probed
    probe_burst: int = 3  # probes per period while the neighbour set is not full
    switch_ratio: float = 0.10  # hysteresis: a new parent must be better by this ratio
    switch_min: float = 0.001  # ... and by at least this many seconds
    rtt_alpha: float = 0.2  # weight of a new round-trip sample (EWMA)
    unknown_rtt: float = 1.0  # cost assumed for a neighbour not yet measured, seconds
    min_cost: float = 1e-4  # smallest link cost, seconds (a rank grows at every hop)
    max_depth: int = 32  # longest path accepted (bounds the advert)
    dead_roots: int = 16  # roots reported lost that we remember

    def margin(self, rank: float) -> float:
        """How much better (seconds) a path must be than ``rank`` to switch to it."""
        return max(self.switch_ratio * rank, self.switch_min)


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class SendAdvert:
    """Send ``advert`` to ``peer`` (piggybacked on the next heartbeat, or now)."""

    peer: str
    advert: Advert


@dataclass(frozen=True)
class Probe:
    """Start exchanging heartbeats with ``peer`` (a candidate we do not measure yet)
    and pass its round-trip time with its adverts; a ``SendAdvert`` asking for its
    advert follows."""

    peer: str


@dataclass(frozen=True)
class ParentChanged:
    """Our parent changed (``None``: no parent, we are root or detached)."""

    old: str | None
    new: str | None
    reason: str


@dataclass(frozen=True)
class RootChanged:
    """The root of our tree, or its term, changed (``new`` may be ourselves)."""

    old: str | None
    new: str | None
    term: int


Action = SendAdvert | Probe | ParentChanged | RootChanged
