"""The REST interface with a real HTTP client against real agents."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


class Rest:
    def __init__(self, address: str, token: str | None) -> None:
        self.base = f"http://{address}"
        self.token = token

    def request(self, method: str, path: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read()

    def json(self, method: str, path: str, body=None, raw=None):
        code, _, data = self.request(method, path, body, raw)
        return code, json.loads(data)

    def outcome(self, call_id: str) -> dict:
        def finished():
            code, doc = self.json("GET", f"/v1/calls/{call_id}")
            assert code == 200, doc
            return doc if doc["state"] in ("done", "failed") else None

        return wait_for(finished, 30, f"call {call_id} to finish")


@pytest.fixture
def rest_pair(agents, mesh_key):
    a = agents.start("r0", "--rest-port", "0", cpus=1)
    b = agents.start("r1", "--peer", a.comm, cpus=1)
    return a, b, Rest(a.state["rest"], mesh_key.rest_token())


def test_calls_status_peers_tree(rest_pair):
    a, b, rest = rest_pair
    code, body = rest.json("POST", "/v1/calls", {"function": "operator:add", "args": [2, 3]})
    assert code == 201, body
    doc = rest.outcome(body["id"])
    assert doc["state"] == "done" and doc["result"] == 5 and doc["agent"] == "r0"

    code, body = rest.json("POST", "/v1/calls", {"function": "builtins:sorted", "args": [[3, 1, 2]],
                                                 "kwargs": {"reverse": True}})
    assert rest.outcome(body["id"])["result"] == [3, 2, 1]

    code, body = rest.json("POST", "/v1/calls", {"function": "operator:truediv", "args": [1, 0]})
    doc = rest.outcome(body["id"])
    assert doc["state"] == "failed" and doc["error"]["type"] == "ZeroDivisionError"
    assert "Traceback" in doc["error"]["traceback"]

    # a busy agent hands REST calls to its peer too (once it knows the peer)
    wait_for(lambda: rest.json("GET", "/v1/status")[1]["peers_alive"] == 1, 10, "r0 to know r1")
    ids = [rest.json("POST", "/v1/calls", {"function": "mesh.demo_tasks:where", "args": [i, 0.5]})[1]["id"]
           for i in range(4)]
    ran_on = {rest.outcome(i)["result"]["agent"] for i in ids}
    assert ran_on == {"r0", "r1"}

    code, status = rest.json("GET", "/v1/status")
    assert code == 200 and status["name"] == "r0" and status["done"] >= 3
    wait_for(lambda: [p["name"] for p in rest.json("GET", "/v1/peers")[1]] == ["r1"], 10, "peers")
    code, tree = rest.json("GET", "/v1/tree")
    assert code == 200 and {n["name"] for n in tree["nodes"]} == {"r0", "r1"}


def test_bad_requests_get_clear_errors(rest_pair):
    a, b, rest = rest_pair
    for body in ({"args": [1]}, {"function": "nocolon"}, {"function": "a:b", "args": "x"},
                 {"function": "a:b", "kwargs": [1]}, {"function": "a:b", "extra": 1}, [1, 2], "text"):
        code, doc = rest.json("POST", "/v1/calls", body)
        assert code == 400 and doc["error"], body
    code, doc = rest.json("POST", "/v1/calls", raw=b"{not json")
    assert code == 400 and "JSON" in doc["error"]
    assert rest.json("GET", "/v1/calls/nosuchcall")[0] == 404
    assert rest.json("GET", "/v1/nothing")[0] == 404
    assert rest.json("PUT", "/v1/status", {})[0] == 405
    assert rest.json("GET", "/v1/calls")[0] == 405
    code, doc = rest.json("POST", "/v1/calls", {"function": "no_such_module_q:f"})
    assert rest.outcome(doc["id"])["error"]["type"] == "ModuleNotFoundError"
    unauth = Rest(a.state["rest"], "wrong")
    assert unauth.json("GET", "/v1/status")[0] == 401
    assert a.alive()


def test_metrics_parse_as_prometheus_text(rest_pair):
    parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is in the test extra")
    a, b, rest = rest_pair
    code, body = rest.json("POST", "/v1/calls", {"function": "operator:add", "args": [1, 1]})
    rest.outcome(body["id"])
    wait_for(lambda: rest.json("GET", "/v1/status")[1]["peers_alive"] == 1, 10, "the peer")
    assert Rest(a.state["rest"], "wrong").json("GET", "/metrics")[0] == 401
    code, ctype, data = rest.request("GET", "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in parser.text_string_to_metric_families(data.decode())}
    assert {"mesh_slots", "mesh_tasks", "mesh_peers", "mesh_peer_rtt_seconds", "mesh_bytes",
            "mesh_dropped_frames", "mesh_local_health"} <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("mesh_tasks_total", (("agent", "r0"), ("state", "done")))] >= 1
    assert samples[("mesh_peers", (("agent", "r0"), ("state", "alive")))] == 1
    assert samples[("mesh_bytes_total", (("agent", "r0"), ("direction", "in")))] > 0
    assert samples[("mesh_rest_refused_total", (("agent", "r0"), ("reason", "token")))] == 1
    assert samples[("mesh_rest_refused_total", (("agent", "r0"), ("reason", "host")))] == 0
