"""Frames over the agent's local socket (``mesh.wire.localsock``): a Unix stream socket, no ZeroMQ.

Why not ZeroMQ here: a ZeroMQ message crosses an I/O thread on each side (the sender's
writes the socket, the receiver's reads it and signals the application thread), four
thread wake-ups per round trip of a call that a plain stream socket does not need. On
a 2-core VM an echo over ZeroMQ ``ipc://`` takes ~100 us, over a Unix stream socket
~15 us. ZeroMQ stays the mesh's transport between devices (and for programs that
reach an agent over TCP); the local socket is, like the agent's channels to its
workers (``mesh.wire.framing``), a pipe between processes of one user on one machine.

The framing is the workers' channel's: four bytes of big-endian length, then the
frame. Both ends are non-blocking: ``send`` writes what the socket takes and keeps the
rest in ``out`` (its owner polls for writability and calls ``flush``), up to a bound
past which frames are refused and counted (ZeroMQ's high-water mark did that); a
length over the limit the reader accepts closes the connection (ZeroMQ's
``MAXMSGSIZE``), as does the end of the stream.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import struct
import time

from mesh.errors import DecodeError
from mesh.wire import messages as m
from mesh.wire.localsock import LOCAL_TAG, dial_path

_HEADER = struct.Struct(">I")
CHUNK = 1 << 16  # bytes asked of the socket per read
READS_PER_CALL = 16  # reads per ``frames`` call: a flood cannot hold the caller forever
OUT_LIMIT = 1 << 28  # bytes waiting to be written past which ``send`` refuses frames


_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (Linux: SO_PEERCRED;
    None where the system cannot say)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        return _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[1]
    except OSError:
        return None


def trusted(sock: socket.socket) -> bool:
    """The other end runs as our user or as root (the directory's mode already says
    so; this holds even if someone changed it since)."""
    uid = peer_uid(sock)
    return uid is None or uid in (os.geteuid(), 0)


class StreamClosed(EOFError):
    """The other end closed the connection, or it broke the framing (``oversized``)."""

    def __init__(self, text: str, oversized: bool = False) -> None:
        super().__init__(text)
        self.oversized = oversized


class FrameStream:
    """One non-blocking framed connection. Not thread-safe: one user at a time (the
    client holds its socket lock, the agent has one thread)."""

    def __init__(self, sock: socket.socket, max_frame: int, identity: bytes = b"") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_frame = max_frame
        self.identity = identity  # (the agent's name for this connection)
        self._in = bytearray()
        self.out = bytearray()
        self.refused = 0  # frames not sent: ``out`` was full

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> bool:
        """Send ``frame`` or queue what the socket does not take now; False: refused
        (``out`` is over ``OUT_LIMIT``). Raises StreamClosed if the connection broke."""
        out = self.out
        if out:
            if len(out) > OUT_LIMIT:
                self.refused += 1
                return False
            out += _HEADER.pack(len(frame))
            out += frame
            return True
        data = _HEADER.pack(len(frame)) + frame
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise StreamClosed(f"the connection broke: {exc}") from None
        if n < len(data):
            out += memoryview(data)[n:]
        return True

    def flush(self) -> bool:
        """Write what waits in ``out``; True when nothing is left. Raises StreamClosed."""
        out = self.out
        while out:
            try:
                n = self.sock.send(out)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise StreamClosed(f"the connection broke: {exc}") from None
            del out[:n]
        return True

    def frames(self) -> list[bytes]:
        """The whole frames that arrived (reading what the socket holds, at most
        ``READS_PER_CALL`` chunks: more stays on the socket, which keeps its descriptor
        readable). Raises StreamClosed at the end of the stream, or when a frame's
        length is over ``max_frame`` (after returning the frames before it, on the next
        call)."""
        buf = self._in
        for _ in range(READS_PER_CALL):
            try:
                chunk = self.sock.recv(CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if not buf:
                    raise StreamClosed(f"the connection broke: {exc}") from None
                break
            if not chunk:
                if not self._whole(buf):
                    raise StreamClosed("the other end closed the connection")
                break
            buf += chunk
            if len(chunk) < CHUNK:
                break
        out = []
        while len(buf) >= 4:
            (size,) = _HEADER.unpack_from(buf)
            if size > self.max_frame:
                if out:
                    return out
                raise StreamClosed(f"a frame of {size} bytes (limit {self.max_frame})", oversized=True)
            end = 4 + size
            if len(buf) < end:
                break
            out.append(bytes(buf[4:end]))
            del buf[:end]
        return out

    @staticmethod
    def _whole(buf: bytearray) -> bool:
        return len(buf) >= 4 and len(buf) >= 4 + _HEADER.unpack_from(buf)[0]

    def close(self, linger: float = 0.0) -> None:
        """Close, after trying for up to ``linger`` seconds to write what waits."""
        if linger > 0 and self.out:
            deadline = time.monotonic() + linger
            try:
                while not self.flush():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    select.select([], [self.sock], [], left)
            except StreamClosed:
                pass
        self.sock.close()


class LocalServer:
    """The agent's end: a listening Unix socket and its connections, by identity
    (``LOCAL_TAG`` and a number never given twice: a late reply to a closed connection
    goes nowhere, never to a new one)."""

    def __init__(self, path: str, max_frame: int) -> None:
        self.path = path
        self.max_frame = max_frame
        try:  # a file left by a killed agent of this address (we hold its TCP port now)
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self.listener = listener
        self.conns: dict[bytes, FrameStream] = {}
        self._ids = itertools.count(1)
        self.accepted = 0
        self.strangers = 0  # connections from another user, closed at once
        self.starved = 0  # accepts that failed (out of descriptors)

    def fileno(self) -> int:
        return self.listener.fileno()

    def accept(self) -> list[FrameStream]:
        """The connections waiting to be accepted (at most 64 per call)."""
        new = []
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # (out of descriptors: the rest wait in the listen queue)
                self.starved += 1
                break
            if not trusted(sock):
                self.strangers += 1
                sock.close()
                continue
            stream = FrameStream(sock, self.max_frame + 1024,
                                 LOCAL_TAG + _HEADER.pack(next(self._ids) & 0xFFFFFFFF))
            self.conns[stream.identity] = stream
            new.append(stream)
        self.accepted += len(new)
        return new

    def drop(self, stream: FrameStream) -> None:
        self.conns.pop(stream.identity, None)
        stream.close()

    def close(self, linger: float = 0.2) -> None:
        """Close every connection (what waits for each is written for up to ``linger``
        seconds in all) and the listener, and remove the socket's file."""
        deadline = time.monotonic() + linger
        for stream in list(self.conns.values()):
            stream.close(max(deadline - time.monotonic(), 0.0))
        self.conns.clear()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def dial(address: str, fingerprint: str | None, timeout: float,
         max_frame: int) -> tuple[FrameStream, str] | None:
    """For a client: a connection to the local socket of the agent serving TCP on
    ``address``, if there is one in our private directory and the agent answers
    ``status`` there within ``timeout`` with our key's ``fingerprint`` (None:
    plaintext), with its path; None: use TCP."""
    path = dial_path(address)
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:  # (a file left by a killed agent: nobody listens)
        sock.close()
        return None
    if not trusted(sock):
        sock.close()
        return None
    stream = FrameStream(sock, max_frame + 1024)
    deadline = time.monotonic() + timeout
    try:
        stream.send(m.encode(m.Query(0, "status")))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([sock], [sock] if stream.out else [], [], left)
            stream.flush()
            for frame in stream.frames():
                msg = m.decode(frame)
                msgs = m.unbatch(msg)[0] if type(msg) is m.Batch else [msg]
                for msg in msgs:
                    if type(msg) is m.Answer and msg.qid == 0:
                        body = msg.body
                        if isinstance(body, dict) and not msg.error and body.get("key") == fingerprint:
                            return stream, path
                        stream.close()
                        return None
    except (StreamClosed, DecodeError, OSError):
        pass
    stream.close()
    return None
