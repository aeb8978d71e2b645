"""Length-prefixed frames over a stream socket: the agent <-> worker channel.

Four bytes of big-endian length, then the frame. (``multiprocessing.connection``
does the same but costs the agent ~1.7 MB of imports.) ``recv`` raises EOFError
when the other end has closed; ``send`` raises OSError when it is gone.

Cheap per frame, since every call crosses this channel twice: ``send`` writes the
length and a small frame with one ``sendall`` (one system call), under a lock so
that frames sent from two threads (a worker's result and its ``mesh.program.slot`` messages)
never interleave. ``recv`` reads what the socket holds (up to ``CHUNK`` bytes) into a
buffer and returns one frame from it; the frames read along with it stay buffered
for the next ``recv``, and ``readable`` counts them (a buffered frame does not make
the descriptor readable: whoever polls the descriptor must call ``readable`` until it
says False, as ``WorkerPool.readable`` does). When that read got less than it asked
for, the socket was empty a moment ago: the next ``readable`` then answers from the
buffer alone, without a system call. (A frame arriving in between is not missed: it
makes the descriptor readable for the caller's next poll, poll being level-triggered.)
"""

from __future__ import annotations

import select
import socket
import struct
import threading

MAX_FRAME = 1 << 31  # a worker is our own child: this only catches a corrupted stream
CHUNK = 1 << 16  # bytes asked of the socket per read (more when a big frame needs it)
_SMALL = 1 << 16  # frames up to this size are copied behind their header: one sendall
_HEADER = struct.Struct(">I")


class FrameSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._buf = bytearray()  # bytes read but not yet returned as frames
        self._emptied = False  # the last read left the socket empty (see the docstring)
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        header = _HEADER.pack(len(data))
        with self._send_lock:
            if len(data) <= _SMALL:
                self.sock.sendall(header + data)
            else:  # no copy of a big frame
                self.sock.sendall(header)
                self.sock.sendall(data)

    def recv(self) -> bytes:
        buf = self._buf
        while True:
            need = 4
            if len(buf) >= 4:
                (size,) = _HEADER.unpack_from(buf)
                if size > MAX_FRAME:
                    raise EOFError(f"corrupted stream: frame of {size} bytes")
                need = 4 + size
                if len(buf) >= need:
                    frame = bytes(buf[4:need])
                    del buf[:need]
                    return frame
            want = min(max(CHUNK, need - len(buf)), 1 << 24)
            chunk = self.sock.recv(want)
            if not chunk:
                raise EOFError("the other end closed the channel")
            buf += chunk
            self._emptied = len(chunk) < want

    def buffered(self) -> bool:
        """A whole frame is in the buffer already (no system call)."""
        buf = self._buf
        return len(buf) >= 4 and len(buf) >= 4 + _HEADER.unpack_from(buf)[0]

    def readable(self) -> bool:
        """A frame (or EOF) is waiting, buffered or on the socket; never blocks."""
        buf = self._buf
        if len(buf) >= 4 and len(buf) >= 4 + _HEADER.unpack_from(buf)[0]:
            return True
        if self._emptied:
            self._emptied = False
            return False
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()
