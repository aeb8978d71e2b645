"""The agent's end of its local socket (``mesh.wire.localsock``): a listening Unix stream
socket and its connections (``mesh.wire.framing.FrameStream``), by identity.

A program on this device connects here instead of to the agent's TCP port
(``mesh.wire.localconn`` says why); only processes of our user (or root) are kept
(``trusted``). Each connection gets an identity that starts with ``LOCAL_TAG`` and
carries a number never given twice, so that the transport's one ``reply`` serves both
ROUTER connections and these, and a late reply to a closed connection goes nowhere,
never to a new one. When accepting fails (out of descriptors) the rest wait in the
listen queue and the failure is counted (``starved``; the transport stops watching the
listener for a while).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time

from mesh.wire.framing import FrameStream
from mesh.wire.localconn import trusted
from mesh.wire.localsock import LOCAL_TAG

_NUMBER = struct.Struct(">I")  # a connection's number, in its identity


class LocalServer:
    """A listening Unix socket and its connections, by identity."""

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
                                 LOCAL_TAG + _NUMBER.pack(next(self._ids) & 0xFFFFFFFF))
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
