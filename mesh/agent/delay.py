"""Latency emulation for tests and demos on one machine (no netem here): a test knob.

``MESH_EMULATE_DELAY='{"peer-name": ms, ...}'`` in an agent's environment makes it
hold every frame it sends to the named peers for that many milliseconds (a
one-way delay; give the other side the same figure for a symmetric link). Real
deployments never set it, and then nothing of this module runs or is even imported:
the agent installs ``DelayedTransport`` around its transport (``install``) only when
the variable is set, and nothing else in the agent knows about delays.

``DelayedTransport`` holds the frames that ``send`` and ``reply`` are given for a
delayed peer in a ``DelayLine`` and hands them to the real transport at its first
``flush`` once they are due (the loop flushes at the end of every turn). So that the
loop turns when a frame falls due, a timer thread wakes it (the agent's waker) then;
nothing sleeps in the loop.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import threading
import time

log = logging.getLogger("mesh.delay")

ENV = "MESH_EMULATE_DELAY"


def from_env(env: dict | None = None) -> dict[str, float]:
    """Peer name -> one-way delay in seconds; {} when unset or malformed (logged)."""
    text = (os.environ if env is None else env).get(ENV, "")
    if not text:
        return {}
    try:
        table = json.loads(text)
        delays = {str(k): float(v) / 1000.0 for k, v in table.items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring %s: expected a JSON object of peer name -> milliseconds", ENV)
        return {}
    if any(d < 0 or d > 10 for d in delays.values()):
        log.warning("ignoring %s: delays must be between 0 and 10,000 ms", ENV)
        return {}
    log.warning("emulating one-way delays %s (test knob)", {k: v * 1000 for k, v in delays.items()})
    return delays


def install(transport, members, waker, env: dict | None = None):
    """``transport`` wrapped in a ``DelayedTransport`` if ``MESH_EMULATE_DELAY`` asks for
    delays (``members``: who is at an address or identity; ``waker``: wakes the loop),
    else ``transport`` itself."""
    delays = from_env(env)
    if not delays:
        return transport
    return DelayedTransport(transport, members, delays, waker)


class DelayLine:
    """Frames waiting for their due time, oldest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple]] = []
        self._seq = itertools.count()

    def push(self, due: float, item: tuple) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def due(self, now: float) -> list[tuple]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


class DelayedTransport:
    """A ``Transport`` whose sends to and replies to the named peers wait their delay
    first. Everything else is the transport's own (attributes are looked up there)."""

    def __init__(self, transport, members, delays: dict[str, float], waker) -> None:
        self.inner = transport
        self.members = members  # (Membership: the name of the member at an address)
        self.delays = delays  # peer name -> seconds
        self.waker = waker
        self.line = DelayLine()  # (guarded by _changed: the timer thread reads it)
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._timer, name="mesh-delay", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def send(self, address: str, frame: bytes) -> bool:
        member = self.members.member_at(address)
        lag = self.delays.get(member.info.name, 0.0) if member is not None else 0.0
        if not lag:
            return self.inner.send(address, frame)
        self._hold(lag, ("send", address, frame))
        return True

    def reply(self, identity: bytes, frame: bytes) -> bool:
        member = self.members.members.get(identity.hex()) if len(identity) == 16 else None
        lag = self.delays.get(member.info.name, 0.0) if member is not None else 0.0
        if not lag:
            return self.inner.reply(identity, frame)
        self._hold(lag, ("reply", identity, frame))
        return True

    def flush(self) -> list:
        """The frames that fell due go to the transport, then it sends what it has."""
        with self._changed:
            due = self.line.due(time.monotonic())
            if due:
                self._changed.notify()  # (the timer looks at the next one)
        for kind, target, frame in due:
            if kind == "send":
                self.inner.send(target, frame)
            else:
                self.inner.reply(target, frame)
        return self.inner.flush()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(1.0)
        self.inner.close()

    def _hold(self, lag: float, item: tuple) -> None:
        with self._changed:
            self.line.push(time.monotonic() + lag, item)
            self._changed.notify()

    def _timer(self) -> None:
        """Wake the loop when the first held frame falls due; then wait until it was
        taken (``flush``) or another came (``_hold``)."""
        with self._changed:
            while not self._closed:
                due = self.line.next_due()
                if due is None:
                    self._changed.wait()
                    continue
                left = due - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self.waker.wake()
                self._changed.wait()
