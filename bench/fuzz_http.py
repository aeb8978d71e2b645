"""Hostile HTTP requests for the `fuzz` scenario, what the REST server should answer, and a
raw client that sends them.

`HttpFuzzer.next()` returns a `Request`: raw bytes (request line, headers, body, built by
hand so that anything can be malformed) and how to send them (`full`; `slow`: in pieces
with short pauses; `partial`: only a head of it, then the connection is closed). Methods,
paths, versions, headers (Host, Origin, Content-Type, Authorization, Content-Length and
others, each right, wrong, missing, repeated, malformed or huge) and bodies (call JSON,
mutated JSON, the XML of COMPSs' agent scripts mutated, binary, oversized) are drawn from
one `random.Random`: a seed gives the same requests.

`dry_run` parses a request exactly as the agent's server does (`http.server`'s
`parse_request` and `mesh.faces.rest_auth.RestGuard`), for the expectation (which refusal,
or admitted) and for what is withheld: an admitted request that would make the agent
leave (DELETE /COMPSs), change its slots or link another host (addResources,
removeResources), or run a function other than a few harmless ones (POST /v1/calls,
startApplication) goes with a wrong token instead (`defanged`, counted by why).
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from bench.fuzz_frames import HUGE_INTS
from bench.fuzz_oracle import safe_function
from mesh.faces.compss import answers as compss
from mesh.faces.rest_auth import RestGuard

KINDS = ("good", "method", "path", "version", "host", "origin", "content_type", "token",
         "length", "headers", "json", "xml", "binary", "oversized", "malformed", "slow", "partial")
WEIGHTS = (8, 5, 8, 3, 8, 6, 7, 9, 5, 5, 9, 10, 3, 1, 5, 2, 3)

ENDPOINTS = ("/v1/status", "/v1/peers", "/v1/calls", "/v1/calls/{id}", "/metrics",
             "/COMPSs/test", "/COMPSs/resources", "/COMPSs/startApplication", "/COMPSs/addResources",
             "/COMPSs/removeResources", "/COMPSs/lostNode", "/COMPSs", "/", "/v1", "/v2/status",
             "/compss/test", "/COMPSs/../v1/status", "//v1/status", "/v1/status/", "/v1/calls/../..")
TREE_SHARE = 0.002
PARTIAL_WAIT_S = 0.05  # how long an incomplete request waits for an answer before it hangs up
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "get",
           "PROPFIND", "X" * 300, "", "GET GET", "P\x00ST", "BREW")

START_APP = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n    <className>operator</className>\n'
    b'    <hasResult>false</hasResult>\n    <methodName>add</methodName>\n    <parameters>\n'
    b'      <params paramId="0">\n        <direction>IN</direction>\n        <type>STRING_64_T</type>\n'
    b'        <element paramId="0">\n          <className>java.lang.String</className>\n'
    b'          <value>IzI=</value>\n        </element>\n      </params>\n'
    b'      <params paramId="1">\n        <direction>IN</direction>\n        <type>INT_T</type>\n'
    b'        <element paramId="1">\n          <value>3</value>\n        </element>\n      </params>\n'
    b'    </parameters>\n  </startApplication>')
ADD_RES = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<newResource>\n  <externalResource>\n'
    b'    <name>NAME</name>\n    <description>\n      <processors>\n        <processor>\n'
    b'          <name>MainProcessor</name>\n          <type>CPU</type>\n'
    b'          <computingUnits>4</computingUnits>\n        </processor>\n      </processors>\n'
    b'      <memorySize>-1</memorySize>\n    </description>\n'
    b'    <adaptor>es.bsc.compss.agent.comm.CommAgentAdaptor</adaptor>\n'
    b'    <resourceConf>\n      <Property><Name>Port</Name><Value>46102</Value></Property>\n'
    b'    </resourceConf>\n  </externalResource>\n</newResource>')
REDUCE = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<reduceNode>\n'
    b'  <workerName>NAME</workerName>\n  <resources>\n    <processors>\n      <processor>\n'
    b'        <type>CPU</type>\n        <computingUnits>2</computingUnits>\n      </processor>\n'
    b'    </processors>\n  </resources>\n</reduceNode>')
LOST = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<lostNode>\n  <workerName>NAME</workerName>\n</lostNode>'
CONTENT_TYPES = ("application/json", "application/xml", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/JSON",
                 "application/json, text/plain", "text/xml", "application/xml;", "*/*", "application/json\x00")


@dataclass
class Request:
    kind: str
    data: bytes
    mode: str = "full"  # full | slow | partial
    defanged: str | None = None


@dataclass
class Expect:
    """What the server should do: `parse` fails (its status), or the guard refuses (reason)
    or admits it."""

    status: int | None  # a status http.server answers on its own (bad request line, headers)
    refused: str | None  # rest_auth reason
    method: str = ""
    path: str = ""
    body: bytes = b""
    silent: bool = False  # the server closes without answering (an empty request line)


class _DryRun(BaseHTTPRequestHandler):
    """http.server's request parsing without a socket (what `parse_request` makes of it)."""

    def __init__(self, data: bytes) -> None:  # (no super().__init__: that would serve)
        self.rfile = io.BytesIO(data)
        self.wfile = io.BytesIO()
        self.client_address = ("127.0.0.1", 0)
        self.request_version = "HTTP/0.9"
        self.command = None
        self.close_connection = True
        self.error = None

    def send_error(self, code, message=None, explain=None):  # noqa: D102 - what parse_request calls
        self.error = code

    def log_message(self, *args):  # noqa: D102
        pass


def dry_run(data: bytes, guard: RestGuard) -> Expect:
    handler = _DryRun(data)
    raw = handler.rfile.readline(65537)
    if len(raw) > 65536:
        return Expect(414, None)
    if not raw:
        return Expect(None, None, silent=True)
    handler.raw_requestline = raw
    if not handler.parse_request():
        return Expect(handler.error, None, silent=handler.error is None)
    path = handler.path.split("?", 1)[0].rstrip("/")
    if not hasattr(handler, "do_" + handler.command) and handler.command not in (
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        return Expect(501, None, handler.command, path)
    refusal = guard.check(handler.command, path, handler.headers, time.monotonic())
    length = handler.headers.get("Content-Length", "")
    body = handler.rfile.read(int(length)) if length.isdigit() and int(length) < 1 << 24 else b""
    return Expect(None, None if refusal is None else refusal.reason, handler.command, path, body)


# --------------------------------------------------------------------------- generator


class HttpFuzzer:
    def __init__(self, rng: random.Random, rest_port: int, token: str, agent_name: str,
                 agent_address: str, member_name: str) -> None:
        self.rng = rng
        self.port = rest_port
        self.token = token
        self.agent_name = agent_name
        self.agent_address = agent_address
        self.member_name = member_name
        self.guard = RestGuard(token, "127.0.0.1", rest_port)  # (its counts are not the agent's)
        self.defanged: dict[str, int] = {}

    # ------------------------------------------------------------------ pieces

    def host(self, right: bool = True) -> list[tuple[str, str]]:
        p = self.port
        if right:
            return [("Host", self.rng.choice((f"127.0.0.1:{p}", f"localhost:{p}", f"LOCALHOST:{p}")))]
        r = self.rng.randrange(12)
        values = ("evil.example", f"evil.example:{p}", f"127.0.0.1:{p + 1}", "127.0.0.1", "",
                  f"[::1]:{p}", f"127.0.0.1:{p}@evil", f"127.0.0.1:{p}/x", "h" * 5000, f" 127.0.0.1:{p} ",
                  f"127.0.0.1:{p}\x00", f"127.0.0.1:{'9' * 30}")
        if r == 11:
            return []
        if r == 10:
            return [("Host", f"127.0.0.1:{p}"), ("Host", "evil.example")]
        return [("Host", values[r])]

    def auth(self, right: bool = True) -> list[tuple[str, str]]:
        if right:
            return [("Authorization", self.rng.choice((f"Bearer {self.token}", f"bearer {self.token}",
                                                       f"Bearer  {self.token} ")))]
        values = ("", "Bearer", "Bearer ", f"Bearer {self.token[:-1]}0", f"Basic {self.token}", self.token,
                  f"Bearer {self.token}x", f"Bearer {'a' * 40}", "Bearer " + "f" * 10_000,
                  f"Bearer {self.token.upper()}", f"Bearer\t{self.token}", "Bearer \u00e9")
        r = self.rng.randrange(len(values) + 2)
        if r == len(values):
            return []
        if r == len(values) + 1:
            return [("Authorization", f"Bearer {self.token}"), ("Authorization", f"Bearer {self.token}")]
        return [("Authorization", values[r])]

    def origin(self) -> list[tuple[str, str]]:
        p = self.port
        r = self.rng.randrange(10)
        if r < 6:
            return []
        return [("Origin", self.rng.choice((f"http://127.0.0.1:{p}", "http://evil.example", "null",
                                            f"https://127.0.0.1:{p}", f"http://localhost:{p}",
                                            f"http://127.0.0.1:{p}/", "", "http://" + "a" * 3000)))]

    def endpoint(self) -> str:
        # (/v1/tree asks every live member in turn, 2 s for one that does not answer, as the
        # puppet does not: rare, or it would hold the senders)
        path = "/v1/tree" if self.rng.random() < TREE_SHARE else self.rng.choice(ENDPOINTS)
        if "{id}" in path:
            path = path.replace("{id}", self.rng.choice(("abc", self.rng.randbytes(12).hex(), "%00", "..",
                                                         "x" * 3000, "é")))
        if self.rng.random() < 0.1:
            path += self.rng.choice(("?a=1", "?", "/", "//", "?x=" + "y" * 2000, "#frag", "%2F", ";x"))
        return path

    def json_body(self) -> bytes:
        rng = self.rng
        r = rng.randrange(14)
        good = {"function": "operator:add", "args": [2, 3], "kwargs": {}}
        if r == 0:
            return json.dumps(good).encode()
        if r == 1:
            return b"[" * rng.choice((100, 990, 5000, 100_000)) + b"]" * rng.choice((0, 100_000))
        if r == 2:
            return b'{"a":' * rng.choice((500, 5000, 50_000)) + b"1" + b"}" * 50_000
        if r == 3:
            return json.dumps({"function": rng.choice(("operator:add", "operator:sub", "nosuchmod_fz:f",
                                                       ":", "a:b:c", "", "operator:", ":add", 7, None)),
                               "args": rng.choice(([1, 2], "x", None, [[]] * 3, {"a": 1}, [1] * 5000)),
                               "kwargs": rng.choice(({}, [], {"a": 1}, None, {"": 1}))}).encode()
        if r == 4:
            return json.dumps(dict(good, extra=1)).encode()
        if r == 5:
            return b'{"function": "operator:add", "args": [' + b"9" * rng.choice((4300, 4301, 20_000)) + b', 1]}'
        if r == 6:
            return rng.randbytes(rng.randrange(0, 200))
        if r == 7:
            return b'{"function": "operator:add", "args": [1e999999, NaN, -Infinity]}'
        if r == 8:
            return b'{"function": "\\ud800", "args": []}'
        if r == 9:
            return json.dumps(good).encode()[: rng.randrange(1, 40)]
        if r == 10:
            return b'{"function": "operator:add", "function": "operator:sub", "args": [1, 2]}'
        if r == 11:
            return "{\"function\": \"operator:add\", \"args\": [\"é\"], \"kwargs\": {}}".encode("utf-16")
        if r == 12:
            return json.dumps({"function": "operator:add", "args": [rng.choice(HUGE_INTS[:10]), 1]}).encode()
        return b""

    def xml_body(self) -> tuple[str, bytes]:
        rng = self.rng
        own = rng.choice((self.agent_name, "127.0.0.1", self.agent_address, self.member_name, "127.0.0.2",
                          "nobody", ""))
        path, body = rng.choice((("/COMPSs/startApplication", START_APP), ("/COMPSs/addResources", ADD_RES),
                                 ("/COMPSs/removeResources", REDUCE), ("/COMPSs/lostNode", LOST)))
        body = body.replace(b"NAME", own.encode())
        r = rng.randrange(16)
        b = bytearray(body)
        if r == 0:
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif r == 1:
            b = b[: rng.randrange(len(b))]
        elif r == 2:
            b = bytearray(body.replace(b"<?xml", b'<!DOCTYPE x [<!ENTITY a "' + b"a" * 100 + b'">]><?xml', 1))
        elif r == 3:
            b = bytearray(b"<startApplication>" + b"<a>" * rng.choice((1000, 100_000)) + b"</a>" * 10
                          + b"</startApplication>")
        elif r == 4:
            b = bytearray(body.replace(b"add", b"x" * rng.choice((4097, 100_000)), 1))
        elif r == 5:
            b = bytearray(body.replace(b"<lang>PYTHON</lang>", rng.choice((b"<lang>JAVA</lang>", b"<lang/>",
                                                                           b"<lang><x/></lang>", b""))))
        elif r == 6:
            b = bytearray(body.replace(b">4<", b">" + rng.choice((b"-1", b"0", b"99999999999", b"1e3", b" 4",
                                                                  b"1025", b"1000001")) + b"<"))
        elif r == 7:
            b = bytearray(body.replace(b"IzI=", rng.choice((b"!!", b"====", b"\xff\xfe", b"I" * 10_000,
                                                             base64.b64encode(b"\xff\xfe")))))
        elif r == 8:
            b = bytearray(body.replace(b"INT_T", rng.choice((b"LONG_T", b"FILE_T", b"OBJECT_T", b"ZZZ", b""))))
        elif r == 9:
            params = b"<params><type>INT_T</type><element><value>1</value></element></params>"
            b = bytearray(START_APP.replace(b"<parameters>", b"<parameters>" + params * rng.choice((10, 4097))))
        elif r == 10:
            b = bytearray(b"\xef\xbb\xbf" + bytes(body)) if rng.random() < 0.5 else bytearray(body.decode().encode("utf-16"))
        elif r == 11:
            b = bytearray(body.replace(b"operator", rng.choice((b"os", b"nosuchmod_fz", b"operator.x", b"1x", b"a b",
                                                                 b"subprocess", b"\xc3\xa9"))))
        elif r == 12:
            b = bytearray(body.replace(b"</startApplication>", b"<target/></startApplication>"))
        elif r == 13:
            b = bytearray(body + rng.randbytes(20))
        elif r == 14:
            b = bytearray(body.replace(b"<", b"<x:", 3))
        return path, bytes(b)

    # ------------------------------------------------------------------ requests

    def build(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"",
              version: str = "HTTP/1.1", length: bool = True) -> bytes:
        head = f"{method} {path} {version}".rstrip() if version else f"{method} {path}"
        lines = [head]
        if length and body and not any(k.lower() == "content-length" for k, _ in headers):
            headers = headers + [("Content-Length", str(len(body)))]
        lines += [f"{k}: {v}" for k, v in headers]
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body

    def next(self) -> Request:
        rng = self.rng
        kind = rng.choices(KINDS, WEIGHTS)[0]
        req = getattr(self, "_" + kind)()
        req.kind = kind
        self._defang(req)
        if req.mode == "full" and not complete(req.data):
            req.mode = "partial"  # (the server would wait for the rest: no answer is due)
        return req

    def _base(self, method: str | None = None, path: str | None = None, *, host=True, auth=True,
              ctype: str | None = None, body: bytes = b"", origin=False, extra=()) -> bytes:
        rng = self.rng
        if method is None:
            method = rng.choice(("GET", "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))
        if path is None:
            path = self.endpoint()
        headers = self.host(host) + (self.origin() if origin else []) + self.auth(auth)
        if ctype is None and method in ("POST", "PUT", "PATCH"):
            ctype = "application/xml" if path.startswith("/COMPSs") else "application/json"
        if ctype:
            headers.append(("Content-Type", ctype))
        headers += list(extra)
        rng.shuffle(headers)
        return self.build(method, path, headers, body)

    def _good(self) -> Request:
        rng = self.rng
        r = rng.randrange(4)
        if r == 0:
            return Request("", self._base("GET", rng.choice(("/v1/status", "/v1/peers", "/metrics",
                                                             "/COMPSs/test", "/COMPSs/resources"))))
        if r == 1:
            return Request("", self._base("POST", "/v1/calls", body=self.json_body()))
        if r == 2:
            path, body = self.xml_body()
            return Request("", self._base("PUT", path, body=body))
        return Request("", self._base("GET", f"/v1/calls/{rng.randbytes(12).hex()}"))

    def _method(self) -> Request:
        return Request("", self._base(self.rng.choice(METHODS)))

    def _path(self) -> Request:
        rng = self.rng
        path = rng.choice((self.endpoint(), "/" + "a" * rng.choice((100, 8000, 70_000)), "*",
                           "http://evil.example/v1/status", "v1/status", "/v1/status?" + "&" * 5000,
                           "/\x00", "/%", "/" + "é" * 10, "/v1/calls/" + "../" * 100))
        return Request("", self._base("GET" if rng.random() < 0.7 else None, path))

    def _version(self) -> Request:
        version = self.rng.choice(("HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "", "HTTP/1.1.1", "http/1.1",
                                   "HTTP/9", "HTTP/1.1 extra", "HTTP/" + "1" * 100, "HTTPS/1.1"))
        return Request("", self.build("GET", "/v1/status", self.host() + self.auth(), b"", version))

    def _host(self) -> Request:
        return Request("", self._base(host=False))

    def _origin(self) -> Request:
        return Request("", self._base(origin=True))

    def _content_type(self) -> Request:
        rng = self.rng
        method = rng.choice(("POST", "PUT", "PATCH", "DELETE"))
        path = rng.choice(("/v1/calls", "/COMPSs/startApplication", "/COMPSs/lostNode", "/COMPSs"))
        body = self.json_body() if path == "/v1/calls" else self.xml_body()[1]
        extra = [("Content-Type", "application/json")] if rng.random() < 0.1 else []
        return Request("", self._base(method, path, ctype=rng.choice(CONTENT_TYPES) or "x", body=body,
                                      extra=extra))

    def _token(self) -> Request:
        return Request("", self._base(auth=False, body=self.json_body() if self.rng.random() < 0.3 else b""))

    def _length(self) -> Request:
        rng = self.rng
        body = self.json_body()
        value = rng.choice((str(len(body) + rng.randint(1, 50)), str(max(len(body) - 3, 0)), "-1", "abc",
                            "", "1" * 30, str(1 << 40), " 5", "0x10", "99999999"))
        headers = self.host() + self.auth() + [("Content-Type", "application/json"), ("Content-Length", value)]
        if rng.random() < 0.2:
            headers.append(("Content-Length", str(len(body))))
        if rng.random() < 0.2:
            headers.append(("Transfer-Encoding", "chunked"))
        data = self.build(rng.choice(("POST", "PUT")), rng.choice(("/v1/calls", "/COMPSs/startApplication")),
                          headers, body, length=False)
        return Request("", data, "partial" if value.isdigit() and int(value) > len(body) else "full")

    def _headers(self) -> Request:
        rng = self.rng
        r = rng.randrange(6)
        if r == 0:
            extra = [(f"X-F{i}", "v") for i in range(rng.choice((50, 101, 500)))]
        elif r == 1:
            extra = [("X-Long", "v" * rng.choice((10_000, 70_000)))]
        elif r == 2:
            extra = [("Bad Header", "x"), ("X:Y", "z")]
        elif r == 3:
            extra = [("X-Fold", "a\r\n continued")]
        elif r == 4:
            extra = [("Connection", "keep-alive"), ("Expect", "100-continue")]
        else:
            extra = [("Cookie", "a=" + "b" * 1000), ("Content-Encoding", "gzip")]
        return Request("", self._base(extra=extra, body=self.json_body() if rng.random() < 0.5 else b""))

    def _json(self) -> Request:
        return Request("", self._base("POST", "/v1/calls", body=self.json_body()))

    def _xml(self) -> Request:
        path, body = self.xml_body()
        method = "PUT" if self.rng.random() < 0.9 else "POST"
        return Request("", self._base(method, path, body=body, auth=self.rng.random() < 0.8))

    def _binary(self) -> Request:
        rng = self.rng
        if rng.random() < 0.5:
            return Request("", rng.randbytes(rng.choice((0, 1, 10, 100, 1000, 10_000))))
        return Request("", self._base(rng.choice(("POST", "PUT")), body=rng.randbytes(rng.randrange(1, 5000))))

    def _oversized(self) -> Request:
        rng = self.rng
        r = rng.randrange(3)
        if r == 0:  # a length over the limits, little sent
            headers = self.host() + self.auth() + [("Content-Type", "application/json"),
                                                   ("Content-Length", str(rng.choice((16 * 1024 * 1024 + 1, 4 * 1024 * 1024 + 1, 1 << 31))))]
            return Request("", self.build(rng.choice(("POST", "PUT")), rng.choice(("/v1/calls", "/COMPSs/startApplication")),
                                          headers, b"x" * 1000, length=False), "partial")
        if r == 1:  # an XML body over 4 MiB, sent
            return Request("", self._base("PUT", "/COMPSs/startApplication",
                                          body=START_APP + b" " * (4 * 1024 * 1024)))
        return Request("", self._base("POST", "/v1/calls",  # a 2 MB JSON call
                                      body=json.dumps({"function": "operator:add", "args": [[1] * 500_000, [2]]}).encode()))

    def _malformed(self) -> Request:
        rng = self.rng
        return Request("", rng.choice((b"\r\n\r\n", b"GET\r\n\r\n", b"GET /v1/status\r\n\r\n",
                                       b"GET  /v1/status  HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
                                       b"GET /v1/status HTTP/1.1\n\n", b"GET /v1/status HTTP/1.1\r\nHost\r\n\r\n",
                                       b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
                                       b" " * 100 + b"\r\n", b"GET / HTTP/1.1\r\n" + b"a: b\r\n" * 200 + b"\r\n",
                                       b"\xff" * 70_000 + b"\r\n\r\n")))

    def _slow(self) -> Request:
        return Request("", self._base(body=self.json_body() if self.rng.random() < 0.5 else b""), "slow")

    def _partial(self) -> Request:
        data = self._base(body=self.json_body())
        return Request("", data[: self.rng.randrange(1, max(len(data), 2))], "partial")

    # ------------------------------------------------------------------ withheld

    def _defang(self, req: Request) -> None:
        expect = dry_run(req.data, self.guard)
        if expect.status is not None or expect.refused is not None:
            return
        why = harmful(expect, self.agent_name, self.agent_address)
        if why is None:
            return
        wrong = f"Bearer {'0' * len(self.token)}".encode()
        req.data = req.data.replace(f"Bearer {self.token}".encode(), wrong).replace(
            f"bearer {self.token}".encode(), wrong).replace(f"Bearer  {self.token}".encode(), wrong)
        if dry_run(req.data, self.guard).refused is None:  # (no way to spoil it: not sent at all)
            req.data = b""
        req.defanged = why
        self.defanged[why] = self.defanged.get(why, 0) + 1


_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")


def complete(data: bytes) -> bool:
    """The server has all it reads of this request (a request line, then the headers up to
    the blank line, and as many body bytes as the first Content-Length says), or a request
    line it refuses for its length alone."""
    first = data.find(b"\n")
    if first < 0:
        return len(data) > 65536
    end, sep = data.find(b"\r\n\r\n"), 4
    if end < 0:
        end, sep = data.find(b"\n\n"), 2
    if end < 0:
        return False
    match = _LENGTH.search(data[:end + 2])
    return match is None or int(match.group(1)) <= len(data) - end - sep


def harmful(expect: Expect, agent_name: str, agent_address: str) -> str | None:
    """Why an admitted request may not reach the agent (None: it may)."""
    method, path, body = expect.method, expect.path, expect.body
    if method == "DELETE" and path == "/COMPSs":
        return "leave"
    if method == "PUT" and path in ("/COMPSs/addResources", "/COMPSs/removeResources"):
        try:
            req = compss.parse_resources(body)
        except Exception:  # noqa: BLE001 - the server answers it with an error
            return None
        own = req.name in (agent_name, "127.0.0.1", agent_address)
        if (own and req.cpus > 0) or (not own and req.kind == "add" and req.address):
            return "resources"
        return None
    if method == "PUT" and path == "/COMPSs/startApplication":
        try:
            req = compss.parse_start_application(body)
        except Exception:  # noqa: BLE001
            return None
        return None if safe_function(f"{req.module}:{req.function}") else "function"
    if method == "POST" and path == "/v1/calls":
        try:
            doc = json.loads(body)
        except Exception:  # noqa: BLE001 - (the server's own error, maybe a finding)
            return None
        function = doc.get("function") if isinstance(doc, dict) else None
        if isinstance(function, str) and not safe_function(function):
            return "function"
    return None


# --------------------------------------------------------------------------- client


@dataclass
class Answer:
    status: int | None  # None: no answer (closed, reset, timed out)
    refused: str | None = None  # the "refused" field of a refusal's JSON body
    error: str | None = None  # why there is no answer


def send(address: tuple[str, int], req: Request, timeout: float = 2.0) -> Answer:
    """Send one request on a fresh connection and read the answer (the server closes after
    each), waiting at most `timeout` for it. `partial`: what is sent is incomplete (the
    server waits for the rest): wait PARTIAL_WAIT_S for an answer, then close."""
    if not req.data:
        return Answer(None, error="not sent")
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as exc:
        return Answer(None, error=f"connect: {exc.__class__.__name__}")
    try:
        try:
            if req.mode == "slow":
                data = req.data
                step = max(1, len(data) // 4)
                for i in range(0, len(data), step):
                    sock.sendall(data[i: i + step])
                    time.sleep(0.01)
            else:
                sock.sendall(req.data)
            if req.mode == "partial":
                sock.settimeout(min(PARTIAL_WAIT_S, timeout))
        except OSError as exc:  # (the server answered and closed before taking it all)
            if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                return Answer(None, error=f"send: {exc.__class__.__name__}")
        return _read_answer(sock)
    finally:
        sock.close()


def _read_answer(sock: socket.socket) -> Answer:
    buf = bytearray()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            head, sep, body = bytes(buf).partition(b"\r\n\r\n")
            if sep:
                length = None
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length" and v.strip().isdigit():
                        length = int(v.strip())
                if length is not None and len(body) >= length:
                    break
    except TimeoutError:
        if not buf:
            return Answer(None, error="timeout")
    except OSError as exc:
        if not buf:
            return Answer(None, error=exc.__class__.__name__)
    if not buf:
        return Answer(None, error="closed")
    if not buf.startswith(b"HTTP/"):
        return Answer(None, error="no status line")  # (an HTTP/0.9 answer: the body alone)
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return Answer(None, error="unparsable answer")
    refused = None
    if status in (401, 403, 415, 421) and body.startswith(b"{"):
        try:
            refused = json.loads(body).get("refused")
        except ValueError:
            pass
    return Answer(status, refused)
