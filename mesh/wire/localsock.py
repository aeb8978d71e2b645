"""The agent's local socket: a Unix socket for programs on the same device (where it is).

A program on the agent's own device (``mesh.connect("127.0.0.1:46102")``, the CLI, a
task's nested calls from a worker) reaches the agent through a Unix socket instead of
TCP with CURVE: no encryption, no TCP stack and no ZeroMQ I/O threads on a path that
never leaves the machine (``mesh.wire.localconn``).

Who may use it is decided by the operating system, not by the mesh key: the socket
lives in a directory that belongs to the agent's user and that nobody else may enter
(mode 0700), so only that user (and root) can connect, and they can already read the
mesh key and run code as the agent. The client checks the same directory before it
trusts what answers there (a socket in a directory of another user could be anyone's).

Both sides compute the path from the address the agent serves on TCP, without asking:
``<runtime dir>/<network namespace>-<host>-<port>.sock``. The network namespace's inode
keeps agents in different namespaces of one machine apart (the test harness's hosts
share one file system), and a client that dials an agent in another namespace finds no
file of that name and uses TCP, as it must. ``MESH_LOCAL_SOCKET=0`` turns it off, for
an agent and for a client; ``MESH_RUNTIME_DIR`` names the directory (default
``<tmp>/mesh-<uid>``). The same directory holds the agent's REST token file
(``<...>-<port>.token``, ``mesh.faces.rest_auth``), found the same way; ``runtime_path`` and
``make_private_dir`` serve both.

A client uses it only when the agent's key is its own (``mesh.wire.localconn.dial``
compares key fingerprints in the first answer): the local socket is a faster way to
the same mesh, not a way around a wrong key, which still gets the usual error over TCP.
The socket itself is a plain Unix stream socket with length-prefixed frames, not
ZeroMQ: ``mesh.wire.localconn`` says why.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile

MAX_PATH = 100  # sockaddr_un holds 108 bytes on Linux, 104 on macOS
LOCAL_TAG = b"\xff"  # first byte of the identities the agent gives local clients


def enabled(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("MESH_LOCAL_SOCKET", "1").strip().lower() not in ("0", "false", "no", "off") \
        and hasattr(socket, "AF_UNIX")


def runtime_dir(env: dict | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("MESH_RUNTIME_DIR") or os.path.join(tempfile.gettempdir(), f"mesh-{os.geteuid()}")


def private_dir(path: str) -> bool:
    """``path`` is a real directory (not a link) of this user that nobody else can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:  # (no /proc, or no namespaces: macOS, BSD)
        return 0


def runtime_path(address: str, suffix: str, env: dict | None = None) -> str | None:
    """``<runtime dir>/<network namespace>-<host>-<port><suffix>``: a file of the agent
    serving TCP on ``address`` (``host:port``), or None when ``address`` names none."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    if not host or not port.isdigit() or "/" in host:
        return None
    return os.path.join(runtime_dir(env), f"{_netns()}-{host}-{port}{suffix}")


def path_for(address: str, env: dict | None = None) -> str | None:
    """Where the agent serving TCP on ``address`` (``host:port``) keeps its local
    socket, or None when there can be none (turned off, no Unix sockets, a path too long)."""
    if not enabled(env):
        return None
    path = runtime_path(address, ".sock", env)
    return path if path is not None and len(path.encode()) <= MAX_PATH else None


def make_private_dir(directory: str) -> bool:
    """Make ``directory`` (mode 0700) if it is not there; True if it is then private."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return private_dir(directory)


def bind_path(address: str, env: dict | None = None) -> str | None:
    """For the agent: ``path_for(address)``, its directory made private if it has to be
    made; None (and the agent serves TCP only) when the directory is not private."""
    path = path_for(address, env)
    if path is None:
        return None
    return path if make_private_dir(os.path.dirname(path)) else None


def dial_path(address: str, env: dict | None = None) -> str | None:
    """For a client: the local socket of the agent at ``address``, if one is there in a
    private directory of ours; None: use TCP."""
    path = path_for(address, env)
    if path is None or not private_dir(os.path.dirname(path)):
        return None
    try:
        return path if stat.S_ISSOCK(os.lstat(path).st_mode) else None
    except OSError:
        return None

