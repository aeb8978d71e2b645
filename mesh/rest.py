"""The agent's REST interface (read-only in this stage): ``GET /v1/status`` and
``GET /v1/peers`` as JSON.

With a mesh key it listens on the agent's interface and every request must carry
``Authorization: Bearer <token>`` (``mesh token`` prints it); without a key it
listens on loopback only. Requests are served by a standard-library HTTP server in
its own threads and answered by the agent's loop through ``Agent.ask`` (no shared
state).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("mesh.rest")

ROUTES = {"/v1/status": "status", "/v1/peers": "peers"}


class _Handler(BaseHTTPRequestHandler):
    server_version = "mesh"
    agent = None  # set per server class
    token: str | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return self._json(401, {"error": "missing or wrong bearer token (see `mesh token`)"})
        what = ROUTES.get(self.path.split("?", 1)[0].rstrip("/"))
        if what is None:
            return self._json(404, {"error": f"no such resource {self.path}", "resources": sorted(ROUTES)})
        try:
            answer = self.agent.ask(what)
        except Exception as exc:
            return self._json(503, {"error": f"agent did not answer: {exc}"})
        if answer.error:
            return self._json(400, {"error": answer.error})
        return self._json(200, answer.body)

    def _json(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)


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
