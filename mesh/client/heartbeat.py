"""When a client pings its agent, and when it gives up on it (a pure core: no socket, no
clock; the client's thread calls ``tick`` with the time and what it saw).

Theory of operation
-------------------
A program reaches its agent over one connection. A local connection ends when the agent
dies (the kernel closes it), and a TCP connection's end is seen by ZeroMQ when the agent's
kernel resets it; but a frozen agent (SIGSTOP, a hung device) or a silent link (a dead
switch path, a device that lost power) keeps the connection open, and nothing ever comes
back: without a heartbeat, a call without a time-out would wait forever.

So while anything is in flight (calls, queries, fetches), the client expects to hear from
its agent. Any frame from the agent counts as a sign of life (results, answers, objects:
the traffic that already flows); the client reads no clock per frame, it only counts them
(``Requests.frames``), and its thread compares the count at each ``tick``. When nothing
came for ``every`` seconds, it sends a ping (``Query("ping")``, answered at once by the
agent's loop, which never runs user code), and again every ``every`` seconds while the
silence lasts. When ``misses`` pings in a row went unanswered (the first was sent
``every * misses`` seconds ago), the agent is unreachable: everything in flight fails
with ``AgentUnreachable`` and the client connects anew to whatever serves that address.

The bound (``DETECTION_S``): a call in flight fails at most ``every * (1 + misses)``
seconds after the last frame the client heard from its agent (the first ping goes
``every`` after it, the verdict ``every * misses`` after that), plus the time the client's
thread takes to notice (it sleeps until the next tick is due). Defaults: a ping after
1 s of silence, 3 missed pings, 4 s in all. That is about the time the agents themselves
take to declare a silent member dead under the default profile (``--profile default``:
a probe every 0.4 s, then a suspicion of up to 2.4 s before the verdict), and not less: a
client has no third party to confirm a suspicion (no indirect probes), so one late answer
from a loaded device must not fail its calls.

Idle, the client sends nothing: with nothing in flight there is nothing to fail, and a
connection that died meanwhile is found out by the first call made afterwards, within
the same bound. An idle program costs its agent (and its battery) nothing.

A frame is whole or not there, and a big one on a slow link holds back every frame behind
it, the answers to pings too: before it gives up, the client asks its link whether bytes
still came lately (``Link.quiet_for``); if they did, the agent is alive (``alive``) and the
silence counts from then.

The silence counts from the first ping, never from the last frame alone: a client whose
own process was stopped, or whose thread was busy (a long callback), asks first when it
comes back, and fails nothing before its agent had ``every * misses`` seconds to answer.
"""

from __future__ import annotations

PING_S = 1.0  # seconds of silence before the client pings its agent (and between pings)
MISSES = 3  # unanswered pings after which the agent is unreachable
DETECTION_S = PING_S * (1 + MISSES)  # the bound: from the last frame heard to the verdict

PING = "ping"
SILENT = "silent"


class Heartbeat:
    """The client's watch on its agent (see the module docstring)."""

    def __init__(self, every: float = PING_S, misses: int = MISSES) -> None:
        self.every = every
        self.limit = every * misses  # from the first unanswered ping to the verdict
        self.running = False  # (from ``start``: a client that connects waits its own time-out)
        self.frames = 0  # the frame count last seen
        self.looked_at = 0.0  # the last ``tick``
        self.heard_at = 0.0  # the agent was heard after this (the tick before the count changed)
        self.asked_at: float | None = None  # the first ping since then
        self.pinged_at: float | None = None  # the last ping

    def start(self, now: float) -> None:
        """Watch from now on (the client is connected); also after a reconnection."""
        self.running = True
        self.heard_at = self.looked_at = now
        self.asked_at = self.pinged_at = None

    def tick(self, now: float, frames: int, inflight: bool) -> str:
        """``PING``: send a ping now; ``SILENT``: the agent did not answer ``misses``
        pings (what is in flight must fail); "": nothing to do. ``frames``: how many
        frames came from the agent so far; ``inflight``: anything waits for it."""
        looked, self.looked_at = self.looked_at, now
        if frames != self.frames:  # (they came after our last look: count from there)
            self.frames = frames
            self.heard_at = looked
            self.asked_at = self.pinged_at = None
            return ""
        if not self.running:
            return ""
        if not inflight:  # nothing to fail: no need to ask (the next call asks anew)
            self.asked_at = self.pinged_at = None
            return ""
        if self.asked_at is not None and now - self.asked_at >= self.limit:
            return SILENT
        if now - self.heard_at >= self.every and (
                self.pinged_at is None or now - self.pinged_at >= self.every):
            self.pinged_at = now
            if self.asked_at is None:
                self.asked_at = now
            return PING
        return ""

    def alive(self, at: float) -> None:
        """The agent was heard from at ``at`` some other way (bytes of a frame still on its
        way, ``Link.quiet_for``): the silence counts from there, the pings anew."""
        if at > self.heard_at:
            self.heard_at = at
            self.asked_at = self.pinged_at = None

    def due(self, now: float) -> float:
        """Seconds until ``tick`` may have something to do, while something is in flight."""
        if self.asked_at is None:
            at = self.heard_at + self.every
        else:
            at = min(self.pinged_at + self.every, self.asked_at + self.limit)
        return max(at - now, 0.0)

    def silence(self, now: float) -> float:
        """Seconds since the agent was last heard (at most)."""
        return now - self.heard_at
