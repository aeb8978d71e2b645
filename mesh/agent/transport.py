"""ZeroMQ sockets of one agent: a ROUTER that everyone connects to, and one DEALER
per peer that we connect to.

Our DEALERs carry our node id as their identity, so a peer's ROUTER knows who
sends (``ROUTER_HANDOVER`` lets a reconnecting node take its identity back).

Security (``mesh.keys``): with a mesh key, the ROUTER is a CURVE server and every
DEALER a CURVE client with the mesh's key pair; a ZAP handler in the agent's own
loop (``Transport.handle_zap``) admits only clients presenting the mesh's public
key. A handshake that fails never yields a frame, so nothing from a stranger is
ever decoded. Without a key (``--insecure``, or loopback) everything is plaintext.
Programs on this device may come through the local socket instead (a Unix stream
socket only our user can reach: ``mesh.wire.localsock``, ``mesh.agent.localserver``); the identities
of its connections start with ``LOCAL_TAG``, so that one ``reply`` serves both.
Clients connect DEALERs with no identity of their own. Everything is bounded:
``MAXMSGSIZE`` makes ZeroMQ drop a connection that sends an oversized frame before
it is buffered, high-water marks bound every queue, sends never block (a full
queue drops the frame and counts it), linger is short.
"""

from __future__ import annotations

import logging

import zmq

from mesh.agent.localserver import LocalServer
from mesh.keys import MeshKey
from mesh.wire import localsock
from mesh.wire.curve import HANDSHAKE_FAILED, curve_client, monitor_event
from mesh.wire.framing import FrameStream, StreamClosed
from mesh.wire.localsock import LOCAL_TAG
from mesh.wire.messages import MAX_FRAME, batches
from mesh.wire.poll import Poller

log = logging.getLogger("mesh.transport")

HWM = 10_000
LOCAL_PAUSE = 1.0  # seconds the local listener is not watched after a failed accept
_SEND_MORE = zmq.NOBLOCK | zmq.SNDMORE
RECONNECT_MAX_MS = 2_000
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"mesh"
def tcp(address: str) -> str:
    return f"tcp://{address}"


class Transport:
    """One ROUTER bound on ``host:port`` and DEALERs keyed by peer address."""

    def __init__(self, node_id: bytes, host: str, port: int, key: MeshKey | None = None,
                 max_frame: int = MAX_FRAME, local: bool = False) -> None:
        """``local``: also serve ``mesh.wire.localsock.bind_path`` of our TCP address (if the
        runtime directory is private: ``self.local_path`` says where, or None)."""
        self.ctx = zmq.Context()  # our own: the ZAP endpoint is per context
        self.node_id = node_id
        self.key = key
        self.max_frame = max_frame
        self.zap: zmq.Socket | None = None
        self.auth_rejected = 0  # ZAP said no (a client with another key)
        self.handshake_failures = 0  # any failed handshake on the ROUTER
        self.router = self.ctx.socket(zmq.ROUTER)
        self._tune(self.router)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # (a frame it cannot route raises:
        # a member's answers then go over our own connection to it, see ``flush``)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_frame + 1024)
        if key is not None:
            self._public, secret = key.curve_keypair()
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(ZAP_ENDPOINT)
            self.router.setsockopt(zmq.CURVE_SERVER, 1)
            self.router.setsockopt(zmq.CURVE_SECRETKEY, secret)
            self.router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        self.monitor = self.router.get_monitor_socket(HANDSHAKE_FAILED)
        if port == 0:
            port = self.router.bind_to_random_port(f"tcp://{host}")
        else:
            self.router.bind(f"tcp://{host}:{port}")
        self.host, self.port = host, port
        self.local: LocalServer | None = None
        self.local_path: str | None = None
        self._local_paused: float | None = None  # (see accept_local)
        if local:
            self._bind_local()
        self.dealers: dict[str, zmq.Socket] = {}
        self.by_socket: dict[zmq.Socket, str] = {}
        self.monitors: dict[zmq.Socket, str] = {}  # a dealer's monitor -> its address
        self.poller = Poller()  # (epoll, touched sockets: mesh.wire.poll)
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        if self.zap is not None:
            self.poller.register(self.zap, zmq.POLLIN)
        if self.local is not None:
            self.poller.register(self.local)
        self.dropped_sends = 0
        self.bytes_out = 0
        self._outboxes: dict[bytes, list[bytes]] = {}  # identity -> frames (reply)
        self._peer_out: dict[str, list[bytes]] = {}  # member address -> frames (send)
        self.batches_out = 0  # turns that sent a client several frames batched, and how many
        self.batched_out = 0
        self._closed = False

    def _bind_local(self) -> None:
        path = localsock.bind_path(self.address)
        if path is None:
            log.warning("no local socket: %s is not a private directory of this user (mode 0700), "
                        "or a socket's path in it would be too long; programs on this device "
                        "use TCP", localsock.runtime_dir())
            return
        try:
            self.local = LocalServer(path, self.max_frame)
        except OSError as exc:
            log.warning("no local socket at %s: %s", path, exc)
            return
        self.local_path = path

    def accept_local(self, now: float) -> list[FrameStream]:
        """New connections to the local socket, watched from now on. When accepting
        fails (out of descriptors), the listener is not watched for ``LOCAL_PAUSE``
        seconds (``resume_local``): its queue would wake every turn of the loop."""
        starved = self.local.starved
        streams = self.local.accept()
        for stream in streams:
            self.poller.register(stream)
        if self.local.starved != starved and self._local_paused is None:
            log.warning("cannot accept local connections (out of file descriptors?): "
                        "trying again in %.0f s", LOCAL_PAUSE)
            self.poller.unregister(self.local)
            self._local_paused = now + LOCAL_PAUSE
        return streams

    def resume_local(self, now: float) -> None:
        """Watch the local socket's listener again once its pause is over."""
        if self._local_paused is not None and now >= self._local_paused:
            self._local_paused = None
            self.poller.register(self.local)

    def drop_local(self, stream: FrameStream) -> None:
        self.poller.unregister(stream)
        self.local.drop(stream)

    def flush_local(self, stream: FrameStream) -> bool:
        """Write what waits for a local connection (its descriptor is writable); False
        when the connection broke (then dropped)."""
        try:
            if stream.flush():
                self.poller.modify(stream, write=False)
            return True
        except StreamClosed:
            self.drop_local(stream)
            return False

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
        curve_client(sock, self.key)
        try:
            sock.connect(tcp(address))
        except zmq.ZMQError as exc:
            log.warning("cannot connect to %s: %s", address, exc)
            sock.close(0)
            return
        self.dealers[address] = sock
        self.by_socket[sock] = address
        self.poller.register(sock, zmq.POLLIN)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.monitors[monitor] = address
        self.poller.register(monitor, zmq.POLLIN)

    def disconnect(self, address: str) -> None:
        sock = self.dealers.get(address)
        if sock is None:
            return
        self._send_out(address, self._peer_out.pop(address, None))  # (what this turn had)
        del self.dealers[address]
        self.by_socket.pop(sock, None)
        self.poller.unregister(sock)
        for monitor, addr in list(self.monitors.items()):
            if addr == address:
                del self.monitors[monitor]
                self.poller.unregister(monitor)
                sock.disable_monitor()
                monitor.close(0)
        sock.close(100)

    def send(self, address: str, frame: bytes) -> bool:
        """Send over our connection to ``address`` at the end of the loop's turn (``flush``:
        what a turn has for one member goes as one ``Batch``); False (and counted) if we
        have no connection to it."""
        sock = self.dealers.get(address)
        if sock is None:
            self.dropped_sends += 1
            return False
        out = self._peer_out.get(address)
        if out is None:
            self._peer_out[address] = [frame]
        else:
            out.append(frame)
        return True

    def _send_out(self, address: str, frames: list[bytes] | None) -> list[bytes]:
        """Send a member what this turn had for it (several frames as ``Batch``es);
        the frames that could not go."""
        sock = self.dealers.get(address)
        if not frames:
            return []
        if sock is None:
            self.dropped_sends += len(frames)
            return frames
        self.poller.touch(sock)
        failed = []
        for frame in (frames if len(frames) == 1 else batches(frames)):
            try:
                sock.send(frame, zmq.NOBLOCK)
                self.bytes_out += len(frame)
            except zmq.ZMQError:
                self.dropped_sends += 1
                failed.append(frame)
        if len(frames) > 1:
            self.batched_out += len(frames)
            self.batches_out += 1
        return failed

    def reply(self, identity: bytes, frame: bytes) -> bool:
        """Send over the ROUTER (or the local socket) to the connection ``identity``:
        the frame waits in its outbox until ``flush`` at the end of the loop's turn,
        which sends what piled up as one ``Batch``. (The ROUTER drops what it cannot
        route: it never said whether a frame went.)"""
        out = self._outboxes.get(identity)
        if out is None:
            self._outboxes[identity] = [frame]
        else:
            out.append(frame)
        return True

    def flush(self) -> list[tuple[str | bytes, bytes]]:
        """Send what waits for members (``send``) and for connections to our ROUTER and
        local socket (``reply``), in order, batched per destination. Returns the frames
        for members that could not go, with the member's address (``send``) or its
        identity (``reply``: its connection to our ROUTER is gone, for now)."""
        failed: list[tuple[str | bytes, bytes]] = []
        if self._peer_out:
            peer_out, self._peer_out = self._peer_out, {}
            for address, frames in peer_out.items():
                failed.extend((address, f) for f in self._send_out(address, frames))
        if not self._outboxes:
            return failed
        outboxes, self._outboxes = self._outboxes, {}
        for identity, frames in outboxes.items():
            member = len(identity) == 16
            if len(frames) == 1:
                if not self._reply_now(identity, frames[0]) and member:
                    failed.append((identity, frames[0]))
                continue
            for frame in batches(frames):
                if not self._reply_now(identity, frame) and member:
                    failed.append((identity, frame))
            self.batched_out += len(frames)
            self.batches_out += 1
        return failed

    def _reply_now(self, identity: bytes, frame: bytes) -> bool:
        """(the two parts sent directly: ``send_multipart`` checks and loops in Python)"""
        router = self.router
        if identity[:1] == LOCAL_TAG and len(identity) != 16:  # a local connection's
            return self._send_local(identity, frame)
        self.poller.touch(router)
        try:
            router.send(identity, _SEND_MORE)
            router.send(frame, zmq.NOBLOCK)
            self.bytes_out += len(frame)
            return True
        except zmq.ZMQError:
            self.dropped_sends += 1
            return False

    def _send_local(self, identity: bytes, frame: bytes) -> bool:
        stream = None if self.local is None else self.local.conns.get(identity)
        if stream is None:  # (gone: a program that closed before its answer)
            self.dropped_sends += 1
            return False
        queued = bool(stream.out)
        try:
            if not stream.send(frame):
                self.dropped_sends += 1
                return False
        except StreamClosed:
            self.dropped_sends += 1
            self.drop_local(stream)
            return False
        self.bytes_out += len(frame)
        if stream.out and not queued:  # the socket is full: write the rest when it has room
            self.poller.modify(stream, write=True)
        return True

    def read_dealer_monitor(self, monitor: zmq.Socket) -> str | None:
        """The address whose connection was just lost (FIN/RST), if any."""
        lost = None
        for _ in range(64):
            try:
                event = monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if event == zmq.EVENT_DISCONNECTED:
                lost = self.monitors.get(monitor)
        return lost

    def handle_zap(self) -> None:
        """Answer pending ZAP requests (RFC 27): admit CURVE clients that present the
        mesh's public key, refuse every other."""
        from zmq.utils import z85

        mesh_public = z85.decode(self._public)
        for _ in range(64):
            try:
                request = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = (request + [b"", b""])[:2]
            mechanism = request[5] if len(request) > 5 else b""
            credentials = request[6] if len(request) > 6 else b""
            ok = mechanism == b"CURVE" and credentials == mesh_public
            if not ok:
                self.auth_rejected += 1
            self.poller.touch(self.zap)
            self.zap.send_multipart([
                b"1.0", request_id, b"200" if ok else b"400", b"OK" if ok else b"not a member of this mesh",
                b"mesh" if ok else b"", b"",
            ])

    def handle_monitor(self) -> None:
        """Count failed handshakes on the ROUTER (wrong key, plaintext peer, garbage)."""
        for _ in range(64):
            try:
                event = monitor_event(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event & HANDSHAKE_FAILED:
                self.handshake_failures += 1

    def close(self) -> None:
        """Close every socket and the context (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self.flush()  # (the last answers: e.g. to a client that asked us to leave)
        for address in list(self.dealers):
            self.disconnect(address)
        if self.local is not None:  # (before the TCP port is free for another agent)
            self.local.close()
        self.router.disable_monitor()
        self.monitor.close(0)
        self.router.close(200)
        if self.zap is not None:
            self.zap.close(0)
        self.poller.close()
        self.ctx.term()
