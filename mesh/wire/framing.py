"""Length-prefixed frames over stream sockets: four bytes of big-endian length, then the
frame. One framing, used by the two channels between processes of one user on one machine
that do not go through ZeroMQ: the agent <-> worker channel (``FrameSocket``, blocking)
and the agent's local socket (``FrameStream``, non-blocking; ``mesh.wire.localconn``
says why it is not ZeroMQ). Both cut what they read with the same ``FrameBuffer`` and
write the same length prefix (``_HEADER``).

``FrameBuffer`` holds the bytes read but not yet returned as frames: ``pop`` returns the
next whole frame (None until one is whole) and raises ``FrameTooLarge`` when a length is
over its limit (the stream is corrupt, or the other end broke the rules: nothing after
that length can be trusted).

``FrameSocket`` (the workers' channel; ``multiprocessing.connection`` does the same but
costs the agent ~1.7 MB of imports). ``recv`` raises EOFError when the other end has
closed; ``send`` raises OSError when it is gone. Cheap per frame, since every call
crosses this channel twice: ``send`` writes the length and a small frame with one
``sendall`` (one system call), under a lock so that frames sent from two threads (a
worker's result and its ``mesh.program.slot`` messages) never interleave. ``recv`` reads
what the socket holds (up to ``CHUNK`` bytes) into the buffer and returns one frame from
it; the frames read along with it stay buffered for the next ``recv``, and ``readable``
counts them (a buffered frame does not make the descriptor readable: whoever polls the
descriptor must call ``readable`` until it says False, as ``WorkerPool.readable`` does).
When that read got less than it asked for, the socket was empty a moment ago: the next
``readable`` then answers from the buffer alone, without a system call. (A frame arriving
in between is not missed: it makes the descriptor readable for the caller's next poll,
poll being level-triggered.)

``FrameStream`` (the local socket; both ends non-blocking). ``send`` writes what the
socket takes and keeps the rest in ``out`` (its owner polls for writability and calls
``flush``), up to a bound past which frames are refused and counted (ZeroMQ's high-water
mark did that); a length over the limit the reader accepts closes the connection
(ZeroMQ's ``MAXMSGSIZE``), as does the end of the stream (``StreamClosed``).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

MAX_FRAME = 1 << 31  # a worker is our own child: this only catches a corrupted stream
CHUNK = 1 << 16  # bytes asked of the socket per read (more when a big frame needs it)
READS_PER_CALL = 16  # reads per ``FrameStream.frames`` call: a flood cannot hold its caller
OUT_LIMIT = 1 << 28  # bytes waiting to be written past which ``FrameStream.send`` refuses
_SMALL = 1 << 16  # frames up to this size are copied behind their header: one sendall
_HEADER = struct.Struct(">I")


class FrameTooLarge(ValueError):
    """A frame's length is over the reader's limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes (limit {limit})")
        self.size = size


class FrameBuffer:
    """Bytes read from a stream, cut into frames of at most ``limit`` bytes."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def pop(self) -> bytes | None:
        """The next whole frame, taken off the buffer; None until one is whole. Raises
        FrameTooLarge (and keeps the buffer as it is) at a length over the limit."""
        buf = self.data
        if len(buf) < 4:
            return None
        (size,) = _HEADER.unpack_from(buf)
        if size > self.limit:
            raise FrameTooLarge(size, self.limit)
        end = 4 + size
        if len(buf) < end:
            return None
        frame = bytes(buf[4:end])
        del buf[:end]
        return frame

    def missing(self) -> int:
        """Bytes still to read before the next frame is whole (its header, at least)."""
        buf = self.data
        if len(buf) < 4:
            return 4 - len(buf)
        return max(4 + _HEADER.unpack_from(buf)[0] - len(buf), 0)

    def whole(self) -> bool:
        """A whole frame is in the buffer (no system call)."""
        buf = self.data
        return len(buf) >= 4 and len(buf) >= 4 + _HEADER.unpack_from(buf)[0]


class FrameSocket:
    """A blocking framed channel (the agent <-> worker socket pair)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._in = FrameBuffer(MAX_FRAME)
        self._emptied = False  # the last read left the socket empty (see the docstring)
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        prefix = _HEADER.pack(len(data))
        with self._send_lock:
            if len(data) <= _SMALL:
                self.sock.sendall(prefix + data)
            else:  # no copy of a big frame
                self.sock.sendall(prefix)
                self.sock.sendall(data)

    def recv(self) -> bytes:
        buf = self._in
        data = buf.data
        while True:
            if len(data) >= 4:  # (else no frame can be whole: no need to ask)
                try:
                    frame = buf.pop()
                except FrameTooLarge as exc:
                    raise EOFError(f"corrupted stream: {exc}") from None
                if frame is not None:
                    return frame
            want = min(max(CHUNK, buf.missing()), 1 << 24)
            chunk = self.sock.recv(want)
            if not chunk:
                raise EOFError("the other end closed the channel")
            data += chunk
            self._emptied = len(chunk) < want

    def buffered(self) -> bool:
        """A whole frame is in the buffer already (no system call)."""
        return self._in.whole()

    def readable(self) -> bool:
        """A frame (or EOF) is waiting, buffered or on the socket; never blocks."""
        data = self._in.data  # (FrameBuffer.whole, inline: this is asked once per result)
        if len(data) >= 4 and len(data) >= 4 + _HEADER.unpack_from(data)[0]:
            return True
        if self._emptied:
            self._emptied = False
            return False
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()


class StreamClosed(EOFError):
    """The other end closed the connection, or it broke the framing (``oversized``)."""

    def __init__(self, text: str, oversized: bool = False) -> None:
        super().__init__(text)
        self.oversized = oversized


class FrameStream:
    """One non-blocking framed connection (the local socket). Not thread-safe: one user
    at a time (the client holds its socket lock, the agent has one thread)."""

    def __init__(self, sock: socket.socket, max_frame: int, identity: bytes = b"") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_frame = max_frame
        self.identity = identity  # (the agent's name for this connection)
        self._in = FrameBuffer(max_frame)
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
                if not buf.data:
                    raise StreamClosed(f"the connection broke: {exc}") from None
                break
            if not chunk:
                if not buf.whole():
                    raise StreamClosed("the other end closed the connection")
                break
            buf.data += chunk
            if len(chunk) < CHUNK:
                break
        out = []
        data = buf.data
        while len(data) >= 4:
            try:
                frame = buf.pop()
            except FrameTooLarge as exc:
                if out:
                    return out
                raise StreamClosed(str(exc), oversized=True) from None
            if frame is None:
                break
            out.append(frame)
        return out

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
