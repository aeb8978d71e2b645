"""Length-prefixed frames over a stream socket: the agent <-> worker channel.

Four bytes of big-endian length, then the frame. (``multiprocessing.connection``
does the same but costs the agent ~1.7 MB of imports.) ``recv`` raises EOFError
when the other end has closed; ``send`` raises OSError when it is gone.
"""

from __future__ import annotations

import select
import socket
import struct

MAX_FRAME = 1 << 31  # a worker is our own child: this only catches a corrupted stream


class FrameSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(data)))
        self.sock.sendall(data)

    def recv(self) -> bytes:
        (size,) = struct.unpack(">I", self._exactly(4))
        if size > MAX_FRAME:
            raise EOFError(f"corrupted stream: frame of {size} bytes")
        return self._exactly(size)

    def readable(self) -> bool:
        """A frame (or EOF) is waiting; never blocks."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()

    def _exactly(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self.sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise EOFError("the other end closed the channel")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
