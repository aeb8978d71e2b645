"""The client's link to its agent: the socket it talks through (a DEALER to the agent's
TCP address, with CURVE when there is a key, or a connection to the agent's local socket:
``mesh.wire.localconn``), how it finds out that the connection broke, how it connects
anew, and what it sends last when the client stops.

``Link`` owns the socket and the lock that whoever uses it holds (``lock``: ZeroMQ sockets
are not thread-safe, and a lock is the memory barrier they need to move between threads;
a local connection's buffers are not thread-safe either). It knows nothing of what is in
flight: when the connection breaks it says why (``broken``) and wakes the client's thread,
which fails what was in flight and calls ``reconnect``. The connection broke when:
- a local connection ends (the agent left or died: its kernel closed it) or breaks the
  framing;
- a TCP connection that had completed its handshake is closed or reset (the socket
  monitor's ``DISCONNECTED``: the agent died or restarted). ZeroMQ would connect again by
  itself, but the agent's answers to what we sent before go to a connection that no
  longer exists: they never come;
- the client's heartbeat (``mesh.client.heartbeat``) found the agent silent, a frozen agent
  or a dead link, where the connection stays open (the client's thread says so).
``reconnect`` then makes a new DEALER to the agent's TCP address (a local connection is
not tried again): a new connection, to whatever agent serves that address next.

A frame is whole or not there: a big one on a slow link (64 MiB at 2 MB/s: half a minute)
holds back every frame behind it, the heartbeat's answers too. Before the client gives up
on a silent agent it asks ``quiet_for``: how long since bytes last came from the agent on
any of this process's TCP connections to its address (Linux: ``TCP_INFO``'s
``last_data_recv``, asked of the kernel only then); bytes still coming are a sign of
life. (A local connection carries a big frame in well under a second.)

Sends from the client's thread wait for room at most ``SEND_WAIT_S`` (a frozen agent takes
nothing): the frame stays first in line, and the thread looks at its heartbeat meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from mesh.keys import MeshKey
from mesh.wire import localconn
from mesh.wire import messages as m
from mesh.wire.curve import HANDSHAKE_FAILED, curve_client, monitor_event
from mesh.wire.framing import wait
from mesh.wire.localconn import FrameStream, StreamClosed

log = logging.getLogger("mesh.client")
CLOSE_LINGER_MS = 500  # how long frames queued at close() may still take to go
RECV_BATCH = 256  # frames ``drain`` takes off a DEALER at a time
SEND_WAIT_S = 0.5  # how long ``send`` waits for room before it gives the frame back
MONITORED = HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_LAST_DATA_RECV = struct.Struct("=I")  # struct tcp_info's tcpi_last_data_recv (ms), at
_LAST_DATA_RECV_AT = 52  # byte 52 (linux/tcp.h: 8 bytes of states, then 11 u32 before it)
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
        self.monitor: zmq.Socket | None = None  # the DEALER's handshakes and disconnections
        self.connected = False  # the DEALER's connection completed its handshake
        self.local_path: str | None = None  # the agent's local socket, when we use it
        self.broken = ""  # why the connection broke (see the module docstring)
        self.auth_failure: str | None = None
        self._peers: set[tuple[str, int]] | None = None  # (``quiet_for``: made when first asked)
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
        self.monitor = sock.get_monitor_socket(MONITORED)
        self.connected = False
        sock.connect(f"tcp://{self.address}")
        self.fd = sock.getsockopt(zmq.FD)

    # ------------------------------------------------------------------ failures

    def fail(self, exc: Exception | str) -> None:
        """The connection broke: the client's thread fails what is in flight and
        reconnects; until then new calls are refused."""
        if not self.broken:
            self.broken = f"lost the connection to the agent at {self.address}: {exc}"
            self._wake()

    def reconnect(self) -> None:
        """After ``broken`` (under ``lock``): a new connection to the agent's address over
        TCP, where ZeroMQ connects to whatever agent serves it next (a local connection
        becomes TCP). The caller clears ``broken`` once what was in flight failed."""
        log.warning("%s; what was in flight fails, new calls go over TCP to whatever agent "
                    "serves %s", self.broken, self.address)
        old_stream, old_sock, old_monitor = self.stream, self.sock, self.monitor
        self.stream, self.local_path = None, None
        self._dealer()
        if old_stream is not None:
            old_stream.close()
        else:
            old_sock.disable_monitor()
            old_monitor.close(0)
            old_sock.close(0)

    def on_monitor(self) -> None:
        """The DEALER's monitor has an event: a handshake done, a connection lost, or a
        failed handshake, which says why the agent does not answer."""
        try:
            event = monitor_event(self.monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected = True
        elif event == zmq.EVENT_DISCONNECTED:
            if self.connected:  # (not one that never completed its handshake)
                self.connected = False
                self.fail("the connection was closed or reset")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.auth_failure = "authentication failed: the agent does not admit this mesh key"
        elif self.key is None:
            self.auth_failure = "handshake failed: the agent may require a mesh key (MESH_KEY_FILE)"
        else:
            self.auth_failure = "handshake failed: wrong mesh key, or the agent runs --insecure"

    def quiet_for(self) -> float | None:
        """Seconds since bytes last came from the agent's address over TCP (the least of
        this process's connections to it), or None when nobody can tell (a local
        connection, no TCP_INFO, no such connection). Costs a look at each descriptor of
        the process: asked only when the heartbeat is about to give up."""
        if self.stream is not None or not hasattr(socket, "TCP_INFO"):
            return None
        if self._peers is None:
            host, _, port = self.address.rpartition(":")
            try:
                self._peers = {(ai[4][0], int(port)) for ai in socket.getaddrinfo(
                    host.strip("[]"), int(port), type=socket.SOCK_STREAM)}
            except (OSError, ValueError):
                self._peers = set()
        return _tcp_quiet_for(self._peers)

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

    def send(self, frame: bytes) -> bool:
        """Send from the client's thread, waiting up to ``SEND_WAIT_S`` while the agent
        takes nothing more (a DEALER at its high-water mark; a local connection over its
        bound). False: it did not go (the caller keeps it first in line); True: it went,
        or it never will (the connection broke, or the client closes)."""
        stream = self.stream
        if stream is None:
            sock = self.sock
            try:
                sock.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            if sock.poll(SEND_WAIT_S * 1000, zmq.POLLOUT):
                try:
                    sock.send(frame, zmq.NOBLOCK)
                    return True
                except zmq.Again:
                    pass
            return False
        deadline = time.monotonic() + SEND_WAIT_S
        try:
            while not stream.send(frame) and not self._closed.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait(stream.sock, left, write=True)
                stream.flush()
        except StreamClosed as exc:
            self.fail(exc)
        return True

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


def _tcp_quiet_for(peers: set[tuple[str, int]]) -> float | None:
    """Seconds since one of this process's TCP connections to ``peers`` last received data
    (the least), or None if there is none."""
    quiet = None
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in fds:
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))  # (a copy, closed at once)
        except (OSError, ValueError):
            continue
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if sock.getpeername()[:2] not in peers:
                continue
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            if len(info) < _LAST_DATA_RECV_AT + 4:
                continue
            ms = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)[0]
            quiet = ms / 1000 if quiet is None else min(quiet, ms / 1000)
        except OSError:
            continue
        finally:
            sock.close()
    return quiet
