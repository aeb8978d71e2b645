"""The agent's REST interface (JSON; COMPSs-compatible endpoints come with the user-interface issue).

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

With a mesh key it listens on the agent's interface and every request must carry
``Authorization: Bearer <token>`` (``mesh token`` prints it); without a key it
listens on loopback only. Requests are served by a standard-library HTTP server in
its own threads and answered by the agent's loop through ``Agent.ask`` (no shared
state). Arguments arrive as JSON and are pickled here (pickle.dumps of plain data;
nothing is ever unpickled in the agent); results come back as JSON made by the
worker. Bad input gets 400 with a message; unknown paths 404; other methods 405.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import pickle
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mesh.faces.compss import answers as compss
from mesh.wire import messages as m

log = logging.getLogger("mesh.rest")

MAX_BODY = 16 * 1024 * 1024
QUERIES = {"/v1/status": "status", "/v1/peers": "peers"}
RESOURCES = sorted([*QUERIES, "/v1/tree", "/v1/calls", "/v1/calls/{id}", "/metrics", "/COMPSs/test",
                    "/COMPSs/resources", "/COMPSs/startApplication", "/COMPSs/addResources",
                    "/COMPSs/removeResources", "/COMPSs/lostNode", "/COMPSs"])


class _Handler(BaseHTTPRequestHandler):
    server_version = "mesh"
    agent = None  # set per server class
    token: str | None = None

    # ------------------------------------------------------------------ methods

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path in QUERIES:
                answer = self.agent.ask(QUERIES[path])
                return self._json(200, answer.body)
            if path == "/metrics":
                answer = self.agent.ask("metrics")
                return self._send(200, answer.body.encode(), "text/plain; version=0.0.4; charset=utf-8")
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
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0].rstrip("/")
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
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0].rstrip("/")
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
        if not self._authorised():
            return
        if self.path.split("?", 1)[0].rstrip("/") == "/COMPSs":
            self._send(200, b"", "text/plain")
            self.agent.request_leave()  # graceful, as SIGTERM
            return
        self._json(405, {"error": "no resource here accepts DELETE", "resources": RESOURCES})

    def do_PATCH(self) -> None:  # noqa: N802
        if self._authorised():
            self._json(405, {"error": "no resource here accepts PATCH", "resources": RESOURCES})

    # ------------------------------------------------------------------ COMPSs

    def _compss_start(self, body: bytes) -> None:
        req = compss.parse_start_application(body)
        payload = pickle.dumps((tuple(req.args), {}))
        call = m.Call(os.urandom(12).hex(), f"{req.module}:{req.function}", payload, want_json=True)
        call_id = self.agent.ask("rest-call", arg=call)
        self._send(200, call_id.encode(), "text/plain")

    def _compss_resources_change(self, body: bytes) -> None:
        req = compss.parse_resources(body)
        own = req.name in (self.agent.config.name, self.agent.config.interface, self.agent.address)
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

    def _authorised(self) -> bool:
        if self.token is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return True
        self._drain()
        self._json(401, {"error": "missing or wrong bearer token (see `mesh token`)"})
        return False

    def _drain(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))

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

        key = self.agent.config.key
        with Client(self.agent.address, timeout=5, key=key) as client:
            return gather(lambda address: Client(address, timeout=2, key=key), client)

    def _json(self, code: int, body) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
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
    def __init__(self, agent, host: str, port: int, token: str | None = None) -> None:
        handler = type("Handler", (_Handler,), {"agent": agent, "token": token})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.address = f"{host}:{port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="mesh-rest", daemon=True)
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
