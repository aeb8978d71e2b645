"""A stand-in client for driving the program-side runtime (``mesh.program.runtime``) in a
test: it records the calls the runtime sends and lets the test answer each one, so
results, failures and lost objects come exactly when the test says."""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any

from mesh.program.taskexec import TaskFuture
from mesh.sched.taskspec import OnFailure


@dataclass
class Sent:
    call_id: str
    callback: Any
    fn: Any
    args: tuple
    kwargs: dict
    outs: list
    files: list
    returns: int
    inputs: tuple = ()
    answered: bool = False

    def ok(self, value: Any, outs: list | None = None, agent: str = "a",
           files: list | None = None) -> None:
        """The call returned ``value`` (as ``_execute`` would send it back), and ``files``
        the bytes of each of its file parameters, in order."""
        self.answered = True
        self.callback(True, (value, outs if outs is not None else list(self.outs),
                             files if files is not None else [], agent))

    def fail(self, exc: BaseException) -> None:
        self.answered = True
        self.callback(False, exc)


@dataclass
class FakeClient:
    sent: list = field(default_factory=list)
    cancelled: list = field(default_factory=list)
    freed: list = field(default_factory=list)
    objects: dict = field(default_factory=dict)  # oid -> pickled bytes (fetch)
    _closed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _submit_to(self, callback, avoid, _execute, fn, args, kwargs, outs, files, returns, refs,
                   flags=None, inputs=(), needs=None) -> str:
        with self.lock:
            call_id = f"call-{len(self.sent)}"
            self.sent.append(Sent(call_id, callback, fn, args, kwargs, outs, files, returns, inputs))
        return call_id

    def cancel(self, call_id: str) -> bool:
        self.cancelled.append(call_id)
        return True

    def free(self, holder: str, oids: list) -> None:
        self.freed.append((holder, list(oids)))

    def fetch(self, oid: str, holder: str, timeout: float = 120.0) -> bytes:
        from mesh.sched.objects import ObjectLost

        if oid not in self.objects:
            raise ObjectLost(oid, "ObjectLost: not here")
        return self.objects[oid]

    def of(self, fn) -> list:
        """The calls sent for this function, in order."""
        return [s for s in self.sent if s.fn is fn]


def call(rt, fn, *args, returns: int = 1, on_failure: str = "RETRY", directions: dict | None = None):
    """A task call straight on the runtime (as ``Task.__call__`` makes it): its futures."""
    ids = rt.call(fn, inspect.signature(fn), directions or {}, args, {}, returns, fn.__name__,
                  False, OnFailure(on_failure), None, [])
    futures = tuple(TaskFuture(rt, ids[0], d) for d in ids[1:])
    return futures[0] if returns == 1 else futures
