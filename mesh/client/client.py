"""Python client of an agent: ``mesh.connect("host:port")``.

A ``Client`` holds its parts: its ``Link`` (``mesh.client.link``: the socket to the agent,
local or TCP, used by one thread at a time under ``link.lock``) and its ``Requests``
(``mesh.client.requests``: what is in flight, completed from the frames read), and runs
the threads that move frames between them. A background thread watches the socket:
it sends what ``submit``, ``call`` and the task runtime queued (``_outbox``, several
frames as one ``Batch``), and takes what arrived (``Requests.handle`` completes the
``concurrent.futures.Future`` objects when ``Result``s come).
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
  and whoever touches the socket then reads what waits on it (``Link.drain``): that
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

While anything is in flight, the background thread also watches that the agent is alive
(``mesh.client.heartbeat``: any frame from it counts; after 1 s of silence it pings, and
when 3 pings in a row go unanswered, a frozen agent or a dead link whose connection stays
open, the agent is unreachable). When that happens, or when the connection itself breaks
(``mesh.client.link``), whoever reads steps aside, everything in flight fails with
``AgentUnreachable`` saying why, and the link connects anew to whatever agent serves the
address (``_reconnect``): later calls work again once one does.

A frame can also be lost while the connection stays up (the agent could not send a
result: its buffer for us was full; our call never reached its loop). So the client keeps
a lease on each call (``Requests``: ``mesh.sched.leases``): about once a second, the same
thread asks the agent which of the calls without news for a second it still holds
(``Holds``, answered at once), and sends again, with the same call id, those it does not;
the first result completes the future. These questions are also what tells the agent
that we are still there: one that hears nothing from a client with calls for 4 s cancels
them (its program died, or its connection did). After a reconnection the calls of the
old connection fail here, and a ``Cancel`` naming our session (``owner``) stops them there.

A result that raised on the agent is re-raised here as the original exception when
it could be rebuilt, with the remote traceback (and the agent's name) attached as its
``__cause__``; otherwise as ``RemoteError``.
"""

from __future__ import annotations

import collections
import os
import pickle
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import zmq

from mesh import keys
from mesh.client.futures import Callback, CallFuture, result_value  # noqa: F401 (result_value: API)
from mesh.client.heartbeat import PING, SILENT, Heartbeat
from mesh.client.link import RECV_BATCH, Link
from mesh.client.requests import Requests
from mesh.errors import AgentUnreachable, ValueTooLarge
from mesh.keys import MeshKey
from mesh.program.taskexec import _execute, dumps
from mesh.sched.objects import ObjectLost
from mesh.wire import messages as m
from mesh.wire.poll import Poller

_default: Client | None = None
LOCAL_PROBE_S = 1.0  # how long a local socket may take to answer before we use TCP
BG = "background"  # ``Client._reader`` while the client's own thread reads the socket
MAX_VALUE = m.MAX_VALUE  # the most bytes a call's pickled function and arguments may take
PING_FRAME = m.encode(m.Query(0, "ping"))  # (qid 0: nobody waits for its answer)


def default_client() -> Client | None:
    """The client made by the last ``connect()`` in this process, if still open."""
    return _default


class Client:
    """A connection to one agent. Thread-safe; also a context manager."""

    def __init__(self, address: str, timeout: float = 5.0, key: MeshKey | None | str = "auto",
                 local: bool = True) -> None:
        """``key``: a MeshKey, None for plaintext, or "auto" to load it as the CLI does
        (MESH_KEY_FILE, MESH_KEY, the default key file; plaintext if there is none).
        ``local``: reach an agent on this device through its local socket when it has
        one and holds our key (``mesh.wire.localsock``; ``self.local_path`` then says where);
        False: always TCP (with CURVE when there is a key)."""
        self.address = address
        self.key = keys.load() if key == "auto" else key
        self.session = os.urandom(8).hex()  # owner of what our calls leave at agents
        self._closed = threading.Event()
        self._outbox: collections.deque[bytes] = collections.deque()  # frames to send
        self._wake_pending = False  # a wake byte is on its way (see the module docstring)
        self._r, self._w = socket.socketpair()  # wakes the client's thread
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()  # what is in flight, and who reads the socket
        self._reader: int | str | None = None  # who reads the socket: BG, a thread's ident, nobody
        self._lr, self._lw = socket.socketpair()  # asks a reading thread to step aside
        self._lr.setblocking(False)
        self._lw.setblocking(False)
        self._lead_poller: Poller | None = None  # (one reader at a time: made once)
        self.wakes = 0  # times the client's thread woke (a loop of single calls: ~none)
        self.pings = 0  # heartbeats sent (``mesh.client.heartbeat``)
        self.lease_questions = 0  # Holds sent (``Requests.questions``)
        self.requests = Requests(self._lock, resend=self._post, agent=f"the agent at {address}")
        self.heartbeat = Heartbeat()  # (ticked by the client's thread)
        self.link = Link(address, self.key, min(timeout, LOCAL_PROBE_S) if local else None,
                         self._closed, self._wake)
        if os.environ.get("MESH_EMULATE_LOSS"):  # a test knob: frames lost on purpose
            from mesh.wire import loss

            self.link = loss.install_link(self.link)
        self._thread = threading.Thread(target=self._loop, name=f"mesh-client-{address}", daemon=True)
        self._thread.start()
        if self.link.stream is None:  # (a local socket answered already)
            try:
                self.query("status", timeout=timeout)
            except AgentUnreachable:
                self.close()
                raise
        self.heartbeat.start(time.monotonic())

    # ------------------------------------------------------------------ what it says

    @property
    def local_path(self) -> str | None:
        """The agent's local socket, when we reach it that way (else None: TCP)."""
        return self.link.local_path

    @property
    def auth_failure(self) -> str | None:
        """Why the agent's TCP address refused our handshake, if it did."""
        return self.link.auth_failure

    @property
    def dropped(self) -> int:
        return self.requests.dropped

    @property
    def batches_received(self) -> int:
        return self.requests.batches_received

    @property
    def late_results(self) -> int:
        return self.requests.late_results

    # ------------------------------------------------------------------ API

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the mesh; ``fn`` travels by cloudpickle. Raises
        ``ValueTooLarge`` at once when the call pickles to more than a message carries
        (``mesh.wire.messages.MAX_VALUE``); a result that big fails the call with it."""
        return self._send_call("", dumps((fn, args, kwargs)), fn=fn, args=args)

    def call(self, function: str, args: tuple = (), kwargs: dict | None = None) -> Future:
        """Run ``module:function`` as the agent imports it, with picklable arguments
        (``ValueTooLarge`` as for ``submit``)."""
        return self._send_call(function, pickle.dumps((tuple(args), dict(kwargs or {}))))

    def _submit_to(self, on_done, avoid, fn, /, *args, inputs=(), needs=None, **kwargs) -> str:
        """``submit`` for the task runtime (``mesh.program.runtime``): no Future, which costs
        more than the rest of the bookkeeping; ``on_done(ok, value or exception)`` is
        called once, on the thread that completes the call (the client's, as a rule).
        ``avoid``: agent names where it failed before; ``inputs``: ``Holding`` records
        (where the call's big inputs are); ``needs``: its constraints (``Needs``).
        Returns the call id; raises what ``submit`` raises."""
        return self._send_call("", dumps((fn, args, kwargs)), on_done=on_done, avoid=avoid,
                               inputs=inputs, needs=needs, fn=fn, args=args).call_id

    def cancel(self, call_id: str) -> bool:
        """Stop waiting for a call and tell the agent: it stops the call wherever it is
        (a task that timed out). Its result, if one still comes, is dropped. False if
        the call was not pending."""
        fut = self.requests.pop_call(call_id)
        if fut is None:
            return False
        self._post(m.encode(m.Cancel(call_id, "cancelled by the caller", self.session)))
        if isinstance(fut, Future) and not fut.done():
            fut.cancel()
        return True

    def query(self, what: str, timeout: float = 5.0, arg: str = "") -> Any:
        """Ask the agent ``status``, ``peers``, ``tree-node`` or ``progress``
        (``arg``: a call id). Raises AgentUnreachable on time-out, ValueError when the
        agent refuses."""
        return self._ask(lambda qid: m.Query(qid, what, arg), timeout)

    def resources(self, action: str, cpus: int = 0, peer: str = "", timeout: float = 5.0) -> Any:
        """COMPSs-style resource change (see ``messages.Resources``); returns the agent's
        status after it. Raises ValueError with the agent's message when refused."""
        return self._ask(lambda qid: m.Resources(qid, action, cpus, peer), timeout)

    def fetch(self, oid: str, holder: str, timeout: float = 120.0) -> bytes:
        """The pickled bytes of a task output kept at the agent ``holder`` (a
        ``mesh.sched.objects.Ref``), through our agent. Raises ``ObjectLost`` when it is gone,
        AgentUnreachable when our agent does not answer."""
        fut = self.requests.add_fetch(oid)
        self._post(m.encode(m.Fetch(oid, holder)))
        try:
            msg = fut.result(timeout)
        except (TimeoutError, FutureTimeout):
            raise AgentUnreachable(f"no object {oid[:8]} from agent at {self.address} "
                                   f"within {timeout} s") from None
        finally:
            self.requests.end_fetch(oid, fut)
        if not msg.ok:
            raise ObjectLost(oid, msg.error or "ObjectLost")
        return msg.data

    def free(self, holder: str, oids: list[str]) -> None:
        """Nobody here reads these objects of ``holder`` again (non-blocking)."""
        if oids and not self._closed.is_set():
            for msg in m.Free.split(holder, list(oids)):  # (at most MAX_LIST ids a frame)
                self._post(m.encode(msg))

    def close(self) -> None:
        """Stop the client's thread and fail calls still pending. Safe to call twice."""
        global _default
        if self._closed.is_set():
            return
        for call_id in self.requests.call_ids():  # nobody will read these: the agents stop them
            self._post(m.encode(m.Cancel(call_id, "the caller closed its connection", self.session)))
        # and drop what our calls kept at agents (mesh.sched.objects), even what they still make
        self._post(m.encode(m.Free("", [], self.session)))
        self._closed.set()
        self._wake()
        try:  # a thread reading the socket steps aside
            self._lw.send(b"\0")
        except (BlockingIOError, OSError):
            pass
        self._thread.join(2.0)
        self.requests.fail_all(AgentUnreachable("client closed before the result arrived"))
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
                   inputs=(), needs=None, fn=None, args=()) -> Future:
        if len(payload) > MAX_VALUE:  # (it could not travel: refused here, nothing sent)
            raise ValueTooLarge(_called(function, fn, args), len(payload), MAX_VALUE)
        if self._closed.is_set():
            raise AgentUnreachable("client is closed")
        broken = self.link.broken
        if broken:
            raise AgentUnreachable(broken)
        requests = self.requests
        call_id = requests.new_call_id()
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
        alone = requests.add_call(call_id, fut, frame)  # nothing else in flight: send it ourselves
        if not (alone and self._send_now(frame)):
            self._post(frame)
        elif on_done is not None:  # nobody will wait in result(): our thread reads for it
            self._need_reader()
        return fut

    def _ask(self, make, timeout: float) -> Any:
        """Send ``make(qid)`` and wait for the ``Answer`` with that qid."""
        qid, fut = self.requests.add_query()
        self._post(m.encode(make(qid)))
        try:
            answer = fut.result(timeout)
        except (TimeoutError, FutureTimeout):  # distinct classes on 3.10
            failure = self.link.auth_failure
            why = f" ({failure})" if failure else (
                "" if self.key is None else " (or it does not hold this mesh key)")
            raise AgentUnreachable(f"no answer from agent at {self.address} within {timeout} s{why}") from None
        finally:
            self.requests.end_query(qid)
        if answer.error:
            raise ValueError(answer.error)
        return answer.body

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
        link = self.link
        try:
            with link.lock:
                if self._closed.is_set():  # (the socket may be closed already)
                    return
                poller = self._lead_poller
                if poller is None:
                    poller = self._lead_poller = Poller()
                    poller.register(link.sock)
                    poller.register(self._lr)
                sock, lr, stream = link.sock, self._lr, link.stream
                poller.touch(sock)  # (our thread used it since: ask its EVENTS first)
                handle = self.requests.handle
                # (the poller asks the socket's EVENTS itself: no drain needed around it;
                # one frame per poll, the agent sends what it has for us as one)
                while not (Future.done(fut) or self._closed.is_set() or self._outbox
                           or link.broken or (stream is not None and stream.out)):
                    wait_ms = None if deadline is None else max(deadline - time.monotonic(), 0) * 1000
                    ready = poller.poll(wait_ms)
                    if not ready and deadline is not None and time.monotonic() >= deadline:
                        return
                    stand_down = False
                    for item, _ in ready:
                        if item is sock:
                            if stream is not None:  # (level-triggered: read it all)
                                for frame in link.drain():
                                    handle(frame)
                                continue
                            try:
                                frame = sock.recv(zmq.NOBLOCK)
                            except zmq.Again:
                                continue
                            handle(frame)
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
                more = self.requests.inflight() or bool(self._outbox)
            if more:  # our thread reads (and sends) from now on
                self._wake()

    def _send_now(self, frame: bytes) -> bool:
        """Send ``frame`` from this thread if the socket is free and nothing is queued
        before it (order); False: queue it for the background thread."""
        link = self.link
        if self._outbox or not link.lock.acquire(blocking=False):
            return False
        try:
            if self._outbox or self._closed.is_set() or not link.try_send(frame):
                return False
            # (our thread watches the descriptor: it signals only once EVENTS was asked;
            # a thread that reads next polls the socket, which asks it)
            frames = link.drain() if self._reader == BG else ()
        finally:
            link.lock.release()
        handle = self.requests.handle
        for f in frames:
            handle(f)
        return True

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
        link = self.link
        try:
            while True:
                self._serve()
                if not link.broken or self._closed.is_set():
                    break
                if self._reader not in (None, BG):  # a thread reading the old socket
                    try:  # steps aside (it holds the link's lock)
                        self._lw.send(b"\0")
                    except (BlockingIOError, OSError):
                        pass
                self._reconnect()
        finally:
            link.finish(self._outbox)
            if link.broken:
                self.requests.fail_all(AgentUnreachable(link.broken))

    def _reconnect(self) -> None:
        """The connection broke (``link.broken``): what was in flight fails, and the link
        reaches the agent's address anew (``Link.reconnect``). What was queued and not sent
        yet goes too: it was for the old connection (the calls in it fail; a Free in it is
        lost, and its objects go when the session closes)."""
        link = self.link
        reason = link.broken
        with link.lock:
            link.reconnect()
            if self._lead_poller is not None:  # (it watched the old connection)
                self._lead_poller.close()
                self._lead_poller = None
            self._outbox.clear()
        self.heartbeat.start(time.monotonic())
        link.broken = ""  # (until now new calls were refused: none went the old way; from
        # here they go the new way, those made by the failures below too: a retry)
        ids = self.requests.fail_all(AgentUnreachable(reason))
        for call_id in ids:  # (if the same agent serves the address, it stops them now)
            self._outbox.append(m.encode(m.Cancel(call_id, "its client reconnected", self.session)))

    def _silent(self) -> None:
        """The heartbeat says the agent did not answer its pings: unless something waits
        unread on the socket, the connection is broken (``mesh.client.heartbeat``)."""
        link, requests = self.link, self.requests
        if self._reader not in (None, BG):  # (a thread reads: it has read what came)
            frames = []
        else:
            with link.lock:
                frames = link.drain()
        for frame in frames:
            requests.handle(frame)
        if frames or link.broken:
            return
        now = time.monotonic()
        quiet = link.quiet_for()  # (bytes of a big frame still coming: the agent lives)
        if quiet is not None and quiet < self.heartbeat.limit:
            self.heartbeat.alive(now - quiet)
            return
        silence = self.heartbeat.silence(now)
        why = f" ({link.auth_failure})" if link.auth_failure else ""
        link.broken = f"no answer from the agent at {self.address} for {silence:.1f} s{why}"

    def _serve(self) -> None:
        """Send and read until the client closes or its connection breaks."""
        link, requests, heartbeat = self.link, self.requests, self.heartbeat
        handle, outbox = requests.handle, self._outbox
        monitor, stream, fd = link.monitor, link.stream, link.fd
        poller = zmq.Poller()
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._r, zmq.POLLIN)
        poller.register(fd, zmq.POLLIN)  # (not the socket: see the docstring)
        wake_fd = self._r.fileno()
        flags = zmq.POLLIN  # what we watch the descriptor for (POLLOUT: a local
        # connection's output waits for room)
        while not self._closed.is_set() and not link.broken:
            with self._lock:  # read the socket while something is in flight and
                busy = requests.inflight()  # no thread does
                watch = self._reader in (None, BG) and busy
                if watch:
                    self._reader = BG
                elif self._reader == BG:
                    self._reader = None
            now = time.monotonic()
            beat = heartbeat.tick(now, requests.frames, busy)
            asks = requests.questions(now) if busy else ()  # leases: once a period
            if asks:
                outbox.extend(asks)
                self.lease_questions += len(asks)
            if beat is PING:
                outbox.append(PING_FRAME)
                self.pings += 1
            if (asks or beat is PING) and self._reader not in (None, BG):
                try:  # a waiting thread reads: it steps aside now, so that they go at once
                    self._lw.send(b"\0")
                except (BlockingIOError, OSError):
                    pass
            elif beat is SILENT:
                self._silent()
                if link.broken:
                    break
            timeout = 500
            if busy and heartbeat.running:
                timeout = min(timeout, int(heartbeat.due(now) * 1000) + 1)
            if outbox and self._reader in (None, BG):  # (a send that did not go: again)
                timeout = 0
            want = (zmq.POLLIN if watch else 0) | (
                zmq.POLLOUT if stream is not None and stream.out else 0)
            if want != flags:
                if want:
                    poller.register(fd, want)
                else:
                    poller.unregister(fd)
                if watch and not flags & zmq.POLLIN:  # a thread that read before us may
                    with link.lock:  # have left input that the descriptor
                        frames = link.drain()  # will not signal
                    for frame in frames:
                        handle(frame)
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
                    link.on_monitor()
                elif item is self._r or item == wake_fd:  # (poll may give the number)
                    try:
                        while self._r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
            if stream is not None and stream.out:
                with link.lock:
                    link.flush()
            reader = self._reader
            if reader is not None and reader != BG:  # a waiting thread reads the socket
                self._wake_pending = False
                if outbox or (stream is not None and stream.out):
                    try:  # ask it to step aside: it wakes us when it did
                        self._lw.send(b"\0")
                    except (BlockingIOError, OSError):
                        pass
                continue
            while True:
                with link.lock:
                    frames = link.drain()
                for frame in frames:
                    handle(frame)
                if len(frames) < RECV_BATCH:
                    break
            self._wake_pending = False  # before emptying the queue: see the docstring
            if outbox:
                with link.lock:
                    if len(outbox) == 1:
                        frame = outbox.popleft()
                        if not link.send(frame):  # (the agent takes nothing: first in
                            outbox.appendleft(frame)  # line, after a look at the heartbeat)
                    else:  # calls piled up while we were away: one frame for the lot
                        frames = []
                        while outbox:
                            frames.append(outbox.popleft())
                        frames = m.batches(frames)
                        for i, frame in enumerate(frames):
                            if not link.send(frame):
                                outbox.extendleft(reversed(frames[i:]))
                                break
                    frames = link.drain()
                for frame in frames:
                    handle(frame)


def _called(function: str, fn, args: tuple) -> str:
    """What a call runs, for its ``ValueTooLarge``: the user's function, also for a task
    of the runtime (whose call runs ``_execute``)."""
    if function:
        return f"the call of {function} (its arguments)"
    if fn is _execute and args:
        return f"the call of task {_name(args[0])} (its arguments and input files)"
    return f"the call of {_name(fn)} (the function and its arguments)"


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)[:100]


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
