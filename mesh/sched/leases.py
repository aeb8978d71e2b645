"""Leases: the calls one hop handed on, and when their holder last confirmed holding them.

Theory of operation
-------------------
A frame can be lost on a connection that stays up: a send refused at the high-water
mark, what sits in a ZeroMQ pipe when its TCP connection resets (ZeroMQ reconnects by
itself and says nothing), a reply our ROUTER cannot route, a local connection whose
buffer is full. Membership sees none of it (the peer is alive), so a call or its result
lost that way would be waited for for ever. So the hop that handed a call on (an agent
that delegated it, a client that sent it to its agent) keeps a lease on it: it asks the
holder, now and then, which of its calls it still holds (``Holds``), and the holder
answers from its ledger (``Held``: held, or unknown). Unknown means the call, or its
result, was lost on the way: the asker places it again (``mesh.sched.dispatch``) or sends
it again (``mesh.client``). The first result wins everywhere, so at worst a call runs
twice; its outcome is never lost nor doubled.

Time goes in rounds of ``period`` seconds (``tick``), so that no event but the tick needs
the time: a call handed on in round ``r``, or confirmed in round ``r``, is asked about
from round ``r + 2`` on, i.e. once it went a whole period without news, and again every
round until an answer comes (a question or an answer may be lost too). A holder is asked
about all its calls due in one round at once (``due``: at most ``MAX_LIST`` ids a
message, oldest handed first), in the batch that already carries that turn's probes to
it. Each call costs an int here, and its id in one message a period while it runs
beyond a period.

``Leases`` is one table for any number of holders (an agent: one per peer; a client: its
agent), keyed by holder then call id in the order they were handed on, so the dispatcher
also reads it as "our calls at each peer, oldest first" (work stealing asks back the
newest). A call leaves it when it ends or moves; a holder when its last call does, or
when it is lost (``drop``). ``ClientLeases`` is a client's side (``mesh.client``, and the
simulator's programs): its calls at its agent, with what to send again for each; a call
the agent said it did not hold ``CLIENT_RESENDS`` times is given up (the agent never
takes it: a frame it cannot read).

The period: ``PERIODS`` membership protocol periods for agents (1.2 s with the default
profile, 0.3 s with ``fast``); a client's is ``CLIENT_PERIOD``. The bound it gives: a call
lost on a live link is found out at most 2 periods after the loss (the round it became
due, plus the round it was handed on in), plus one period per question or answer lost
meanwhile, plus a round trip.
"""

from __future__ import annotations

from mesh.wire.messages import MAX_LIST

PERIODS = 3  # a lease period, in membership protocol periods (agents)
CLIENT_PERIOD = 1.0  # a client's lease period, s (its heartbeat's ping interval)
CLIENT_SILENCE = 4.0  # s: an agent cancels the calls of a client not heard from for this long
# (a client with calls in flight is heard at least every 2 * CLIENT_PERIOD: its questions;
# this is the bound in which the client itself gives up on a silent agent, DETECTION_S)
LOSSES_PER_ATTEMPT = 3  # calls lost on the way this many times count as one failed attempt
CLIENT_RESENDS = 8  # a client sends a call its agent does not hold again at most this often
AGENT = ""  # a client's one holder: its agent


class Leases:
    """See the module docstring."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.round = 0
        self.next_round: float | None = None  # when the next round begins (None: at the first tick)
        self.calls: dict[str, dict[str, int]] = {}  # holder -> call id -> round of its last news

    def __len__(self) -> int:
        return sum(map(len, self.calls.values()))

    def tick(self, now: float) -> bool:
        """True when a new round begins (then ask ``due``)."""
        if self.next_round is None:
            self.next_round = now + self.period
            return False
        if now < self.next_round:
            return False
        self.round += 1
        self.next_round += self.period
        if self.next_round <= now:  # a late tick (a starved loop): no catching up
            self.next_round = now + self.period
        return True

    def add(self, holder: str, call_id: str) -> None:
        """``call_id`` was handed to ``holder`` (now: news of it this round)."""
        calls = self.calls.get(holder)
        if calls is None:
            self.calls[holder] = {call_id: self.round}
        else:
            calls[call_id] = self.round

    def remove(self, holder: str, call_id: str) -> None:
        calls = self.calls.get(holder)
        if calls is not None:
            calls.pop(call_id, None)
            if not calls:
                del self.calls[holder]

    def drop(self, holder: str) -> None:
        """The holder is gone (lost): what it held is the ledger's business now."""
        self.calls.pop(holder, None)

    def confirm(self, holder: str, call_ids) -> list[str]:
        """The holder says it holds these: news this round. Returns those we had."""
        calls = self.calls.get(holder)
        if calls is None:
            return []
        r = self.round
        known = [c for c in call_ids if c in calls]
        for call_id in known:
            calls[call_id] = r
        return known

    def asked(self, holder: str, call_id: str) -> bool:
        """The call is one we ask the holder about (no news of it for a whole period):
        an answer that says the holder does not know it is believed."""
        calls = self.calls.get(holder)
        r = None if calls is None else calls.get(call_id)
        return r is not None and r <= self.round - 2

    def due(self) -> list[tuple[str, list[str]]]:
        """What to ask each holder this round: its calls without news for a whole period,
        oldest handed first, at most ``MAX_LIST`` ids a question."""
        last = self.round - 2
        out = []
        for holder, calls in self.calls.items():
            ids = [c for c, r in calls.items() if r <= last]
            out.extend((holder, ids[i:i + MAX_LIST]) for i in range(0, len(ids), MAX_LIST))
        return out

    def everything(self, holder: str) -> list[list[str]]:
        """All of the holder's calls, as questions of at most ``MAX_LIST`` ids, to ask now
        (it answers again after a suspicion): each is taken as without news since."""
        calls = self.calls.get(holder)
        if not calls:
            return []
        r = self.round - 2
        for call_id in calls:
            calls[call_id] = min(calls[call_id], r)
        ids = list(calls)
        return [ids[i:i + MAX_LIST] for i in range(0, len(ids), MAX_LIST)]


class ClientLeases:
    """A client's leases on the calls it sent its agent (see the module docstring), with
    what to send again for each (``frame``: the encoded ``Call``, same call id)."""

    def __init__(self, period: float = CLIENT_PERIOD, resends: int = CLIENT_RESENDS) -> None:
        self.leases = Leases(period)
        self.resends = resends
        self.frames: dict[str, object] = {}  # call id -> what to send again
        self.resent: dict[str, int] = {}  # call id -> times sent again

    def __len__(self) -> int:
        return len(self.frames)

    def sent(self, call_id: str, frame) -> None:
        self.frames[call_id] = frame
        self.leases.add(AGENT, call_id)

    def ended(self, call_id: str) -> None:
        if self.frames.pop(call_id, None) is not None:
            self.resent.pop(call_id, None)
            self.leases.remove(AGENT, call_id)

    def clear(self) -> list[str]:
        """Nothing is in flight any more (the connection broke): the ids that were."""
        ids = list(self.frames)
        self.frames.clear()
        self.resent.clear()
        self.leases.drop(AGENT)
        return ids

    def tick(self, now: float) -> list[list[str]]:
        """The questions to ask the agent now (``Holds``), if a round began."""
        if not self.leases.tick(now):
            return []
        return [ids for _, ids in self.leases.due()]

    def answered(self, held: list[str], unknown: list[str]) -> tuple[list, list[str]]:
        """The agent's ``Held``: what to send again (the frames of calls asked about that it
        does not hold), and the ids given up (sent ``resends`` times already)."""
        leases = self.leases
        leases.confirm(AGENT, held)
        again, failed = [], []
        for call_id in unknown:
            if call_id not in self.frames or not leases.asked(AGENT, call_id):
                continue
            n = self.resent.get(call_id, 0) + 1
            if n > self.resends:
                failed.append(call_id)
                self.ended(call_id)
                continue
            self.resent[call_id] = n
            again.append(self.frames[call_id])
            leases.add(AGENT, call_id)  # (handed on again: news of it now)
        return again, failed
