"""ZeroMQ sockets of one agent: a ROUTER that everyone connects to, and one DEALER
per peer that we connect to.

Our DEALERs carry our node id as their identity, so a peer's ROUTER knows who
sends (``ROUTER_HANDOVER`` lets a reconnecting node take its identity back).
Clients connect DEALERs with no identity of their own. Everything is bounded:
``MAXMSGSIZE`` makes ZeroMQ drop a connection that sends an oversized frame before
it is buffered, high-water marks bound every queue, sends never block (a full
queue drops the frame and counts it), linger is short.
"""

from __future__ import annotations

import logging

import zmq

from mesh.messages import MAX_FRAME

log = logging.getLogger("mesh.transport")

HWM = 10_000
RECONNECT_MAX_MS = 2_000


def tcp(address: str) -> str:
    return f"tcp://{address}"


class Transport:
    """One ROUTER bound on ``host:port`` and DEALERs keyed by peer address."""

    def __init__(self, node_id: bytes, host: str, port: int, max_frame: int = MAX_FRAME) -> None:
        self.ctx = zmq.Context.instance()
        self.node_id = node_id
        self.max_frame = max_frame
        self.router = self.ctx.socket(zmq.ROUTER)
        self._tune(self.router)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_frame + 1024)
        if port == 0:
            port = self.router.bind_to_random_port(f"tcp://{host}")
        else:
            self.router.bind(f"tcp://{host}:{port}")
        self.host, self.port = host, port
        self.dealers: dict[str, zmq.Socket] = {}
        self.by_socket: dict[zmq.Socket, str] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.dropped_sends = 0
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def _tune(sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 200)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)

    def connect(self, address: str) -> None:
        if address in self.dealers:
            return
        sock = self.ctx.socket(zmq.DEALER)
        self._tune(sock)
        sock.setsockopt(zmq.IDENTITY, self.node_id)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a peer we are not connected to
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame + 1024)
        try:
            sock.connect(tcp(address))
        except zmq.ZMQError as exc:
            log.warning("cannot connect to %s: %s", address, exc)
            sock.close(0)
            return
        self.dealers[address] = sock
        self.by_socket[sock] = address
        self.poller.register(sock, zmq.POLLIN)

    def disconnect(self, address: str) -> None:
        sock = self.dealers.pop(address, None)
        if sock is None:
            return
        self.by_socket.pop(sock, None)
        self.poller.unregister(sock)
        sock.close(100)

    def send(self, address: str, frame: bytes) -> bool:
        """Send over our connection to ``address``; False (and counted) if not possible now."""
        sock = self.dealers.get(address)
        if sock is None:
            self.dropped_sends += 1
            return False
        try:
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            self.dropped_sends += 1
            return False

    def reply(self, identity: bytes, frame: bytes) -> bool:
        """Send over the ROUTER to the connection ``identity``."""
        try:
            self.router.send_multipart([identity, frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            self.dropped_sends += 1
            return False

    def close(self) -> None:
        """Close every socket (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        for address in list(self.dealers):
            self.disconnect(address)
        self.router.close(200)
