"""A worker process: ``python -m mesh.agent.worker FD AGENT_NAME`` (started by the agent).

Reads calls from the socket ``FD``, runs them in order, writes results back (framing
in ``mesh.agent.pool``). The main thread reads the socket between calls; while a call
runs for more than a few milliseconds (or lends its slot) a second thread does
(``Inbox``), so calls the agent sends meanwhile wait here, answers to ``slot.get``
reach the call that asked, and a ``withdraw`` is answered at once. Exits when the
agent closes the socket or when the agent process is gone. Exceptions in user code
are results, never the worker's death. A call that called tasks ends when they have
(``mesh.program.slot.call_done``): its result goes after theirs.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback

import cbor2
import cloudpickle

from mesh.errors import ValueTooLarge
from mesh.program import slot
from mesh.program.taskexec import _execute, dumps, entry_point
from mesh.wire.fields import MAX_VALUE
from mesh.wire.framing import FrameSocket

NICE = 10  # the main thread's nice once a call has run NICE_AFTER (``Inbox._nice_main``)


_resolved: dict = {}  # "module:qualname" -> the callable (imported modules stay anyway)


def resolve(function: str):
    """``"module:qualname"`` -> the callable. Raises ImportError/AttributeError/ValueError."""
    fn = _resolved.get(function)
    if fn is not None:
        return fn
    module_name, sep, qualname = function.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"expected MODULE:FUNCTION, got {function!r}")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{function} is not callable")
    obj = entry_point(obj)  # a @task named here runs as the program's main itself
    if len(_resolved) < 4096:
        _resolved[function] = obj
    return obj


def run_call(function: str, payload: bytes, want_json: bool = False) -> list:
    """Run one call; returns ``[ok, value, error_type, error, traceback, json]``. A value
    that pickles to more than ``MAX_VALUE`` bytes cannot travel: the call fails with
    ``ValueTooLarge`` instead (and so does a task whose outputs together are that big)."""
    fn = None
    try:
        if function:
            fn = resolve(function)
            args, kwargs = pickle.loads(payload)
        else:
            fn, args, kwargs = cloudpickle.loads(payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        slot.call_done()  # (the tasks it called still end first)
        return _failure(exc)
    failed = slot.call_done()  # tasks it called and did not wait for end first
    if failed is not None:
        return _failure(failed)
    try:
        text = json.dumps(value, default=repr) if want_json else ""
        data = dumps(value)
    except Exception as exc:
        return _failure(exc, prefix="the result could not be pickled: ")
    if len(data) > MAX_VALUE:
        if fn is _execute and args:  # (a task of mesh.program.api: name the user's function)
            what = f"the outputs of task {_name(args[0])}"
        else:
            what = f"the result of {function or _name(fn)}"
        return _failure(ValueTooLarge(what, len(data), MAX_VALUE))
    return [True, data, "", "", "", text]


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)[:100]


def _failure(exc: BaseException, prefix: str = "") -> list:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = cloudpickle.dumps(exc)
        pickle.loads(blob)  # only send what the caller can rebuild
        if len(blob) > MAX_VALUE:  # (an exception holding a big value: its text travels)
            blob = b""
    except Exception:
        blob = b""
    return [False, blob, type(exc).__name__, prefix + str(exc), tb, ""]


ACTIVATE = 0.005  # s a call runs before the reader thread watches the channel for it
NICE_AFTER = 0.1  # s a call runs before its worker goes behind the agent (NICE)
IDLE_TICK = 0.05  # s between the reader thread's looks while calls come now and then
IDLE_PARK = 1.0  # s without a call after which the reader thread sleeps until one starts


class Inbox:
    """What the agent sends, read by one thread at a time (``reading``): the main thread
    between calls (it waits in ``recv``, as a single-threaded worker would: no thread
    hop on the way from the agent to the call, and calls that waited here behind the
    last one are taken without a system call), and the reader thread (``run``) once a
    call has run ``ACTIVATE`` or lends its slot: then a ``withdraw`` is answered at
    once, and calls that come while the running call lends its slot go back at once
    (they could be the very tasks it waits for). Who reads changes only under ``cond``.

    Calls wait in order for the main thread (``next_call``); ``obj`` frames answer the
    running call's ``slot.get`` (``next_obj``); ``withdraw`` gives waiting calls back
    (``["back", ids]``), and so does ``hold`` when the running call lends its slot. A
    call is taken once, under ``cond``: started, or given back."""

    def __init__(self, conn: FrameSocket) -> None:
        self.conn = conn
        lock = threading.Lock()  # one lock, two conditions: who waits for what
        self.cond = threading.Condition(lock)  # the main thread waits on it
        self.reader_cv = threading.Condition(lock)  # the reader thread waits on it
        self.calls: collections.deque = collections.deque()
        self.objs: collections.deque = collections.deque()
        self.closed = False
        self.holding = False  # the running call lent its slot
        self.busy = False  # a call runs
        self.started = 0.0  # when it started (time.monotonic)
        self.idle_since = 0.0
        self.reading: str | None = None  # "main", "reader" or None
        self.parked = False  # the reader thread sleeps until a call starts
        self.main_thread = threading.get_native_id()  # (made by the main thread)
        self.niced = False

    # -- the reader thread

    def run(self) -> None:
        sock = self.conn.sock
        while True:
            with self.cond:
                while True:
                    if self.closed:
                        return
                    now = time.monotonic()
                    if self.busy and self.reading is None and (
                            self.holding or now - self.started >= ACTIVATE):
                        self.reading = "reader"
                        break
                    if self.busy:
                        timeout = max(self.started + ACTIVATE - now, 0.0) if not self.reading else None
                    elif now - self.idle_since < IDLE_PARK:
                        # (a call may start any moment: look again soon; the main thread
                        # wakes us only when we sleep for good, not at every call)
                        timeout = IDLE_TICK
                    else:
                        timeout = None
                    self.parked = timeout is None
                    self.reader_cv.wait(timeout)
                    self.parked = False
            while True:  # watch the channel until the call ends
                with self.cond:  # (and nice the call once it has run NICE_AFTER)
                    wait = None if self.niced or self.holding or not self.busy else max(
                        self.started + NICE_AFTER - time.monotonic(), 0.0)
                try:
                    readable, _, _ = select.select([sock], [], [], wait)
                except (OSError, ValueError):  # closed: the main thread sees it too
                    return
                with self.cond:
                    if not readable:
                        if self.busy and not self.holding and (
                                time.monotonic() - self.started >= NICE_AFTER):
                            self._nice_main()
                        continue
                    try:
                        if self.conn.readable():
                            self._read()
                    except Exception:  # EOF, a broken channel: the main thread ends
                        self.closed = True
                        self.reading = None
                        self.cond.notify_all()
                        return
                    if not self.busy:
                        self.reading = None
                        self.cond.notify_all()  # the main thread may wait to read
                        break

    def _nice_main(self) -> None:
        """A call has run ``NICE_AFTER`` (user code on the CPU, as a rule): from now on
        the agent's loop, its heartbeats and probes, goes before this worker (nice
        ``NICE``; Linux keeps nice per thread, and only root may lower it again). Until
        then the worker runs at the agent's priority: a niced worker woke later for each
        short call (7-24 us per round trip, measured side by side). Under ``cond``."""
        if self.niced:
            return
        self.niced = True
        try:
            os.setpriority(os.PRIO_PROCESS, self.main_thread, NICE)
        except OSError:
            pass

    # -- what came

    def _read(self) -> None:
        """Take one frame and those already buffered behind it. By the thread that
        reads, under ``cond``."""
        self._dispatch(cbor2.loads(self.conn.recv()))
        while self.conn.buffered():
            self._dispatch(cbor2.loads(self.conn.recv()))

    def _dispatch(self, frame: list) -> None:
        kind = frame[0]
        if kind == "call":
            if self.holding:
                self._back([frame[1]])
            else:
                self.calls.append(frame)
        elif kind == "obj":
            self.objs.append(frame)
        elif kind == "withdraw":
            self._take(None if frame[1] is None else set(frame[1]))
        if self.reading == "reader":
            self.cond.notify_all()  # the main thread may wait for a call or an object

    def _take(self, ids) -> None:
        """Give back the waiting calls in ``ids`` (None: all). Under ``cond``."""
        kept, back = collections.deque(), []
        for frame in self.calls:
            if ids is None or frame[1] in ids:
                back.append(frame[1])
            else:
                kept.append(frame)
        self.calls = kept
        if back:
            self._back(back)

    def _back(self, call_ids: list) -> None:
        try:
            self.conn.send(cbor2.dumps(["back", call_ids]))
        except OSError:
            pass

    # -- the main thread

    def _wait_for(self, ready) -> bool:
        """Until ``ready()`` (under ``cond``): read the channel ourselves when nobody
        does, else wait for the reader thread. False: the channel is closed."""
        cond = self.cond
        while True:
            with cond:
                while not ready() and not self.closed and self.reading is not None:
                    cond.wait()
                if ready():
                    return True
                if self.closed:
                    return False
                self.reading = "main"
            try:
                frame = cbor2.loads(self.conn.recv())
                with cond:
                    self.reading = None
                    if self.busy:
                        self.reader_cv.notify()  # (it may wait for us to stop reading)
                    self._dispatch(frame)
                    while self.conn.buffered():
                        self._dispatch(cbor2.loads(self.conn.recv()))
            except Exception:  # EOF, a broken channel
                with cond:
                    self.reading = None
                    self.closed = True
                    cond.notify_all()
                return False

    def next_call(self) -> list | None:
        """The next call to run (between calls); None: the agent is gone."""
        with self.cond:
            self.busy = False
            self.idle_since = time.monotonic()
        if not self._wait_for(lambda: self.calls):
            return None
        with self.cond:
            self.busy = True
            self.started = time.monotonic()
            if self.parked:
                self.reader_cv.notify()
            return self.calls.popleft()

    def next_obj(self) -> list:
        """The agent's answer to the running call's ``slot.get``."""
        if not self._wait_for(lambda: self.objs):
            raise EOFError("the agent closed the channel")
        with self.cond:
            return self.objs.popleft()

    def hold(self, on: bool) -> None:
        """The running call lends its slot (``on``: the calls waiting go back, and the
        reader thread gives back those that come) or takes it again."""
        with self.cond:
            self.holding = on
            if on:
                self._take(None)
                self.reader_cv.notify()


def _abort(conn: FrameSocket, inbox: Inbox, exc: BaseException) -> None:
    """``slot.abort``: the running task is past its time_out and never gave the
    interpreter back (``mesh.program.timeout``): the calls waiting behind it go back, its
    call fails with ``exc``, and the worker exits (the agent starts another)."""
    with inbox.cond:
        inbox._take(None)
    if slot.call_id is not None:
        with slot._lock:
            conn.send(cbor2.dumps([slot.call_id, *_failure(exc), -1.0]))
    os._exit(70)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(2.0)


def main() -> None:
    fd, agent_name = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the agent's to handle
    conn = FrameSocket(socket.socket(fileno=fd))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    os.environ["MESH_AGENT_NAME"] = agent_name
    for path in reversed(os.environ.get("APP_PATH", "").split(os.pathsep)):
        if path:
            sys.path.insert(0, path)  # where the application's modules live (containers)
    from mesh.compat import importer

    importer.install()  # PyCOMPSs applications import pycompss.* (unless PyCOMPSs is installed)
    inbox = Inbox(conn)
    slot.channel = conn  # tasks that block on other tasks lend their slot (mesh.program.slot)
    slot.inbox = inbox
    slot.abort = lambda exc: _abort(conn, inbox, exc)  # (a task past its time_out)
    conn.send(cbor2.dumps(["ready", os.getpid()]))
    threading.Thread(target=inbox.run, name="inbox", daemon=True).start()
    clock = time.perf_counter
    while True:
        frame = inbox.next_call()
        if frame is None:
            return
        _, call_id, function, payload, want_json, slot.inline_max, slot.put_room = frame
        slot.call_id = call_id
        t0 = clock()
        outcome = run_call(function, payload, want_json)
        seconds = clock() - t0
        slot.call_id = None
        try:
            conn.send(cbor2.dumps([call_id, *outcome, seconds]))
        except OSError:
            return


if __name__ == "__main__":
    main()
