"""A program's connection to the agent's local socket (``mesh.wire.localsock``): a Unix
stream socket, no ZeroMQ.

Why not ZeroMQ here: a ZeroMQ message crosses an I/O thread on each side (the sender's
writes the socket, the receiver's reads it and signals the application thread), four
thread wake-ups per round trip of a call that a plain stream socket does not need. On
a 2-core VM an echo over ZeroMQ ``ipc://`` takes ~100 us, over a Unix stream socket
~15 us. ZeroMQ stays the mesh's transport between devices (and for programs that
reach an agent over TCP); the local socket is, like the agent's channels to its
workers, a pipe between processes of one user on one machine, with the same framing
(``mesh.wire.framing.FrameStream``, non-blocking at both ends).

Here: who may be at the other end (``trusted``: our user or root, by ``SO_PEERCRED``)
and, for a client, ``dial``: a connection to the local socket of the agent serving a
TCP address, if it is ours. The agent's end is ``mesh.agent.localserver``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time

from mesh.errors import DecodeError
from mesh.wire import messages as m
from mesh.wire.framing import FrameStream, StreamClosed
from mesh.wire.localsock import dial_path

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
