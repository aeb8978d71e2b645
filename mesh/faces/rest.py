"""The agent's REST interface: JSON, COMPSs-compatible endpoints, Prometheus metrics.

    GET  /v1/status, /v1/peers, /v1/tree      what `mesh status|peers|tree --json` print
    POST /v1/calls   {"function": "module:function", "args": [...], "kwargs": {...}} -> 201 {"id"}
    GET  /v1/calls/{id}   {"id", "function", "state": queued|running|delegated|done|failed,
                           "result" | "error": {"type","message","traceback"}, "agent", "seconds"}
    GET  /metrics    Prometheus text format

COMPSs-compatible (``mesh/faces/compss/xmlbodies.py`` parses the XML that COMPSs agent scripts send):

    GET    /COMPSs/test, /COMPSs/resources
    PUT    /COMPSs/startApplication   (lang PYTHON: className = module, methodName = function)
                                       -> the call's id, a number, as text/plain (see
                                       /v1/calls/{id}); --stop: leave when it ended, after
                                       forwarding the stop to the --forward_to agents
    PUT    /COMPSs/addResources       own name: grow slots, OS/architecture become labels;
                                       another name (or our address, another Port): link it
    PUT    /COMPSs/removeResources    own name: reduce slots lazily, drop those labels
    PUT    /COMPSs/lostNode           drop that member at once, re-place its calls
    DELETE /COMPSs                    graceful leave

Who may use it (``mesh/faces/rest_auth.py``, ``docs/rest.md``): every request must name this
agent in ``Host`` (else 421), carry no foreign ``Origin`` (else 403) and carry
``Authorization: Bearer <token>`` (else 401; ``mesh token`` prints it); requests that
change something must say ``Content-Type: application/json`` (``application/xml`` under
``/COMPSs``; else 415). ``join --rest-open`` lets the ``/COMPSs`` endpoints, only those,
go without the token, for COMPSs' own scripts. These checks come first, before a body is
read. No answer carries CORS headers. With a mesh key REST listens on the agent's
interface and the token is derived from the key; without one it listens on loopback only
and the token is random, written to the agent's private runtime directory.

Requests are served by a standard-library HTTP server in
its own threads and answered by the agent's loop through the agent's handle
(``mesh.agent.inbox.AgentHandle``: ``ask``/``query``, no shared state), which whoever
composes them (``mesh join``) gives the server. Arguments arrive as JSON and are pickled here (pickle.dumps of plain data;
nothing is ever unpickled in the agent); results come back as JSON made by the
worker. Bad input gets 400 with a message (a body that is not JSON, nests too deeply, or
holds a number Python would not read or a float beyond 64 bits, NaN and Infinity
included); unknown paths 404; other methods 405.

Connections (``_Server``): each is served by a thread of its own, at most
``MAX_CONNECTIONS`` at a time, and each read or write on it may wait ``READ_TIMEOUT``
seconds, after which it is closed unanswered (counted: ``rest.aborted.timeout``). So a
client that connects and sends nothing, or stops half way, holds a thread that long at
most. One that sends a byte now and then (a slowloris) holds it longer, but only until
the place is needed: a connection that still waits for its request (it has not sent a
whole head, or it was refused and we read the rest of its body) can be evicted. A new
connection that finds every place taken closes the one that has waited longest
(``aborted.evicted``) and takes its place. So a slowloris, however many connections it
opens, takes places from itself: a client that sends its request at once waits for it
only a moment, never the longest. Only when every place holds a request that passed the
guard and is being answered is the new connection refused: 503 with ``Retry-After``,
counted with the other refusals (``rest.refused.busy``). A client that hangs up before
its answer is written is counted (``aborted.hangup``) and logged at
DEBUG, as every other request is.

``/v1/tree`` asks every live member, so it is served from a document at most a few
seconds old, gathered by one request at a time (``mesh.faces.treeview.TreeCache``).
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import pickle
import re
import socket
import threading
import time
import urllib.request
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mesh.faces import rest_auth, treeview
from mesh.faces.compss import answers as compss
from mesh.faces.metrics import render as render_metrics
from mesh.wire import messages as m

log = logging.getLogger("mesh.rest")
TREE_TIMEOUT = 5.0  # seconds a /v1/tree gather may take (members not answering by then: unreachable)

MAX_BODY = 16 * 1024 * 1024
MAX_DRAIN = 64 * 1024  # a refused request's body is read (so its answer arrives) up to this
MAX_INT_DIGITS = 4300  # longer integers in a body are refused (Python's own int(str) limit)
READ_TIMEOUT = 10.0  # seconds a read or write on a connection may wait before we close it
MAX_CONNECTIONS = 64  # connections served at once (a thread each); see the module docstring
ABORTS = ("hangup", "timeout", "evicted")  # why connections ended without their answer
_DIGITS = re.compile(r"[0-9]+")
QUERIES = {"/v1/status": "status", "/v1/peers": "peers"}
RESOURCES = sorted([*QUERIES, "/v1/tree", "/v1/calls", "/v1/calls/{id}", "/metrics", "/COMPSs/test",
                    "/COMPSs/resources", "/COMPSs/startApplication", "/COMPSs/addResources",
                    "/COMPSs/removeResources", "/COMPSs/lostNode", "/COMPSs"])


class _Handler(BaseHTTPRequestHandler):
    server_version = "mesh"
    agent = None  # the agent's handle (mesh.agent.inbox.AgentHandle), set per server class
    token = ""  # set per server class: its bearer token (forwarded COMPSs stops carry it)
    guard: rest_auth.RestGuard  # set per server class
    tree: treeview.TreeCache  # /v1/tree's document, set per server class
    timeout = READ_TIMEOUT  # (socketserver sets it on the connection: each read and write)
    server: _Server

    # ------------------------------------------------------------------ connections

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()  # (a read or write that times out ends in log_error)
        except ConnectionError as exc:  # the client hung up (or we closed it: evicted)
            self.close_connection = True
            if self.server.aborted(self.connection, "hangup"):
                log.debug("REST: %s hung up before its answer (%s)", self.client_address[0],
                          type(exc).__name__)

    def parse_request(self) -> bool:
        if self.server.evicted(self.connection):  # (what it sent was cut short: nothing to answer)
            self.close_connection = True
            return False
        return super().parse_request()

    def log_error(self, fmt: str, *args) -> None:  # noqa: D102 - http.server's: a refusal, or a time-out
        if any(isinstance(a, TimeoutError) for a in args):  # ("Request timed out: %r", exc)
            self.server.aborted(self.connection, "timeout")
        self.log_message(fmt, *args)

    # ------------------------------------------------------------------ methods

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self._admit()
        if path is None:
            return
        try:
            if path in QUERIES:
                answer = self.agent.ask(QUERIES[path])
                return self._json(200, answer.body)
            if path == "/metrics":
                text = render_metrics(self.agent.query("status"), self.agent.query("peers"))
                return self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
            if path == "/v1/tree":
                return self._json(200, self.tree.get())
            if path == "/COMPSs/test":
                return self._send(200, b"", "text/plain")
            if path == "/COMPSs/resources":
                return self._send(200, json.dumps(self._compss_resources()).encode(), "text/plain")
            if path.startswith("/v1/calls/"):
                doc = self.agent.ask("call-state", arg=path[len("/v1/calls/"):])
                if doc is None:
                    return self._json(404, {"error": "no such call (unknown, or forgotten long ago)"})
                return self._json(200, doc)
        except (TimeoutError, FutureTimeout):  # distinct classes on 3.10
            return self._json(503, {"error": "the agent did not answer in time"})
        if path == "/v1/calls":
            return self._json(405, {"error": "use POST to submit a call"})
        return self._json(404, {"error": f"no such resource {path}", "resources": RESOURCES})

    def do_POST(self) -> None:  # noqa: N802
        path = self._admit()
        if path is None:
            return
        if path != "/v1/calls":
            code = 405 if path in QUERIES or path in ("/metrics", "/v1/tree") else 404
            return self._json(code, {"error": f"cannot POST to {path}", "resources": RESOURCES})
        body, error = self._read_json()
        if error:
            return self._json(400, {"error": error})
        call, error = _call_from_json(body)
        if error:
            return self._json(400, {"error": error})
        try:
            call_id = self.agent.ask("rest-call", arg=call)
        except (TimeoutError, FutureTimeout):  # distinct classes on 3.10
            return self._json(503, {"error": "the agent did not answer in time"})
        return self._json(201, {"id": call_id})

    def do_PUT(self) -> None:  # noqa: N802
        path = self._admit()
        if path is None:
            return
        handler = {"/COMPSs/startApplication": self._compss_start,
                   "/COMPSs/addResources": self._compss_resources_change,
                   "/COMPSs/removeResources": self._compss_resources_change,
                   "/COMPSs/lostNode": self._compss_lost}.get(path)
        if handler is None:
            return self._json(405 if path in QUERIES else 404,
                              {"error": f"cannot PUT to {path}", "resources": RESOURCES})
        length = self._length()
        if length is None or length > compss.MAX_XML_BYTES:
            return self._send(400, b"an XML body with a Content-Length (at most 4 MiB) is required",
                              "text/plain")
        body = self.rfile.read(length)
        try:
            handler(body)
        except compss.CompssRequestError as exc:
            self._send(exc.status, str(exc).encode(), "text/plain")
        except (TimeoutError, FutureTimeout):  # distinct classes on 3.10
            self._send(503, b"the agent did not answer in time", "text/plain")

    def do_DELETE(self) -> None:  # noqa: N802
        path = self._admit()
        if path is None:
            return
        if path == "/COMPSs":
            self._send(200, b"", "text/plain")
            self.agent.request_leave()  # graceful, as SIGTERM
            return
        self._json(405, {"error": "no resource here accepts DELETE", "resources": RESOURCES})

    def do_PATCH(self) -> None:  # noqa: N802
        if self._admit() is not None:
            self._json(405, {"error": "no resource here accepts PATCH", "resources": RESOURCES})

    def do_OPTIONS(self) -> None:  # noqa: N802 - a CORS preflight gets no Access-Control-* headers
        if self._admit() is not None:
            self._send(204, b"", None, (("Allow", "GET, POST, PUT, DELETE"),))

    # ------------------------------------------------------------------ COMPSs

    def _compss_start(self, body: bytes) -> None:
        """The application's id is a number (COMPSs answers a long): the call's id, in
        decimal, also for ``GET /v1/calls/{id}``. With ``--stop`` the agent leaves once the
        application has ended, after telling the ``--forward_to`` agents to stop too."""
        req = compss.parse_start_application(body)
        payload = pickle.dumps((tuple(req.args), {}))
        app_id = str(int.from_bytes(os.urandom(8), "big") >> 1)  # a positive Java long
        call = m.Call(app_id, f"{req.module}:{req.function}", payload, want_json=True)
        call_id = self.agent.ask("rest-call", arg=call)
        if req.stop_after:
            threading.Thread(target=_stop_after, args=(self.agent, call_id, req.forward_to,
                                                       self.token), daemon=True,
                             name="mesh-compss-stop").start()
        self._send(200, call_id.encode(), "text/plain")

    def _compss_resources_change(self, body: bytes) -> None:
        """COMPSs' rule: a resource named as this agent changes its own capabilities
        (slots, and its OS and processor architecture as labels: ``compss.labels_of``);
        any other name, with a ``Port``, is another agent to link. A name that is this
        agent's address with a ``Port`` other than its own is another agent on the same
        device (COMPSs agents there would have names of their own)."""
        req = compss.parse_resources(body)
        agent, port = self.agent, req.port
        own = req.name == agent.name or (
            req.name in (agent.interface, agent.address, "localhost", "127.0.0.1")
            and (port is None or port == int(agent.address.rpartition(":")[2])))
        labels = compss.labels_of(req)
        if own and (req.cpus > 0 or labels):
            answer = agent.ask("resources", arg=m.Resources(0, req.kind, req.cpus, "", labels))
        elif not own and req.kind == "add" and req.address:
            answer = self.agent.ask("resources", arg=m.Resources(0, "add", 0, req.address))
        elif own:
            raise compss.CompssRequestError(400, "no computing units, OS or architecture to add or remove")
        else:
            raise compss.CompssRequestError(
                400, f"{req.name} is not this agent: adding another agent needs its Port; "
                     "removing applies to this agent's own slots (use lostNode to drop a peer)")
        if answer.error:
            raise compss.CompssRequestError(500, answer.error)
        self._send(200, b"", "text/plain")

    def _compss_lost(self, body: bytes) -> None:
        name = compss.parse_lost_node(body)
        answer = self.agent.ask("resources", arg=m.Resources(0, "lost", 0, name))
        if answer.error:
            raise compss.CompssRequestError(500, answer.error)
        self._send(200, b"", "text/plain")

    def _compss_resources(self) -> dict:
        status = self.agent.ask("status").body
        peers = self.agent.ask("peers").body
        me = compss.NodeResources(status["name"], status["cpus"]["total"])
        others = [compss.NodeResources(p["name"], p["cpus"]) for p in peers if p["state"] == "alive"]
        return compss.resources_json(me, others)

    # ------------------------------------------------------------------ helpers

    def _admit(self) -> str | None:
        """The request's path if ``rest_auth`` lets it through; else it is answered here
        (nothing else has looked at it) and None."""
        path = self.path.split("?", 1)[0].rstrip("/")
        refusal = self.guard.check(self.command, path, self.headers, time.monotonic())
        if refusal is None:
            if not self.server.admitted(self.connection):  # (evicted meanwhile: nobody to answer)
                self.close_connection = True
                return None
            return path
        if refusal.log:
            log.warning("REST refused %s %s from %s: %s (%d refused for %s so far; logged at most "
                        "once a minute per reason)", self.command, path[:80] or "/",
                        self.client_address[0], refusal.message, refusal.count, refusal.reason)
        length = self._length()
        if length is not None and length <= MAX_DRAIN:  # (else the connection just closes)
            self.rfile.read(length)
        self.close_connection = True
        self._send(refusal.status, json.dumps({"error": refusal.message, "refused": refusal.reason}).encode(),
                   "application/json", refusal.headers)
        return None

    def _length(self) -> int | None:
        """The request's Content-Length, if it is a number (ASCII digits); one of more than
        18 digits is taken as 10**18, more than any body here may have."""
        text = (self.headers.get("Content-Length") or "").strip()
        if not _DIGITS.fullmatch(text):
            return None
        return int(text) if len(text) <= 18 else 10**18

    def _read_json(self):
        length = self._length()
        if length is None:
            return None, "a JSON body with a Content-Length is required"
        if length > MAX_BODY:
            return None, f"body over {MAX_BODY} bytes"
        return _parse_json(self.rfile.read(length))

    def _json(self, code: int, body) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str | None, headers=()) -> None:
        """The only way answers go out: no Access-Control-* header, ever (no CORS)."""
        self.send_response(code)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)


STOP_POLL = 0.2  # s between looks at whether an application asked to stop has ended


def _stop_after(agent, call_id: str, forward_to: tuple, token: str) -> None:
    """``compss_agent_call_operation --stop [--forward_to=...]``: once the application
    has ended (done or failed), tell each ``forward_to`` agent to stop (``DELETE
    /COMPSs``, with this agent's token: a mesh agent of the same key, or one started
    with ``--rest-open``, accepts it), then leave gracefully. An agent that cannot be
    told is logged and skipped."""
    while True:
        try:
            doc = agent.ask("call-state", arg=call_id)
        except (TimeoutError, FutureTimeout):
            doc = {"state": "pending"}
        if doc is None or doc.get("state") in ("done", "failed"):
            break
        time.sleep(STOP_POLL)
    for target in forward_to:
        url = (target if "://" in target else f"http://{target}").rstrip("/") + "/COMPSs"
        request = urllib.request.Request(url, method="DELETE",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                log.info("COMPSs stop forwarded to %s: %s", target, resp.status)
        except (OSError, ValueError) as exc:
            log.warning("COMPSs stop could not be forwarded to %s: %s", target, exc)
    log.info("the COMPSs application %s ended and asked this agent to stop", call_id)
    agent.request_leave()


class _BadNumber(ValueError):
    """A number in a JSON body that we do not take (its message says why)."""


def _json_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"
        raise _BadNumber(f"{shown} is out of range for a float (64 bits)")
    return value


def _json_constant(name: str):
    raise _BadNumber(f"{name} is not a JSON number")


def _parse_json(raw: bytes) -> tuple[object, str | None]:
    """A request body's JSON value, or None and an error message for the client."""
    try:
        return json.loads(raw, parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_json_constant), None
    except _BadNumber as exc:
        return None, f"body holds a number we do not take: {exc}"
    except RecursionError:  # (the decoder's depth is Python's recursion limit)
        return None, "body is JSON nested too deeply (arrays and objects within each other)"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"body is not JSON: {exc}"


def _call_from_json(body) -> tuple[m.Call | None, str | None]:
    """A Call from ``{"function", "args", "kwargs"}``, or an error message."""
    if not isinstance(body, dict):
        return None, 'expected a JSON object {"function": "module:function", "args": [...], "kwargs": {...}}'
    function, args, kwargs = body.get("function"), body.get("args", []), body.get("kwargs", {})
    if not isinstance(function, str) or function.count(":") != 1 or function.startswith(":") \
            or function.endswith(":") or len(function) > m.MAX_STR:
        return None, '"function" must be "module:function"'
    if not isinstance(args, list):
        return None, '"args" must be a list'
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return None, '"kwargs" must be an object'
    unknown = set(body) - {"function", "args", "kwargs"}
    if unknown:
        return None, f"unknown fields {sorted(unknown)[:10]}{' ...' if len(unknown) > 10 else ''}"
    try:
        payload = pickle.dumps((tuple(args), kwargs))
    except RecursionError:  # (nested less deeply than the JSON decoder allows, more than pickle does)
        return None, '"args" and "kwargs" are nested too deeply'
    return m.Call(os.urandom(12).hex(), function, payload, want_json=True), None


class _Server(ThreadingHTTPServer):
    """``http.server``'s threaded server, with a bound on the connections it serves at once
    and the places they hold (see the module docstring). Its own methods run in the thread
    that accepts (``process_request``) or in the connections' threads."""

    daemon_threads = True
    request_queue_size = 64  # (connections the kernel holds until we accept them)

    def __init__(self, address: tuple[str, int], handler, max_connections: int) -> None:
        self.max_connections = max_connections
        self.guard: rest_auth.RestGuard | None = None  # (set once bound: it needs the port)
        self._lock = threading.Lock()
        self._open: dict[socket.socket, float | None] = {}  # -> since when it waits (None: admitted)
        self._evicted: set[socket.socket] = set()  # (until their threads end)
        self._aborted = dict.fromkeys(ABORTS, 0)
        super().__init__(address, handler)

    def status(self) -> dict:
        with self._lock:
            return {"connections": len(self._open), "max_connections": self.max_connections,
                    "waiting": sum(since is not None for since in self._open.values()),
                    "aborted": dict(self._aborted)}

    def process_request(self, request: socket.socket, client_address) -> None:
        with self._lock:
            if len(self._open) >= self.max_connections:
                waiting = [(since, i, sock) for i, (sock, since) in enumerate(self._open.items())
                           if since is not None]
                if not waiting:
                    self._refuse(request)
                    return
                victim = min(waiting)[2]
                del self._open[victim]
                self._evicted.add(victim)
                self._aborted["evicted"] += 1
                try:
                    victim.shutdown(socket.SHUT_RDWR)  # (its thread's read returns: it ends)
                except OSError:
                    pass
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        """Every place holds a request being answered: 503, written without waiting (a new
        connection's buffer takes it), and closed; its request is not read."""
        refusal = self.guard.busy(self.max_connections, time.monotonic())
        if refusal.log:
            log.warning("REST refused a connection: %s (%d refused for %s so far; logged at most "
                        "once a minute per reason)", refusal.message, refusal.count, refusal.reason)
        body = json.dumps({"error": refusal.message, "refused": refusal.reason}).encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in refusal.headers)
        try:
            request.setblocking(False)
            request.send(f"HTTP/1.0 503 Service Unavailable\r\nServer: {_Handler.server_version}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{head}"
                         f"Connection: close\r\n\r\n".encode() + body)
            while request.recv(1 << 16):  # (what came already: unread, it would make close reset)
                pass
        except OSError:
            pass
        super().shutdown_request(request)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._lock:
            self._open.pop(request, None)
            self._evicted.discard(request)
        super().shutdown_request(request)

    def admitted(self, sock: socket.socket) -> bool:
        """``sock``'s request passed the guard: it is answered, no longer waits (never
        evicted). False: it was evicted already."""
        with self._lock:
            if sock not in self._open:
                return False
            self._open[sock] = None
            return True

    def evicted(self, sock: socket.socket) -> bool:
        with self._lock:
            return sock in self._evicted

    def aborted(self, sock: socket.socket, why: str) -> bool:
        """``sock`` ended without its answer, for ``why`` (one of ABORTS); counted unless it
        was evicted (counted then). True if counted."""
        with self._lock:
            if sock in self._evicted:
                return False
            self._aborted[why] += 1
            return True


class RestServer:
    """REST for an agent on ``host:port``, guarded by ``token`` (``mesh.faces.rest_auth``), which
    it also writes to the agent's token file (removed by ``close``). ``agent``: the agent's
    handle (``Agent.handle()``). ``timeout``: how long a read or write on a connection may
    wait; ``max_connections``: how many are served at once (see the module docstring)."""

    def __init__(self, agent, host: str, port: int, token: str, rest_open: bool = False,
                 timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        handler = type("Handler", (_Handler,), {"agent": agent, "token": token, "timeout": timeout,
                                                "tree": _tree_cache(agent)})
        self.httpd = _Server((host, port), handler, max_connections)
        host, port = self.httpd.server_address[:2]
        self.address = f"{host}:{port}"
        self.guard = self.httpd.guard = handler.guard = rest_auth.RestGuard(
            token, host, port, rest_open, token_hint=f"mesh token --agent {agent.address}")
        self.token_file = None
        try:
            self.token_file = rest_auth.write_token(agent.address, token)
        except rest_auth.TokenFileError as exc:
            log.warning("REST token file not written (%s): `mesh token` will not find this "
                        "agent's token%s", exc, "" if agent.key is not None else
                        ", and without a mesh key nothing else knows it")
        how = ("derived from the mesh key" if agent.key is not None
               else f"random, in {self.token_file or '(no file)'}")
        log.info("REST on http://%s: every request needs Authorization: Bearer <token> (%s; "
                 "`mesh token --agent %s` prints it)", self.address, how, agent.address)
        if rest_open:
            log.warning("--rest-open: the COMPSs endpoints (/COMPSs/*) on http://%s run code "
                        "WITHOUT a token: anyone who can reach %s can run code as %s. (Host, "
                        "Origin and Content-Type are still checked; /v1/* still needs the token.)",
                        self.address, self.address, _user())
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="mesh-rest", daemon=True)
        self._thread.start()
        self._closed = False

    def status(self) -> dict:
        """For the agent's status: address, --rest-open, the token file, refusals by reason,
        connections open now (``waiting``: for their request) and their bound, connections
        that ended unanswered by why."""
        return dict(self.guard.status(), **self.httpd.status(), address=self.address,
                    token_file=self.token_file)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.token_file is not None:
            rest_auth.remove_token(self.token_file)


def _tree_cache(agent) -> treeview.TreeCache:
    """/v1/tree: our agent answers through its handle, the others as clients
    (``mesh.faces.treeview``: at most one gather every ``treeview.FRESH`` seconds, each
    within TREE_TIMEOUT)."""
    def dial(address: str, timeout: float):
        from mesh.client.client import Client

        return Client(address, timeout=timeout, key=agent.key)

    return treeview.TreeCache(lambda: treeview.gather(agent, dial, TREE_TIMEOUT),
                              fresh=treeview.FRESH, bound=2 * TREE_TIMEOUT)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # (no name for this uid)
        return f"uid {os.geteuid()}"
