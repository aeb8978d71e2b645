"""The REST server's connections and bodies, over real sockets, against an agent in this
process (its REST server made here, with a short time-out and a small bound): clients
that send nothing or half a request, slowloris at the bound, hang-ups, and bodies with
numbers or nesting that Python will not take."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from mesh.agent.agent import Agent, AgentConfig
from mesh.client.client import Client
from mesh.faces import rest
from mesh.faces.rest import RestServer
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def agent(mesh_key):
    """An agent in this process, its loop in a thread (REST servers are made per test)."""
    agent = Agent(AgentConfig(name="restconn", comm_port=0, mdns=False, cpus=1, key=mesh_key,
                              leave_grace=1.0))
    agent.start()
    loop = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    loop.start()
    yield agent
    agent.request_leave()
    loop.join(15)


@pytest.fixture(scope="module")
def server(agent, mesh_key):
    """A REST server as ``mesh join`` makes it (the bodies' tests share it)."""
    server = RestServer(agent.handle(), "127.0.0.1", 0, mesh_key.rest_token())
    yield server
    server.close()


@pytest.fixture
def serve(agent, mesh_key):
    servers = []

    def make(**kwargs) -> RestServer:
        server = RestServer(agent.handle(), "127.0.0.1", 0, mesh_key.rest_token(), **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def connect(server: RestServer) -> socket.socket:
    host, _, port = server.address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


def head(server: RestServer, method: str = "GET", path: str = "/v1/status", token: str | None = None,
         length: str | None = None, content_type: str = "application/json") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {server.address}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read an answer to its end (the server closes after each): status, headers, body."""
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:  # (closed with some of what we sent unread: after its answer)
        pass
    sock.close()
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def ask(server: RestServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    sock = connect(server)
    sock.sendall(data)
    return answer(sock)


def post(server: RestServer, token: str, body: bytes, path: str = "/v1/calls",
         method: str = "POST", content_type: str = "application/json") -> tuple[int, bytes]:
    status, _, text = ask(server, head(server, method, path, token, str(len(body)), content_type) + body)
    return status, text


# ---------------------------------------------------------------------------- connections


def test_a_connection_that_sends_nothing_or_half_a_request_is_closed_after_the_timeout(serve, mesh_key, capfd):
    server = serve(timeout=0.5)
    silent, half = connect(server), connect(server)
    half.sendall(b"GET /v1/status HTTP/1.1\r\nHost: ")
    for sock in (silent, half):
        assert sock.recv(1024) == b"", "closed by the agent, unanswered"
        sock.close()
    wait_for(lambda: server.status()["aborted"]["timeout"] == 2 and server.status()["connections"] == 0,
             10, "both to be counted and gone")
    assert ask(server, head(server, token=mesh_key.rest_token()))[0] == 200
    assert server.status()["refused"]["token"] == 0  # (the half request was never taken for one)
    assert "Traceback" not in capfd.readouterr().err


def test_a_slowloris_at_the_bound_takes_places_only_from_itself(serve, agent, mesh_key, capfd):
    """Every place held by connections that never finish their request: each new request
    closes the one that has waited longest and is answered; the agent answers on."""
    server = serve(timeout=30, max_connections=4)
    token = mesh_key.rest_token()
    slow = []

    def fill() -> None:
        while len([s for s in slow if s.fileno() != -1]) < 4:
            sock = connect(server)
            sock.sendall(b"GET /v1/status HTTP/1.1\r\nHo")  # (and never more)
            slow.append(sock)
            wait_for(lambda: server.status()["waiting"] == len([s for s in slow if s.fileno() != -1]),
                     10, "the agent to take the connection")

    for evicted in range(1, 4):
        fill()
        assert server.status()["connections"] == 4
        status, _, body = ask(server, head(server, token=token))
        assert status == 200 and json.loads(body)["name"] == "restconn"
        oldest = next(s for s in slow if s.fileno() != -1)
        assert oldest.recv(1024) == b"", "the slowloris that waited longest is closed"
        oldest.close()
        assert server.status()["aborted"]["evicted"] == evicted
    with Client(agent.address, key=mesh_key) as client:
        assert client.query("status")["name"] == "restconn"
    assert server.status()["refused"]["busy"] == 0
    for sock in slow:
        sock.close()
    wait_for(lambda: server.status()["connections"] == 0, 10, "the slowloris connections to end")
    assert "Traceback" not in capfd.readouterr().err


def test_at_the_bound_with_every_request_being_answered_a_new_one_gets_503(serve, mesh_key, capfd):
    server = serve(timeout=30, max_connections=2)
    token = mesh_key.rest_token()
    stuck = []
    for _ in range(2):  # admitted, then never the whole body: answered, so not evicted
        sock = connect(server)
        sock.sendall(head(server, "POST", "/v1/calls", token, "100") + b'{"function": ')
        stuck.append(sock)
    wait_for(lambda: server.status()["connections"] == 2 and server.status()["waiting"] == 0, 10,
             "both to be admitted")
    status, headers, body = ask(server, head(server, token=token))
    assert status == 503 and headers["Retry-After"] == "1"
    assert json.loads(body)["refused"] == "busy" and "try again" in json.loads(body)["error"]
    assert server.status()["refused"]["busy"] == 1 and server.status()["aborted"]["evicted"] == 0
    for sock in stuck:
        sock.close()  # (their bodies end short: 400, to nobody)
    wait_for(lambda: server.status()["connections"] == 0, 10, "the stuck requests to end")
    assert ask(server, head(server, token=token))[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_hangs_up_is_counted_and_leaves_no_traceback(serve, mesh_key, capfd, caplog):
    server = serve(timeout=30)
    cut = connect(server)
    cut.sendall(b"GET /v1/status HTTP/1.1\r\nHost: ")  # (half a head: the agent reads on)
    wait_for(lambda: server.status()["waiting"] == 1, 10, "the agent to take the connection")
    cut.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cut.close()  # a reset
    for _ in range(10):  # whole requests, the connection reset at once (the answer may find it gone)
        sock = connect(server)
        sock.sendall(head(server, token=mesh_key.rest_token()))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    wait_for(lambda: server.status()["connections"] == 0 and server.status()["aborted"]["hangup"] >= 1,
             10, "the hang-ups to be counted")
    assert ask(server, head(server, token=mesh_key.rest_token()))[0] == 200
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.name == "mesh.rest" and r.levelname != "DEBUG"]


def test_connections_and_aborts_are_in_the_status_and_the_metrics(serve, agent, mesh_key):
    server = serve(timeout=0.5)
    agent.attach("rest", server)
    try:
        sock = connect(server)
        assert sock.recv(1024) == b""  # (timed out)
        sock.close()
        token = mesh_key.rest_token()
        wait_for(lambda: json.loads(ask(server, head(server, token=token))[2])["rest"]["aborted"]["timeout"] == 1,
                 10, "the time-out in /v1/status")
        status, _, text = ask(server, head(server, path="/metrics", token=token))
    finally:
        agent.faces.pop("rest")
    assert status == 200
    lines = text.decode().splitlines()
    assert 'mesh_rest_aborted_total{agent="restconn",reason="timeout"} 1.0' in lines
    assert 'mesh_rest_refused_total{agent="restconn",reason="busy"} 0.0' in lines
    assert any(line.startswith('mesh_rest_connections{agent="restconn"} ') for line in lines)


# ---------------------------------------------------------------------------- bodies


HOSTILE = {  # body: what the 400's message says
    "arrays nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "objects nested 100,000 deep": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "an integer of 5,000 digits": (b'{"function": "operator:add", "args": [' + b"9" * 5000 + b", 1]}",
                                   "an integer of 5000 digits (at most 4300)"),
    "a negative one": (b'{"function": "operator:add", "args": [-' + b"9" * 5000 + b", 1]}", "5000 digits"),
    "a float out of range": (b'{"function": "operator:add", "args": [1e999, 1]}', "1e999 is out of range"),
    "an exponent of 5,000 digits": (b'{"function": "operator:add", "args": [1e' + b"9" * 5000 + b", 1]}",
                                    "out of range for a float"),
    "NaN": (b'{"function": "operator:add", "args": [NaN, 1]}', "NaN is not a JSON number"),
    "-Infinity": (b'{"function": "operator:add", "args": [1], "kwargs": {"b": -Infinity}}',
                  "-Infinity is not a JSON number"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_body_python_will_not_take_gets_a_400_that_says_why(server, mesh_key, capfd, name):
    body, says = HOSTILE[name]
    status, text = post(server, mesh_key.rest_token(), body)
    assert status == 400 and says in json.loads(text)["error"], text[:300]
    assert post(server, mesh_key.rest_token(), b'{"function": "operator:add", "args": [4300, 1e308]}')[0] == 201
    assert "Traceback" not in capfd.readouterr().err


def test_args_nested_deeper_than_pickle_goes_are_refused():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    call, error = rest._call_from_json({"function": "operator:add", "args": [deep]})
    assert call is None and error == '"args" and "kwargs" are nested too deeply'


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000, "-1", "1e3", ""])
def test_a_content_length_that_is_no_number_of_bytes_gets_a_400(server, mesh_key, capfd, length):
    """("²" is a digit to str.isdigit, not to int(); int() will not read 5,000 digits.)"""
    token = mesh_key.rest_token()
    status, _, text = ask(server, head(server, "POST", "/v1/calls", token, length) + b"{}")
    error = json.loads(text)["error"]
    assert status == 400 and ("Content-Length is required" in error or "body over" in error), error
    status, _, text = ask(server, head(server, "PUT", "/COMPSs/startApplication", token, length,
                                       "application/xml") + b"<a/>")
    assert status == 400 and b"Content-Length" in text
    status, _, _ = ask(server, head(server, "POST", "/v1/calls", None, length) + b"{}")  # refused first
    assert status == 401
    assert "Traceback" not in capfd.readouterr().err
