"""The agent's REST interface: JSON, COMPSs-compatible endpoints, Prometheus metrics.

    GET  /v1/status, /v1/peers, /v1/tree      what `mesh status|peers|tree --json` print
    POST /v1/calls   {"function": "module:function", "args": [...], "kwargs": {...}} -> 201 {"id"}
    GET  /v1/calls/{id}   {"id", "function", "state": queued|running|delegated|done|failed,
                           "result" | "error": {"type","message","traceback"}, "agent", "seconds"}
    GET  /metrics    Prometheus text format

COMPSs-compatible (``mesh/faces/compss/xmlbodies.py`` parses the XML that COMPSs agent scripts send):

    GET    /COMPSs/test, /COMPSs/resources
    PUT    /COMPSs/startApplication   (lang PYTHON: className = module, methodName = function)
                                       -> the call's id as text/plain (see /v1/calls/{id})
    PUT    /COMPSs/addResources       own name: grow slots; another name with a Port: link it
    PUT    /COMPSs/removeResources    own name: reduce slots lazily
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
worker. Bad input gets 400 with a message; unknown paths 404; other methods 405.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import pickle
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mesh.faces import rest_auth
from mesh.faces.compss import answers as compss
from mesh.faces.metrics import render as render_metrics
from mesh.wire import messages as m

log = logging.getLogger("mesh.rest")

MAX_BODY = 16 * 1024 * 1024
MAX_DRAIN = 64 * 1024  # a refused request's body is read (so its answer arrives) up to this
QUERIES = {"/v1/status": "status", "/v1/peers": "peers"}
RESOURCES = sorted([*QUERIES, "/v1/tree", "/v1/calls", "/v1/calls/{id}", "/metrics", "/COMPSs/test",
                    "/COMPSs/resources", "/COMPSs/startApplication", "/COMPSs/addResources",
                    "/COMPSs/removeResources", "/COMPSs/lostNode", "/COMPSs"])


class _Handler(BaseHTTPRequestHandler):
    server_version = "mesh"
    agent = None  # the agent's handle (mesh.agent.inbox.AgentHandle), set per server class
    guard: rest_auth.RestGuard  # set per server class

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
                return self._json(200, self._tree())
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
        length = self.headers.get("Content-Length")
        if not length or not length.isdigit() or int(length) > compss.MAX_XML_BYTES:
            return self._send(400, b"an XML body with a Content-Length (at most 4 MiB) is required",
                              "text/plain")
        body = self.rfile.read(int(length))
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
        req = compss.parse_start_application(body)
        payload = pickle.dumps((tuple(req.args), {}))
        call = m.Call(os.urandom(12).hex(), f"{req.module}:{req.function}", payload, want_json=True)
        call_id = self.agent.ask("rest-call", arg=call)
        self._send(200, call_id.encode(), "text/plain")

    def _compss_resources_change(self, body: bytes) -> None:
        req = compss.parse_resources(body)
        own = req.name in (self.agent.name, self.agent.interface, self.agent.address)
        if own and req.cpus > 0:
            answer = self.agent.ask("resources", arg=m.Resources(0, req.kind, req.cpus, ""))
        elif not own and req.kind == "add" and req.address:
            answer = self.agent.ask("resources", arg=m.Resources(0, "add", 0, req.address))
        elif own:
            raise compss.CompssRequestError(400, "no computing units to add or remove")
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
            return path
        if refusal.log:
            log.warning("REST refused %s %s from %s: %s (%d refused for %s so far; logged at most "
                        "once a minute per reason)", self.command, path[:80] or "/",
                        self.client_address[0], refusal.message, refusal.count, refusal.reason)
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= MAX_DRAIN:  # (else the connection just closes)
            self.rfile.read(int(length))
        self.close_connection = True
        self._send(refusal.status, json.dumps({"error": refusal.message, "refused": refusal.reason}).encode(),
                   "application/json", refusal.headers)
        return None

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if not length or not length.isdigit():
            return None, "a JSON body with a Content-Length is required"
        if int(length) > MAX_BODY:
            return None, f"body over {MAX_BODY} bytes"
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw), None
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"body is not JSON: {exc}"

    def _tree(self) -> dict:
        from mesh.client.client import Client
        from mesh.faces.treeview import gather

        key = self.agent.key  # (our own agent answers through its handle; the others, as clients)
        return gather(lambda address: Client(address, timeout=2, key=key), self.agent)

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
        return None, f"unknown fields {sorted(unknown)}"
    payload = pickle.dumps((tuple(args), kwargs))
    return m.Call(os.urandom(12).hex(), function, payload, want_json=True), None


class RestServer:
    """REST for an agent on ``host:port``, guarded by ``token`` (``mesh.faces.rest_auth``), which
    it also writes to the agent's token file (removed by ``close``). ``agent``: the agent's
    handle (``Agent.handle()``)."""

    def __init__(self, agent, host: str, port: int, token: str, rest_open: bool = False) -> None:
        handler = type("Handler", (_Handler,), {"agent": agent})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.address = f"{host}:{port}"
        self.guard = handler.guard = rest_auth.RestGuard(
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
        """For the agent's status: address, --rest-open, the token file, refusals by reason."""
        return dict(self.guard.status(), address=self.address, token_file=self.token_file)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.token_file is not None:
            rest_auth.remove_token(self.token_file)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # (no name for this uid)
        return f"uid {os.geteuid()}"
