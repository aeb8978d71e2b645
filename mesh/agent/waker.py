"""A self-pipe that lets other threads wake a poll loop (``zmq.Poller`` polls its fd)."""

from __future__ import annotations

import socket


class Waker:
    """Lets other threads (mDNS, signals, REST) wake the poll loop."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        try:
            self._w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or closing

    def drain(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
