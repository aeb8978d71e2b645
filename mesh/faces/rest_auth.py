"""Who may drive an agent's REST interface: the bearer token, and the checks every request passes.

REST runs code (``POST /v1/calls``, ``PUT /COMPSs/startApplication``) and changes the
agent (``/COMPSs/addResources``, ``removeResources``, ``lostNode``, ``DELETE /COMPSs``),
so a web page the user opens, a DNS-rebound name, or another user of the machine must
not be able to use it. Every request goes through ``RestGuard.check`` before anything
else looks at it; the first check it fails refuses it, with its own status:

1. ``Host`` must name this agent's REST address: ``<name>:<REST port>`` where the name
   is the address REST listens on or a loopback name (``localhost``, ``127.0.0.1``,
   ``[::1]``); else **421 Misdirected Request**. A DNS-rebound page sends its own name
   (``Host: evil.example``), so it never gets past this. Other names of the device
   (``pi.local``) are refused too: use the IP.
2. ``Origin``, when there is one, must be the request's own origin, ``http://`` plus the
   ``Host`` it sent; else **403** (``Origin: null`` included). A browser sends Origin on
   every cross-origin request that could change something, so a page elsewhere stops here.
3. ``Authorization: Bearer <token>`` (compared in constant time), else **401** with
   ``WWW-Authenticate: Bearer``. Read-only GETs need it too: ``/v1/status``, ``/v1/peers``,
   ``/v1/tree`` and ``/metrics`` tell who is in the mesh and where, ``/v1/calls/{id}``
   what a call returned, and another local user (who can reach loopback and send any
   header) must learn none of it. The only exception is ``join --rest-open``: COMPSs'
   own client scripts send no token, so with it the ``/COMPSs`` endpoints (only those)
   take requests without one. It never turns off the other three checks.
4. A request that can change something (POST, PUT, PATCH, and DELETE with a body) must
   say ``Content-Type: application/json`` (``application/xml`` under ``/COMPSs``;
   parameters such as ``; charset=utf-8`` are fine), else **415**. Neither is a type a
   browser may send cross-origin without asking first (a CORS preflight), and the agent
   answers no preflight with ``Access-Control-*`` headers (it sends none, ever), so the
   browser never sends the request. A body-less DELETE has no type to check; DELETE is
   never sent cross-origin without a preflight either.

One more refusal is not about who asks but about how many: a connection that comes when
the server already answers as many requests as it serves at once is refused with **503**
(``busy``, with ``Retry-After``; ``mesh.faces.rest`` says when). ``RestGuard.busy`` makes
that refusal, so that it is counted and logged as the others are.

Each refusal is counted by reason (``mesh status``: ``rest.refused``) and logged at
WARNING the first time for its reason and then at most once a minute per reason.

The token. With a mesh key it is derived from the key (``MeshKey.rest_token``: HMAC-SHA256
of the fixed label ``mesh rest token v1`` under the key's secret, 40 hex digits), so every
holder of the key computes the same one and nobody else can. Without a key the agent makes
a random one (160 bits) when it starts. Either way it writes it, mode 0600, to
``<runtime dir>/<network namespace>-<host>-<port>.token`` next to its local socket
(``mesh.wire.localsock``: the directory belongs to the agent's user, mode 0700, checked), named
by the agent's comm address so that ``mesh token --agent HOST:PORT`` finds it without
asking, and removes it when it stops. ``mesh token`` reads that file, and only from a
private directory of its own user; without one it derives the token from the mesh key.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
import threading
from dataclasses import dataclass

from mesh.errors import MeshError
from mesh.wire import localsock

REASONS = ("host", "origin", "token", "content_type", "busy")
LOG_EVERY = 60.0  # seconds between two log lines about refusals of one reason
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
CHANGES = ("POST", "PUT", "PATCH")  # methods that always carry something to act on
_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")
_TOKEN = re.compile(r"[0-9a-f]{32,128}")


class TokenFileError(MeshError):
    """A token file could not be written or read, or is not to be trusted; the message says why."""


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # one of REASONS
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    log: bool = False  # this one should be logged (the rate limit allows it)
    count: int = 0  # refusals for this reason so far, this one included


def new_token() -> str:
    """A random per-agent token (160 bits, hex), for an agent without a mesh key."""
    return os.urandom(20).hex()


def is_compss(path: str) -> bool:
    """``path`` (without query, no trailing slash) is one of COMPSs' client endpoints."""
    return path == "/COMPSs" or path.startswith("/COMPSs/")


def _host_port(text: str) -> tuple[str, int] | None:
    match = _HOSTPORT.fullmatch(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), int(match.group(2)) if match.group(2) else 80


def _show(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


class RestGuard:
    """The checks of one agent's REST server (thread-safe: the server's threads share it)."""

    def __init__(self, token: str, host: str, port: int, rest_open: bool = False,
                 token_hint: str = "mesh token") -> None:
        self._token = token.encode()
        self.port = port
        self.host = host
        self.names = frozenset((host.lower(), *LOOPBACK_NAMES))
        self.rest_open = rest_open
        self.token_hint = token_hint  # how to get the token, for the 401's message
        self.refused = dict.fromkeys(REASONS, 0)
        self._logged: dict[str, float] = {}
        self._lock = threading.Lock()

    def status(self) -> dict:
        with self._lock:
            return {"open": self.rest_open, "refused": dict(self.refused)}

    def check(self, method: str, path: str, headers, now: float) -> Refusal | None:
        """None if the request may go on, else why not. ``path``: without query and
        trailing slash; ``headers``: an ``email.message.Message`` (``http.server``'s)."""
        refusal = self._check(method, path, headers)
        return None if refusal is None else self._count(refusal, now)

    def busy(self, limit: int, now: float) -> Refusal:
        """A connection refused because ``limit`` requests are being answered already."""
        return self._count(Refusal(503, "busy", f"the agent is answering {limit} requests already "
                                                "(its limit): try again in a moment",
                                   (("Retry-After", "1"),)), now)

    def _count(self, refusal: Refusal, now: float) -> Refusal:
        with self._lock:
            self.refused[refusal.reason] += 1
            count = self.refused[refusal.reason]
            last = self._logged.get(refusal.reason)
            log = last is None or now - last >= LOG_EVERY
            if log:
                self._logged[refusal.reason] = now
        return Refusal(refusal.status, refusal.reason, refusal.message, refusal.headers, log, count)

    def _check(self, method: str, path: str, headers) -> Refusal | None:
        hosts = headers.get_all("Host") or []
        host = _host_port(hosts[0]) if len(hosts) == 1 else None
        if host is None or host[0] not in self.names or host[1] != self.port:
            given = "none" if not hosts else ", ".join(_show(h) for h in hosts)
            return Refusal(421, "host", f"the Host header must name this agent's REST address, "
                                        f"{self.host}:{self.port} (or localhost, 127.0.0.1, [::1] "
                                        f"with port {self.port}); got {given}")
        origins = headers.get_all("Origin") or []
        if origins and (len(origins) > 1 or not origins[0].startswith("http://")
                        or _host_port(origins[0][len("http://"):]) != host):
            return Refusal(403, "origin", f"cross-origin requests are refused (Origin "
                                          f"{', '.join(_show(o) for o in origins)})")
        if not (self.rest_open and is_compss(path)):
            given = headers.get_all("Authorization") or []
            scheme, _, credential = given[0].strip().partition(" ") if len(given) == 1 else ("", "", "")
            if not (scheme.lower() == "bearer"
                    and hmac.compare_digest(credential.strip().encode(), self._token)):
                error = ', error="invalid_token"' if given else ""
                return Refusal(401, "token",
                               f"{'wrong' if given else 'missing'} bearer token: send "
                               f"Authorization: Bearer <the output of `{self.token_hint}`>",
                               (("WWW-Authenticate", f'Bearer realm="mesh"{error}'),))
        has_body = headers.get("Content-Length", "0").strip() not in ("", "0") \
            or headers.get("Transfer-Encoding") is not None
        if method in CHANGES or (method == "DELETE" and has_body):
            want = "application/xml" if is_compss(path) else "application/json"
            types = headers.get_all("Content-Type") or []
            if len(types) != 1 or types[0].split(";", 1)[0].strip().lower() != want:
                given = "none" if not types else ", ".join(_show(t) for t in types)
                return Refusal(415, "content_type", f"{method} {path or '/'} needs Content-Type: "
                                                    f"{want}; got {given}")
        return None


# ---------------------------------------------------------------------------- the token file


def token_path(address: str, env: dict | None = None) -> str | None:
    """Where the agent serving comm ``address`` (``host:port``) keeps its REST token."""
    return localsock.runtime_path(address, ".token", env)


def write_token(address: str, token: str, env: dict | None = None) -> str:
    """For the agent: write ``token`` (mode 0600) where ``token_path(address)`` says, in a
    private directory (made if need be). Returns the path; raises TokenFileError."""
    path = token_path(address, env)
    if path is None:
        raise TokenFileError(f"no token file for {address!r}")
    directory = os.path.dirname(path)
    if not localsock.make_private_dir(directory):
        raise TokenFileError(f"{directory} is not a directory of this user that only it may "
                             "enter (mode 0700)")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        try:
            os.unlink(tmp)  # (left by a process of this pid that died here)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise TokenFileError(f"cannot write {path}: {exc.strerror}") from None
    return path


def read_token(address: str, env: dict | None = None) -> str:
    """For a client: the token of the agent serving comm ``address``, from its file.
    Raises TokenFileError saying why there is none to trust."""
    path = token_path(address, env)
    if path is None:
        raise TokenFileError(f"{address!r} is not HOST:PORT")
    directory = os.path.dirname(path)
    if not localsock.private_dir(directory):
        raise TokenFileError(f"{directory} is not a directory of this user that only it may "
                             "enter, so no token file there is trusted")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise TokenFileError(f"no token file {path}: no agent serving {address} runs on this "
                             "machine as this user (in this network namespace)") from None
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise TokenFileError(f"{path} is not a regular file of this user with mode 0600; not trusted")
    try:
        with open(path, encoding="ascii") as f:
            token = f.read(256).strip()
    except (OSError, ValueError) as exc:
        raise TokenFileError(f"cannot read {path}: {exc}") from None
    if not _TOKEN.fullmatch(token):
        raise TokenFileError(f"{path} does not hold a token")
    return token


def remove_token(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
