"""The connections of the ledger simulator (``mesh.sim.ledger_sim``), and the faults of a
link that stays up.

Theory of operation
-------------------
A connection is what ZeroMQ makes of one TCP connection: an agent's DEALER to a peer's
ROUTER carries what the agent sends the peer (``Forward``, ``SendTo``) and, back, what
the peer's ROUTER replies to it (``Deliver`` of a result, ``Held``); a program's link to
its agent carries both ways too. Each direction is FIFO, as TCP: a frame arrives at
``max(sent + delay, the previous frame's arrival)``. The delay is drawn by the
simulator, from its run's random stream, before the frame is offered here.

Faults that leave membership none the wiser (its model, ``ledger_membership``, sees the
link healthy), drawn from their own seeded stream so that a run without them is the
same run, frame for frame, as before they existed:

* ``drop``: each frame, each direction, is lost with this probability;
* ``refuse``: a send is refused at the high-water mark with this probability; the
  sender knows (``send`` says so) and does what the agent does (``mesh.agent``: a
  delegated call is placed elsewhere, a result its ROUTER cannot route goes over its
  own DEALER, anything else is lost);
* ``reset``: the connection between two agents resets: what sits in it, both ways,
  is lost (ZeroMQ reconnects by itself, and says nothing).

Counted for the checks: frames lost each way (``lost``, ``refused``, ``reset_lost``); per
call id, when a frame that carried it (the call, its result, a Handback) was lost
(``losses``) and when a lease question or answer naming it was (``lost_rounds``: each
may delay finding out a loss by one lease period); and what is in flight now per (kind,
call id, destination) (``transit``: a call or a result on its way is progress).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from mesh.sim.clock import Clock

SENT, LOST, REFUSED = "sent", "lost", "refused"


class Links:
    """See the module docstring."""

    def __init__(self, clock: Clock, seed: int, *, drop: float = 0.0, refuse: float = 0.0) -> None:
        self.clock = clock
        self.rng = random.Random(f"links-{seed}")  # (faults only: the delays are the run's)
        self.drop = drop
        self.refuse = refuse
        self.fifo: dict[tuple, float] = {}  # direction of a connection -> last arrival
        self.gen: Counter[tuple] = Counter()  # connection -> resets so far
        self.lost = self.refused = self.reset_lost = self.resets = 0
        self.losses: dict[str, list[float]] = {}  # call id -> when a frame carrying it was lost
        self.lost_rounds: dict[str, list[float]] = {}  # call id -> when a question or answer was
        self.transit: Counter[tuple] = Counter()

    def send(self, way: tuple, conn: tuple, delay: float, deliver: Callable, args: tuple, *,
             may_refuse: bool = True, track: tuple | None = None, asks: tuple = ()) -> str:
        """Offer a frame to the direction ``way`` of connection ``conn``; on arrival,
        ``deliver(*args)``. ``SENT``, ``LOST`` (dropped: the sender cannot tell) or
        ``REFUSED`` (the sender can). ``track``: (kind, call id, destination) while in
        flight; ``asks``: call ids a lease question or answer names."""
        if may_refuse and self.refuse and self.rng.random() < self.refuse:
            self.refused += 1
            self._lost(track, asks)
            return REFUSED
        now = self.clock.now
        when = max(now + delay, self.fifo.get(way, 0.0))
        self.fifo[way] = when
        if self.drop and self.rng.random() < self.drop:
            self.lost += 1
            self._lost(track, asks)
            return LOST
        if track is not None:
            self.transit[track] += 1
        self.clock.at(when, self._arrive, conn, self.gen[conn], deliver, args, track, asks)
        return SENT

    def _arrive(self, conn: tuple, gen: int, deliver: Callable, args: tuple, track, asks) -> None:
        if track is not None:
            self.transit[track] -= 1
            if not self.transit[track]:
                del self.transit[track]
        if self.gen[conn] != gen:  # it sat in the connection when it reset
            self.reset_lost += 1
            self._lost(track, asks)
            return
        deliver(*args)

    def _lost(self, track: tuple | None, asks: tuple) -> None:
        now = self.clock.now
        if track is not None:
            self.losses.setdefault(track[1], []).append(now)
        for call_id in asks:
            self.lost_rounds.setdefault(call_id, []).append(now)

    def lost_between(self, call_id: str, start: float, end: float) -> tuple[int, int]:
        """Frames carrying the call, and lease questions or answers naming it, lost in
        [start, end]."""
        return (sum(start <= t <= end for t in self.losses.get(call_id, ())),
                sum(start <= t <= end for t in self.lost_rounds.get(call_id, ())))

    def reset(self, conn: tuple) -> None:
        """The connection resets: what is in it, both ways, is lost."""
        self.gen[conn] += 1
        self.resets += 1

    def in_flight(self, kind: str, call_id: str, dest) -> bool:
        return (kind, call_id, dest) in self.transit
