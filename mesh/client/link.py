"""The client's link to its agent: the socket it talks through (a DEALER to the agent's
TCP address, with CURVE when there is a key, or a connection to the agent's local socket:
``mesh.wire.localconn``), what happens when a local connection breaks (what was in flight fails,
the client goes on over TCP), and what its thread does last when it stops.

``ClientLink`` is a mixin of ``mesh.client.client.Client``: it uses the client's socket lock,
its ``_stream``/``_sock``/``_monitor``/``_fd`` and its tables of what is in flight.
"""

from __future__ import annotations

import logging
import select

import zmq

from mesh.agent.transport import HANDSHAKE_FAILED, curve_client, monitor_event
from mesh.errors import AgentUnreachable
from mesh.wire import messages as m
from mesh.wire.localconn import StreamClosed

log = logging.getLogger("mesh.client")
CLOSE_LINGER_MS = 500  # how long frames queued at close() may still take to go


class ClientLink:
    """The client's socket and its failures (a mixin of ``Client``)."""

    def _dealer(self) -> None:
        """Our socket becomes a DEALER to the agent's TCP address (CURVE with a key)."""
        sock = self._sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, m.MAX_FRAME + 1024)
        curve_client(sock, self.key)
        self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        sock.connect(f"tcp://{self.address}")
        self._fd = sock.getsockopt(zmq.FD)

    def _fall_back_to_tcp(self) -> None:
        """The local connection broke (the agent left, died or restarted): what was in
        flight fails, and from now on we reach the agent's address over TCP, where
        ZeroMQ reconnects to whatever agent serves it next (as a TCP client always did)."""
        log.warning("%s; what was in flight fails, new calls go over TCP", self._broken)
        with self._sock_lock:
            old = self._stream
            self._stream, self.local_path = None, None
            self._dealer()
            if self._lead_poller is not None:  # (it watched the old connection)
                self._lead_poller.close()
                self._lead_poller = None
            old.close()
        self._fail_all(AgentUnreachable(self._broken))
        self._broken = ""  # (until now new calls were refused: none went the old way)

    def _break(self, exc: Exception) -> None:
        """The local connection broke (the agent left, or died): our thread fails what
        is in flight; new calls raise AgentUnreachable."""
        if not self._broken:
            self._broken = f"lost the connection to the agent at {self.address}: {exc}"
            self._wake()

    def _send_frame(self, frame: bytes) -> None:
        """Send from our thread (under ``_sock_lock``): blocks while the agent does not
        take more (a DEALER at its high-water mark; a local connection's bound)."""
        stream = self._stream
        if stream is None:
            self._sock.send(frame)
            return
        try:
            while not stream.send(frame) and not self._closed.is_set():
                select.select([], [stream.sock], [], 0.5)
                stream.flush()
        except StreamClosed as exc:
            self._break(exc)

    def _finish(self) -> None:
        """What was queued before close() still goes (e.g. the runtime's last Free
        messages), for up to CLOSE_LINGER_MS after the socket is closed."""
        sock, monitor, stream = self._sock, self._monitor, self._stream
        with self._sock_lock:
            outbox = self._outbox
            sent = bool(outbox)
            while outbox and not self._broken:
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
        if self._broken:
            self._fail_all(AgentUnreachable(self._broken))

    def _handshake_failed(self, monitor: zmq.Socket) -> None:
        try:
            event = monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.auth_failure = "authentication failed: the agent does not admit this mesh key"
        elif self.key is None:
            self.auth_failure = "handshake failed: the agent may require a mesh key (MESH_KEY_FILE)"
        else:
            self.auth_failure = "handshake failed: wrong mesh key, or the agent runs --insecure"
