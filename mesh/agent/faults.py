"""What the agent does when one of its own parts fails: an exception that escapes a core or a
handler (a bug, or a resource the system would not give) never ends the agent.

The loop and the parts that dispatch (``Input`` per message, ``Actions`` per action, the
loop per event: a readable socket, a tick, a flush) catch every ``Exception`` at that
point and hand it to ``Faults.caught`` with where it happened and the event that caused
it (a message's type and sender, an action, a worker's frame). A call whose ``Call``
could not be handled fails for its caller with ``AgentFault`` (unless the dispatcher took
it: then it ends as any other call); a call that could not be handed to a worker fails
with ``WorkerUnavailable``. ``Faults`` counts it by
where (``mesh status``: ``errors``), logs it with its traceback the first time and then
at most once a minute per kind (with how many since), and the agent goes on with the
next event. A fault costs at most the event that caused it.

A fault that repeats in a tight loop is no longer a lost event but a broken agent: the
same error (same place, type and message) ``STORM`` times within ``STORM_SECONDS``. Then
``caught`` calls ``on_storm`` (once) and the agent leaves gracefully: no new calls,
its backlog to its peers, running calls finish within the grace; if even that cannot
complete, the loop stops after the grace (``mesh join`` then exits with status 1).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable

log = logging.getLogger("mesh.agent")

STORM = 100  # the same error this many times ...
STORM_SECONDS = 10.0  # ... within this many seconds: the agent leaves
LOG_EVERY = 60.0  # seconds between two log lines of the same kind of fault


class Faults:
    def __init__(self, on_storm: Callable[[], None]) -> None:
        self.on_storm = on_storm  # the agent: leave gracefully
        self.counts: Counter = Counter()  # where -> faults caught there (mesh status: errors)
        self.storm: str | None = None  # why the agent leaves, once a fault repeated in a loop
        self._seen: dict[tuple, deque] = {}  # (where, type, text) -> when, lately
        self._logged: dict[tuple, tuple[float, int]] = {}  # kind -> (last log, count then)

    def caught(self, where: str, event: str, exc: BaseException, now: float) -> None:
        """An exception escaped while handling ``event`` at ``where``: count and log it;
        ``on_storm`` (once) when the same error repeats in a tight loop."""
        self.counts[where] += 1
        text = str(exc)[:200]
        key = (where, type(exc).__name__, text)
        kind = (where, type(exc).__name__)
        last = self._logged.get(kind)
        if last is None:
            log.error("%s failed (%s): %s: %s; the agent carries on", event, where,
                      type(exc).__name__, text, exc_info=exc)
            self._logged[kind] = (now, self.counts[where])
        elif now - last[0] >= LOG_EVERY:
            log.error("%s failed (%s): %s: %s; %d fault(s) there in all, the agent carries on",
                      event, where, type(exc).__name__, text, self.counts[where])
            self._logged[kind] = (now, self.counts[where])
        times = self._seen.get(key)
        if times is None:
            if len(self._seen) >= 1024:  # (bounded: forget the kinds of another time)
                self._seen.clear()
            times = self._seen[key] = deque(maxlen=STORM)
        times.append(now)
        if self.storm is None and len(times) == STORM and now - times[0] <= STORM_SECONDS:
            self.storm = (f"{event} failed {STORM} times in {now - times[0]:.1f} s "
                          f"({where}: {type(exc).__name__}: {text})")
            log.critical("leaving the mesh: %s", self.storm)
            self.on_storm()


def describe(act) -> str:
    """A short description of an action, for the log (no payloads)."""
    parts = []
    for name in ("call_id", "peer_id", "peer", "address", "oid", "holder"):
        value = getattr(act, name, None)
        if isinstance(value, str) and value:
            parts.append(f"{name} {value[:16]}")
    call = getattr(act, "call", None)
    if call is not None and hasattr(call, "call_id"):
        parts.append(f"call {call.call_id} ({call.function or 'pickled'})")
    message = getattr(act, "message", None)
    if message is not None:
        parts.append(f"a {type(message).__name__}")
    return f"{type(act).__name__}({', '.join(parts)})"
