"""Python client of an agent: ``mesh.connect("host:port")``.

The client's DEALER socket is used by one thread at a time, under ``_sock_lock``
(ZeroMQ sockets are not thread-safe; a lock is the memory barrier they need to move
between threads). A background thread watches it: it sends what ``submit``, ``call``
and the task runtime queued (``_outbox``, several frames as one ``Batch``), and takes
what arrived, completing ``concurrent.futures.Future`` objects when ``Result``s come.
One wake per burst, not per frame: a sender writes the waker's byte only when no wake
is pending yet; the thread clears the flag *before* it empties the queue, so a frame
queued after that finds the flag clear and wakes it again, and a burst of submissions
costs the thread one wake and one pass over the queue. While the thread is awake
(handling what arrived, when futures' callbacks may queue new calls) the flag stays
set: nobody wakes it for nothing.

One call at a time (a program that waits for each result before the next call) takes
a shorter way, with no thread hop either way:
- when nothing else is in flight, the calling thread sends the call itself. The
  background thread therefore polls the socket's descriptor (``ZMQ_FD``), not the socket,
  and whoever touches the socket then reads what waits on it (``_drain``): that
  descriptor only signals new input to one who asked ``EVENTS`` after the last send or
  receive;
- a thread that waits in ``result()`` (or ``exception()``) of such a call reads the
  socket itself while nobody else does (leader/followers: ``_reader`` names who reads;
  ``_lead``). The background thread watches the socket only while something is in
  flight and no waiting thread reads it; it decides that each time it wakes, so in a
  loop of single calls it stays asleep: one wake per call fewer (the earlier way, a
  waiting thread reading too while the background thread also watched the descriptor,
  woke both at every input and measured slower). A reading thread steps aside when the
  background thread has frames to send (it writes ``_lw``), when the client closes and
  when its call is done; it then wakes the background thread if anything is still in
  flight. A call sent this way that someone waits for another way (``done()``,
  ``add_done_callback``, ``concurrent.futures.wait``/``as_completed``) wakes the
  background thread to read for it (``_need_reader``).

A result that raised on the agent is re-raised here as the original exception when
it could be rebuilt, with the remote traceback (and the agent's name) attached as its
``__cause__``; otherwise as ``RemoteError``.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any

import zmq

from mesh import keys, localconn
from mesh import messages as m
from mesh.callfutures import Callback, CallFuture, complete, result_value  # noqa: F401 (result_value: API)
from mesh.client_link import ClientLink
from mesh.client_requests import ClientRequests
from mesh.errors import AgentUnreachable
from mesh.keys import MeshKey
from mesh.localconn import FrameStream, StreamClosed
from mesh.poll import Poller
from mesh.taskexec import dumps

_default: Client | None = None
RECV_BATCH = 256  # frames the client's thread takes off the socket before handling them
_EVENTS, _POLLIN = zmq.EVENTS, int(zmq.POLLIN)  # (ints: enum flags cost a call each)
LOCAL_PROBE_S = 1.0  # how long a local socket may take to answer before we use TCP
BG = "background"  # ``Client._reader`` while the client's own thread reads the socket


def default_client() -> Client | None:
    """The client made by the last ``connect()`` in this process, if still open."""
    return _default


class Client(ClientLink, ClientRequests):
    """A connection to one agent. Thread-safe; also a context manager."""

    def __init__(self, address: str, timeout: float = 5.0, key: MeshKey | None | str = "auto",
                 local: bool = True) -> None:
        """``key``: a MeshKey, None for plaintext, or "auto" to load it as the CLI does
        (MESH_KEY_FILE, MESH_KEY, the default key file; plaintext if there is none).
        ``local``: reach an agent on this device through its local socket when it has
        one and holds our key (``mesh.localsock``; ``self.local_path`` then says where);
        False: always TCP (with CURVE when there is a key)."""
        self.address = address
        self.key = keys.load() if key == "auto" else key
        self.auth_failure: str | None = None
        self.ctx = zmq.Context.instance()
        self._outbox: collections.deque[bytes] = collections.deque()  # frames to send
        self._wake_pending = False  # a wake byte is on its way (see the module docstring)
        self._futures: dict[str, Future] = {}
        self._queries: dict[int, Future] = {}
        self._fetches: dict[str, list[Future]] = {}  # oid -> waiting fetch() calls
        self.session = os.urandom(8).hex()  # owner of what our calls leave at agents
        self._id_prefix = os.urandom(8).hex()
        self._seq = itertools.count()
        self._qids = itertools.count(1)
        self._lock = threading.Lock()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._closed = threading.Event()
        self._sock_lock = threading.Lock()  # whoever uses the socket holds it
        self._reader: int | str | None = None  # who reads the socket: BG, a thread's ident, nobody
        self._lr, self._lw = socket.socketpair()  # asks a reading thread to step aside
        self._lr.setblocking(False)
        self._lw.setblocking(False)
        self._lead_poller: Poller | None = None  # (one reader at a time: made once)
        self.local_path: str | None = None  # the agent's local socket, when we use it
        self._stream: FrameStream | None = None  # (then our connection)
        self._broken = ""  # why the local connection broke (the agent left or died)
        self._monitor: zmq.Socket | None = None
        near = localconn.dial(address, None if self.key is None else self.key.fingerprint(),
                              min(timeout, LOCAL_PROBE_S), m.MAX_FRAME) if local else None
        if near is not None:
            self._stream, self.local_path = near
            self._sock: Any = self._stream
            self._fd = self._stream.fileno()
        else:
            self._dealer()
        self.dropped = 0
        self.batches_received = 0  # frames from the agent that carried several messages
        self.late_results = 0  # results for calls already answered (or never made)
        self.wakes = 0  # times the client's thread woke (a loop of single calls: ~none)
        self._thread = threading.Thread(target=self._loop, name=f"mesh-client-{address}", daemon=True)
        self._thread.start()
        if near is not None:  # (it answered already)
            return
        try:
            self.query("status", timeout=timeout)
        except AgentUnreachable:
            self.close()
            raise

    # ------------------------------------------------------------------ API

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the mesh; ``fn`` travels by cloudpickle."""
        return self._send_call("", dumps((fn, args, kwargs)))

    def _submit_to(self, on_done, avoid, fn, /, *args, inputs=(), needs=None, **kwargs) -> str:
        """``submit`` for the task runtime (``mesh.runtime``): no Future, which costs
        more than the rest of the bookkeeping; ``on_done(ok, value or exception)`` is
        called once, on the thread that completes the call (the client's, as a rule).
        ``avoid``: agent names where it failed before; ``inputs``: ``Holding`` records
        (where the call's big inputs are); ``needs``: its constraints (``Needs``).
        Returns the call id."""
        return self._send_call("", dumps((fn, args, kwargs)), on_done=on_done, avoid=avoid,
                               inputs=inputs, needs=needs).call_id

    def close(self) -> None:
        """Stop the client's thread and fail calls still pending. Safe to call twice."""
        global _default
        if self._closed.is_set():
            return
        with self._lock:
            pending = list(self._futures)
        for call_id in pending:  # nobody will read these: the agents stop them
            self._post(m.encode(m.Cancel(call_id, "the caller closed its connection")))
        # and drop what our calls kept at agents (mesh.objects), even what they still make
        self._post(m.encode(m.Free("", [], self.session)))
        self._closed.set()
        self._wake()
        try:  # a thread reading the socket steps aside
            self._lw.send(b"\0")
        except (BlockingIOError, OSError):
            pass
        self._thread.join(2.0)
        with self._lock:
            pending = list(self._futures.values())
            self._futures.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(AgentUnreachable("client closed before the result arrived"))
        for sock in (self._r, self._w, self._lr, self._lw):
            sock.close()
        if self._lead_poller is not None:
            self._lead_poller.close()
        if _default is self:
            _default = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _send_call(self, function: str, payload: bytes, *, on_done=None, avoid=(),
                   inputs=(), needs=None) -> Future:
        if self._closed.is_set():
            raise AgentUnreachable("client is closed")
        if self._broken:
            raise AgentUnreachable(self._broken)
        # unique in the mesh: a random prefix per client and a counter (no system call
        # per call: os.urandom releases the GIL, and the I/O thread then takes it)
        call_id = f"{self._id_prefix}{next(self._seq):08x}"
        # (encoded first: a call that cannot travel, e.g. too many labels, raises
        # EncodeError here and leaves no future behind)
        frame = m.encode(m.new(m.Call, call_id=call_id, function=function, payload=payload,
                               avoid=list(avoid), inputs=list(inputs), owner=self.session,
                               needs=needs))
        fut: Future
        if on_done is None:
            fut = CallFuture(self, call_id)
        else:
            fut = Callback(call_id, on_done)  # type: ignore[assignment]
        with self._lock:
            alone = not self._inflight()  # nothing else in flight: send it ourselves
            self._futures[call_id] = fut
        if not (alone and self._send_now(frame)):
            self._post(frame)
        elif on_done is not None:  # nobody will wait in result(): our thread reads for it
            self._need_reader()
        return fut

    def _inflight(self) -> bool:
        """Anything to read for (under ``_lock``)."""
        return bool(self._futures or self._queries or self._fetches)

    def _need_reader(self) -> None:
        """Someone waits for a call without reading: if nobody reads, wake our thread."""
        if self._reader is None:
            self._wake()

    def _lead(self, fut: Future, timeout: float | None) -> None:
        """Read the socket from this thread until ``fut`` is done, if nobody else reads it
        (see the module docstring); return at once if someone does, or when the time is
        up, when the client closes or when our thread has frames to send (the caller then
        waits for ``fut`` as for any future)."""
        me = threading.get_ident()
        with self._lock:
            if self._reader is not None or Future.done(fut) or self._closed.is_set():
                return
            self._reader = me
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._sock_lock:
                if self._closed.is_set():  # (the socket may be closed already)
                    return
                poller = self._lead_poller
                if poller is None:
                    poller = self._lead_poller = Poller()
                    poller.register(self._sock)
                    poller.register(self._lr)
                poller.touch(self._sock)  # (our thread used it since: ask its EVENTS first)
                sock, lr, stream = self._sock, self._lr, self._stream
                # (the poller asks the socket's EVENTS itself: no drain needed around it;
                # one frame per poll, the agent sends what it has for us as one)
                while not (Future.done(fut) or self._closed.is_set() or self._outbox
                           or (stream is not None and (stream.out or self._broken))):
                    wait_ms = None if deadline is None else max(deadline - time.monotonic(), 0) * 1000
                    ready = poller.poll(wait_ms)
                    if not ready and deadline is not None and time.monotonic() >= deadline:
                        return
                    stand_down = False
                    for item, _ in ready:
                        if item is sock:
                            if stream is not None:  # (level-triggered: read it all)
                                for frame in self._drain():
                                    self._handle(frame)
                                continue
                            try:
                                frame = sock.recv(zmq.NOBLOCK)
                            except zmq.Again:
                                continue
                            self._handle(frame)
                        else:  # (lr: poll may give it back as its number)
                            stand_down = True
                            try:
                                while lr.recv(4096):
                                    pass
                            except (BlockingIOError, OSError):
                                pass
                    if stand_down:
                        return
        finally:
            with self._lock:
                self._reader = None
                more = self._inflight() or bool(self._outbox)
            if more:  # our thread reads (and sends) from now on
                self._wake()

    def _send_now(self, frame: bytes) -> bool:
        """Send ``frame`` from this thread if the socket is free and nothing is queued
        before it (order); False: queue it for the background thread."""
        if self._outbox or not self._sock_lock.acquire(blocking=False):
            return False
        try:
            if self._outbox or self._closed.is_set():
                return False
            stream = self._stream
            if stream is not None:
                try:
                    if not stream.send(frame):  # (over its bound: our thread waits for room)
                        return False
                except StreamClosed as exc:
                    self._break(exc)
                    return False
                if stream.out:  # the socket took part of it: our thread writes the rest
                    self._wake()
            else:
                try:
                    self._sock.send(frame, zmq.NOBLOCK)
                except zmq.ZMQError:  # (full, or closing): the background thread sends it
                    return False
            # (our thread watches the descriptor: it signals only once EVENTS was asked;
            # a thread that reads next polls the socket, which asks it)
            frames = self._drain() if self._reader == BG else ()
        finally:
            self._sock_lock.release()
        for f in frames:
            self._handle(f)
        return True

    def _drain(self) -> list[bytes]:
        """What waits on the socket (at most ``RECV_BATCH`` frames). Under ``_sock_lock``;
        asking ``EVENTS`` is what lets the descriptor signal the next input. (The local
        connection: what whole frames arrived.)"""
        if self._stream is not None:
            try:
                return self._stream.frames()
            except StreamClosed as exc:
                self._break(exc)
                return []
        sock, frames = self._sock, []
        while len(frames) < RECV_BATCH and sock.get(_EVENTS) & _POLLIN:
            try:
                frames.append(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        return frames

    def _post(self, frame: bytes) -> None:
        self._outbox.append(frame)
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def _wake(self) -> None:
        try:
            self._w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _loop(self) -> None:
        try:
            while True:
                self._serve()
                if not self._broken or self._closed.is_set():
                    break
                self._fall_back_to_tcp()
        finally:
            self._finish()

    def _serve(self) -> None:
        """Send and read until the client closes or its local connection breaks."""
        monitor, stream = self._monitor, self._stream
        poller = zmq.Poller()
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._r, zmq.POLLIN)
        poller.register(self._fd, zmq.POLLIN)  # (not the socket: see the docstring)
        wake_fd = self._r.fileno()
        flags = zmq.POLLIN  # what we watch the descriptor for (POLLOUT: a local
        # connection's output waits for room)
        while not self._closed.is_set() and not self._broken:
            with self._lock:  # read the socket while something is in flight and
                watch = self._reader in (None, BG) and self._inflight()  # no thread does
                if watch:
                    self._reader = BG
                elif self._reader == BG:
                    self._reader = None
            timeout = 500
            want = (zmq.POLLIN if watch else 0) | (
                zmq.POLLOUT if stream is not None and stream.out else 0)
            if want != flags:
                if want:
                    poller.register(self._fd, want)
                else:
                    poller.unregister(self._fd)
                if watch and not flags & zmq.POLLIN:  # a thread that read before us may
                    with self._sock_lock:  # have left input that the descriptor
                        frames = self._drain()  # will not signal
                    for frame in frames:
                        self._handle(frame)
                    if frames:
                        timeout = 0
                flags = want
            ready = poller.poll(timeout)
            self.wakes += 1
            # awake now: frames queued from here on (also by the futures' callbacks
            # below) need no wake, they are sent right after
            self._wake_pending = True
            for item, _ in ready:
                if item is monitor:
                    self._handshake_failed(monitor)
                elif item is self._r or item == wake_fd:  # (poll may give the number)
                    try:
                        while self._r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
            if stream is not None and stream.out:
                with self._sock_lock:
                    try:
                        stream.flush()
                    except StreamClosed as exc:
                        self._break(exc)
            reader = self._reader
            if reader is not None and reader != BG:  # a waiting thread reads the socket
                self._wake_pending = False
                if self._outbox or (stream is not None and stream.out):
                    try:  # ask it to step aside: it wakes us when it did
                        self._lw.send(b"\0")
                    except (BlockingIOError, OSError):
                        pass
                continue
            while True:
                with self._sock_lock:
                    frames = self._drain()
                for frame in frames:
                    self._handle(frame)
                if len(frames) < RECV_BATCH:
                    break
            self._wake_pending = False  # before emptying the queue: see the docstring
            outbox = self._outbox
            if outbox:
                with self._sock_lock:
                    if len(outbox) == 1:
                        self._send_frame(outbox.popleft())
                    else:  # calls piled up while we were away: one frame for the lot
                        frames = []
                        while outbox:
                            frames.append(outbox.popleft())
                        for frame in m.batches(frames):
                            self._send_frame(frame)
                    frames = self._drain()
                for frame in frames:
                    self._handle(frame)


def connect(address: str = "127.0.0.1:46102", timeout: float = 5.0,
            key: MeshKey | None | str = "auto", local: bool = True) -> Client:
    """Connect to the agent at ``host:port`` and make it this process's default mesh.

    ``key`` as for ``Client``. Raises AgentUnreachable when the agent does not answer
    within ``timeout`` (including a failed authentication), MeshKeyError when the key
    cannot be loaded. ``local`` as for ``Client``."""
    global _default
    client = Client(address, timeout, key, local)
    _default = client
    return client
