"""What a caller holds for a call made through ``mesh.client.client.Client``.

``CallFuture`` is the ``concurrent.futures.Future`` of ``Client.submit`` and
``Client.call``: a thread that waits in its ``result()``/``exception()`` reads the
client's socket itself while nobody else does, and every other way of waiting
(``done()``, ``add_done_callback``, ``concurrent.futures.wait``/``as_completed``,
which add to the Future's ``_waiters``: ``Waiters``) makes sure the client's own thread
reads for it (see the client's module docstring). ``Callback`` stands in for a Future
for the task runtime's calls (cheaper: no condition, no waiters). ``result_value``
turns a ``Result`` into the value or raises what the remote function raised.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

from mesh.errors import RemoteError, RemoteTraceback
from mesh.wire import messages as m

log = logging.getLogger("mesh.client")


def result_value(result: m.Result) -> Any:
    """The value of a Result, or raise what the remote function raised."""
    import cloudpickle

    if result.ok:
        return cloudpickle.loads(result.value)
    cause = RemoteTraceback(
        f'\n"""\nTraceback on agent {result.agent}:\n{result.traceback or result.error}"""'
    )
    exc: BaseException | None = None
    if result.value:
        try:
            exc = cloudpickle.loads(result.value)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(result.error_type, result.error, result.traceback, result.agent)
    exc.__cause__ = cause
    try:
        exc.mesh_agent = result.agent  # where it failed (a RETRY goes elsewhere)
    except AttributeError:  # an exception type with __slots__
        pass
    raise exc


class Waiters(list):
    """A Future's ``_waiters``: ``concurrent.futures.wait`` and ``as_completed`` add to it;
    someone then waits without reading, so the client's thread must read."""

    __slots__ = ("_client",)

    def __init__(self, client) -> None:
        super().__init__()
        self._client = client

    def append(self, waiter) -> None:
        super().append(waiter)
        self._client._need_reader()


class CallFuture(Future):
    """The Future of a call (``Client.submit``, ``Client.call``). A thread that waits in
    ``result()``/``exception()`` reads the socket itself while nobody else does; every
    other way of waiting makes sure the client's thread reads (module docstring)."""

    def __init__(self, client, call_id: str) -> None:
        super().__init__()
        self.call_id = call_id  # (mesh run asks for its progress)
        self._client = client
        self._waiters = Waiters(client)

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._read(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._read(timeout))

    def _read(self, timeout: float | None) -> float | None:
        """Read for this call if nobody does; the time left of ``timeout``."""
        if super().done():
            return timeout
        if timeout is None:
            self._client._lead(self, None)
            return None
        t0 = time.monotonic()
        self._client._lead(self, timeout)
        return max(timeout - (time.monotonic() - t0), 0.0)

    def done(self) -> bool:
        if super().done():
            return True
        self._client._need_reader()
        return False

    def add_done_callback(self, fn) -> None:
        super().add_done_callback(fn)
        if not super().done():
            self._client._need_reader()


class Callback:
    """Stands in for the Future of a call made with ``_submit_to`` (in ``_futures``,
    completed like one): passes the outcome to ``on_done(ok, value or exception)``."""

    __slots__ = ("call_id", "_on_done", "_done")

    def __init__(self, call_id: str, on_done) -> None:
        self.call_id = call_id
        self._on_done = on_done
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._finish(True, value)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(False, exc)

    def _finish(self, ok: bool, value: Any) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._on_done(ok, value)
        except Exception:  # as a Future's callback: never the client thread's death
            log.exception("mesh client: the callback of call %s failed", self.call_id)


def complete(fut: Future, result: m.Result) -> None:
    try:
        value = result_value(result)
    except BaseException as exc:  # noqa: BLE001 - the remote function's exception
        fut.set_exception(exc)
    else:
        fut.set_result(value)
