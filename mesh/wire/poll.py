"""The agent loop's one wait: ZeroMQ sockets and plain descriptors in one epoll set.

``zmq.Poller`` (``zmq_poll``) builds its list of items at every call, asks every
ZeroMQ socket for its ``EVENTS`` twice and makes two ``poll`` system calls per wait
(one without waiting first); an agent waits twice per round trip of a call, over a
dozen sockets once it has peers (a DEALER and a monitor each), and in libzmq each
``EVENTS`` costs a system call or two of its own. This poller keeps an epoll set
instead and follows the rule of ``ZMQ_FD``: a ZeroMQ socket's descriptor signals
only news that came after the socket's last operation (a send, a receive, an
``EVENTS``), and never again for input already queued. So before it waits, ``poll``
asks ``EVENTS`` of each ZeroMQ socket that may hold such input: those it found ready
last time (their owner may have left some input unread) and those ``touch``ed since
(the owner sent on them); one with input is ready at once and nothing waits. Every
socket is asked at least every ``FULL_EVERY`` seconds of polling: a safety net for an
operation nobody ``touch``ed. Then it waits in epoll; a ZeroMQ socket whose
descriptor signalled is ready only if ``EVENTS`` then says so (the signal may be for
a command that brought no message). Asking ``EVENTS`` clears the descriptor, so a
level-triggered epoll never spins on it. Plain descriptors (a waker, the workers'
channels) are ordinary level-triggered entries.

The interface is ``zmq.Poller``'s, as far as the agent uses it: ``register(item)``,
``unregister(item)`` (KeyError if unknown) and ``poll(timeout_ms)`` returning
``[(item, POLLIN), ...]`` with the item as registered (a socket, an object with
``fileno()`` or a descriptor number); only input is watched. And ``touch(socket)``:
the owner sent on the socket since the last ``poll``.
"""

from __future__ import annotations

import select
import time
from typing import Any

import zmq

POLLIN = int(zmq.POLLIN)
_EVENTS, _FD = zmq.EVENTS, zmq.FD
FULL_EVERY = 0.25  # seconds: every ZeroMQ socket's EVENTS is asked at least this often


class Poller:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._zmq: dict[int, zmq.Socket] = {}  # descriptor -> ZeroMQ socket
        self._socks: set[zmq.Socket] = set()  # the same sockets
        self._plain: dict[int, Any] = {}  # descriptor -> the item registered
        self._dirty: set[zmq.Socket] = set()  # may hold input no descriptor will signal
        self._full_at = 0.0  # when every socket's EVENTS is asked next

    @staticmethod
    def _fd(item: Any) -> int:
        return item if isinstance(item, int) else item.fileno()

    def register(self, item: Any, flags: int = POLLIN) -> None:
        """Watch ``item`` for input (again: a descriptor number now used by another
        file is registered anew)."""
        if isinstance(item, zmq.Socket):
            fd = item.get(_FD)
            self._zmq[fd] = item
            self._socks.add(item)
            self._dirty.add(item)
        else:
            fd = self._fd(item)
            self._plain[fd] = item
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:
            self._epoll.modify(fd, select.EPOLLIN)

    def modify(self, item: Any, write: bool) -> None:
        """Watch a plain descriptor (registered) for room to write too, or no longer;
        ``poll`` gives it back (with POLLIN, as any ready item) when it has room."""
        mask = select.EPOLLIN | select.EPOLLOUT if write else select.EPOLLIN
        self._epoll.modify(self._fd(item), mask)

    def unregister(self, item: Any) -> None:
        """Stop watching ``item``. Raises KeyError if it is not watched."""
        if isinstance(item, zmq.Socket):
            fd = next((fd for fd, s in self._zmq.items() if s is item), None)
            if fd is None:
                raise KeyError(item)
            del self._zmq[fd]
            self._socks.discard(item)
            self._dirty.discard(item)
        else:
            fd = self._fd(item)
            if fd not in self._plain:
                raise KeyError(item)
            del self._plain[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed already (epoll forgot it then)
            pass

    def touch(self, sock: zmq.Socket) -> None:
        """``sock`` was used (sent on) since the last ``poll``: ask its EVENTS then."""
        self._dirty.add(sock)

    def poll(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        """What has input, waiting up to ``timeout`` milliseconds for something to
        (None or negative: no limit; 0: not at all)."""
        now = time.monotonic()
        if now >= self._full_at:
            self._full_at = now + FULL_EVERY
            check: Any = list(self._zmq.values())
        else:
            check = [s for s in self._dirty if s in self._socks]  # (registered: open)
        self._dirty = set()
        ready = [(s, POLLIN) for s in check if s.get(_EVENTS) & POLLIN]
        if ready or (timeout is not None and timeout <= 0):
            wait = 0.0
        else:
            wait = -1 if timeout is None or timeout < 0 else timeout / 1000
        zmq_socks, plain = self._zmq, self._plain
        for fd, _ in self._epoll.poll(wait):
            sock = zmq_socks.get(fd)
            if sock is not None:
                if sock.get(_EVENTS) & POLLIN and all(s is not sock for s, _ in ready):
                    ready.append((sock, POLLIN))
            else:
                item = plain.get(fd)
                if item is not None:
                    ready.append((item, POLLIN))
        for item, _ in ready:  # (its owner may leave some of its input unread)
            if item in self._socks:
                self._dirty.add(item)
        return ready

    def close(self) -> None:
        self._epoll.close()
