"""Calls submitted over REST, until their caller has read the outcome.

REST callers poll (``GET /v1/calls/{id}``) instead of holding a connection, so the
agent keeps each REST call's outcome for a while. Bounded: at most ``capacity``
entries; when full, the oldest finished one is forgotten (a pending one never is:
the dispatcher bounds how many can be pending).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

from mesh.wire.messages import Result

PREFIX = b"rest:"  # the reply-to identity of a REST call (never a ZeroMQ identity: those are 5 or 16 bytes)


@dataclass
class Entry:
    function: str
    submitted: float
    result: Result | None = None
    finished: float | None = None


class CallBook:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, Entry] = OrderedDict()

    @staticmethod
    def identity(call_id: str) -> bytes:
        return PREFIX + call_id.encode()

    @staticmethod
    def owns(identity: bytes) -> bool:
        return identity.startswith(PREFIX)

    def add(self, call_id: str, function: str, now: float) -> None:
        if len(self.entries) >= self.capacity:
            for key, entry in self.entries.items():
                if entry.result is not None:
                    del self.entries[key]
                    break
        self.entries[call_id] = Entry(function, now)

    def finish(self, identity: bytes, result: Result, now: float) -> None:
        entry = self.entries.get(identity[len(PREFIX):].decode(errors="replace"))
        if entry is not None and entry.result is None:
            entry.result, entry.finished = result, now

    def view(self, call_id: str, where: str | None) -> dict | None:
        """The JSON document of ``GET /v1/calls/{id}``; ``where`` is the dispatcher's
        place of a pending call ("local", "backlog" or a peer's name). None: unknown."""
        entry = self.entries.get(call_id)
        if entry is None:
            return None
        doc = {"id": call_id, "function": entry.function}
        r = entry.result
        if r is None:
            doc["state"] = {"local": "running", "backlog": "queued", None: "pending"}.get(where, "delegated")
            if doc["state"] == "delegated":
                doc["agent"] = where
            return doc
        doc["agent"] = r.agent
        doc["seconds"] = round((entry.finished or entry.submitted) - entry.submitted, 6)
        if r.ok:
            doc["state"] = "done"
            try:
                doc["result"] = json.loads(r.json) if r.json else None
            except ValueError:
                doc["result"] = r.json
        else:
            doc["state"] = "failed"
            doc["error"] = {"type": r.error_type, "message": r.error, "traceback": r.traceback}
        return doc
