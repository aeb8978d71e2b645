"""The client's link to its agent: the socket it talks through (a DEALER to the agent's
TCP address, with CURVE when there is a key, or a connection to the agent's local socket:
``mesh.wire.localconn``), what happens when a local connection breaks (the client goes on
over TCP), and what it sends last when the client stops.

``Link`` owns the socket and the lock that whoever uses it holds (``lock``: ZeroMQ sockets
are not thread-safe, and a lock is the memory barrier they need to move between threads;
a local connection's buffers are not thread-safe either). It knows nothing of what is in
flight: when the connection breaks it says so (``broken``, and wakes the client's thread,
which fails what was in flight and calls ``reconnect``).
"""

from __future__ import annotations

import logging
import select
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from mesh.keys import MeshKey
from mesh.wire import localconn
from mesh.wire import messages as m
from mesh.wire.curve import HANDSHAKE_FAILED, curve_client, monitor_event
from mesh.wire.localconn import FrameStream, StreamClosed

log = logging.getLogger("mesh.client")
CLOSE_LINGER_MS = 500  # how long frames queued at close() may still take to go
RECV_BATCH = 256  # frames ``drain`` takes off a DEALER at a time
_EVENTS, _POLLIN = zmq.EVENTS, int(zmq.POLLIN)  # (ints: enum flags cost a call each)


class Link:
    """One connection to the agent at ``address``: its local socket or TCP."""

    def __init__(self, address: str, key: MeshKey | None, probe: float | None,
                 closed: threading.Event, wake: Callable[[], None]) -> None:
        """``probe``: how long the agent's local socket may take to answer before we use
        TCP (None: TCP only). ``closed``: set when the client closes (a blocked send
        gives up); ``wake``: wakes the client's thread (when the connection breaks)."""
        self.address = address
        self.key = key
        self.ctx = zmq.Context.instance()
        self.lock = threading.Lock()  # whoever uses the socket holds it
        self._closed = closed
        self._wake = wake
        self.sock: Any = None  # a DEALER, or the local connection (``stream``)
        self.stream: FrameStream | None = None  # the local connection, when we use it
        self.fd = -1  # what the client's thread polls: the DEALER's ZMQ_FD, or the stream's
        self.monitor: zmq.Socket | None = None  # the DEALER's handshake failures
        self.local_path: str | None = None  # the agent's local socket, when we use it
        self.broken = ""  # why the local connection broke (the agent left or died)
        self.auth_failure: str | None = None
        near = None
        if probe is not None:
            near = localconn.dial(address, None if key is None else key.fingerprint(),
                                  probe, m.MAX_FRAME)
        if near is not None:
            self.stream, self.local_path = near
            self.sock = self.stream
            self.fd = self.stream.fileno()
        else:
            self._dealer()

    def _dealer(self) -> None:
        """Our socket becomes a DEALER to the agent's TCP address (CURVE with a key)."""
        sock = self.sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_FRAME + 1024)
        curve_client(sock, self.key)
        self.monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        sock.connect(f"tcp://{self.address}")
        self.fd = sock.getsockopt(zmq.FD)

    # ------------------------------------------------------------------ failures

    def fail(self, exc: Exception) -> None:
        """The local connection broke (the agent left, or died): the client's thread
        fails what is in flight and reconnects; until then new calls are refused."""
        if not self.broken:
            self.broken = f"lost the connection to the agent at {self.address}: {exc}"
            self._wake()

    def reconnect(self) -> None:
        """After ``broken`` (under ``lock``): from now on we reach the agent's address
        over TCP, where ZeroMQ reconnects to whatever agent serves it next (as a TCP
        client always did). The caller clears ``broken`` once what was in flight failed."""
        log.warning("%s; what was in flight fails, new calls go over TCP", self.broken)
        old = self.stream
        self.stream, self.local_path = None, None
        self._dealer()
        if old is not None:
            old.close()

    def on_monitor(self) -> None:
        """The monitor has an event: a failed handshake says why the agent does not answer."""
        try:
            event = monitor_event(self.monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.auth_failure = "authentication failed: the agent does not admit this mesh key"
        elif self.key is None:
            self.auth_failure = "handshake failed: the agent may require a mesh key (MESH_KEY_FILE)"
        else:
            self.auth_failure = "handshake failed: wrong mesh key, or the agent runs --insecure"

    # ------------------------------------------------------------------ frames (under ``lock``)

    def try_send(self, frame: bytes) -> bool:
        """Send ``frame`` now if the socket takes it without waiting; False: it did not
        (queue it for the client's thread)."""
        stream = self.stream
        if stream is not None:
            try:
                if not stream.send(frame):  # (over its bound: the client's thread waits for room)
                    return False
            except StreamClosed as exc:
                self.fail(exc)
                return False
            if stream.out:  # the socket took part of it: the client's thread writes the rest
                self._wake()
            return True
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:  # (full, or closing): the client's thread sends it
            return False
        return True

    def send(self, frame: bytes) -> None:
        """Send from the client's thread: blocks while the agent does not take more (a
        DEALER at its high-water mark; a local connection's bound)."""
        stream = self.stream
        if stream is None:
            self.sock.send(frame)
            return
        try:
            while not stream.send(frame) and not self._closed.is_set():
                select.select([], [stream.sock], [], 0.5)
                stream.flush()
        except StreamClosed as exc:
            self.fail(exc)

    def flush(self) -> None:
        """Write what waits in a local connection's ``out``."""
        try:
            self.stream.flush()
        except StreamClosed as exc:
            self.fail(exc)

    def drain(self) -> list[bytes]:
        """What waits on the socket (at most ``RECV_BATCH`` frames). Asking ``EVENTS`` is
        what lets the descriptor signal the next input. (The local connection: what
        whole frames arrived.)"""
        if self.stream is not None:
            try:
                return self.stream.frames()
            except StreamClosed as exc:
                self.fail(exc)
                return []
        sock, frames = self.sock, []
        while len(frames) < RECV_BATCH and sock.get(_EVENTS) & _POLLIN:
            try:
                frames.append(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        return frames

    def finish(self, outbox: deque[bytes]) -> None:
        """Close, after sending what was queued before close() (e.g. the task runtime's
        last Free messages), for up to CLOSE_LINGER_MS."""
        sock, monitor, stream = self.sock, self.monitor, self.stream
        with self.lock:
            sent = bool(outbox)
            while outbox and not self.broken:
                try:
                    if stream is not None:
                        stream.send(outbox.popleft())
                    else:
                        sock.send(outbox.popleft(), zmq.NOBLOCK)
                except (zmq.ZMQError, StreamClosed):
                    break
            if stream is not None:
                stream.close(CLOSE_LINGER_MS / 1000 if sent or stream.out else 0)
            else:
                sock.disable_monitor()
                monitor.close(0)
                sock.close(CLOSE_LINGER_MS if sent else 0)
