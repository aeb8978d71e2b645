"""The COMPSs-compatible REST endpoints against a real agent, with byte-for-byte the
XML bodies that the COMPSs agent scripts send (fixtures in tests/compss_helpers.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from http.client import HTTPConnection

import pytest

from tests.compss_helpers import (
    ADD_RESOURCES_PEER,
    ADD_RESOURCES_SELF,
    CALL_JAVA_DEFAULT,
    CALL_PYTHON_ADD,
    CALL_PYTHON_UNICODE,
    LOST_NODE,
    REDUCE_RESOURCES,
    b64,
    element,
    param,
    start,
)
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


def http(rest: str, token: str, method: str, path: str, body: bytes | None = None):
    req = urllib.request.Request(f"http://{rest}{path}", data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/xml")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def status(agent, env: dict | None = None) -> dict:
    return json.loads(run_cli("status", "--agent", agent.comm, "--json", env=env).stdout)


def curl(rest: str, method: str, path: str, body: bytes | None = None, host: str | None = None,
         content_type: str = "application/xml", extra=()):
    """A request as the COMPSs scripts send it: ``curl -s -XPUT http://HOST:PORT/COMPSs/...
    -H 'content-type: application/xml' -d "$xml"``, i.e. exactly these headers (recorded
    from curl 7.88) and no token."""
    address, _, port = rest.rpartition(":")
    conn = HTTPConnection(address, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or rest)
        conn.putheader("User-Agent", "curl/7.88.1")
        conn.putheader("Accept", "*/*")
        if body is not None:
            conn.putheader("content-type", content_type)
            conn.putheader("Content-Length", str(len(body)))
        for name, value in extra:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_compss_scripts_get_401_without_rest_open(agents):
    a = agents.start("n0", "--rest-port", "0", cpus=1)
    rest = a.state["rest"]
    for method, path, body in (("PUT", "/COMPSs/startApplication", CALL_PYTHON_ADD),
                               ("PUT", "/COMPSs/addResources", ADD_RESOURCES_SELF),
                               ("PUT", "/COMPSs/removeResources", REDUCE_RESOURCES),
                               ("PUT", "/COMPSs/lostNode", LOST_NODE),
                               ("GET", "/COMPSs/test", None), ("DELETE", "/COMPSs", None)):
        code, headers, data = curl(rest, method, path, body)
        assert code == 401, (path, data)
        assert headers["WWW-Authenticate"].startswith("Bearer"), path
    body = status(a)
    assert body["done"] == 0 and body["cpus"]["total"] == 1 and a.alive()
    assert body["rest"]["open"] is False and body["rest"]["refused"]["token"] == 6
    assert "--rest-open" not in a.log()


def test_compss_scripts_drive_an_agent_started_with_rest_open(agents, tmp_path):
    nokey = {"MESH_KEY_FILE": "", "XDG_CONFIG_HOME": str(tmp_path)}  # as COMPSs users start it
    a = agents.start("o0", "--rest-port", "0", "--rest-open", cpus=1, env=nokey)
    rest = a.state["rest"]
    assert "anyone who can reach" in a.log() and "can run code as" in a.log()
    assert "OPEN: /COMPSs/* without a token" in run_cli("status", "--agent", a.comm, env=nokey).stdout

    assert curl(rest, "GET", "/COMPSs/test")[0] == 200
    code, _, data = curl(rest, "PUT", "/COMPSs/startApplication", CALL_PYTHON_ADD)
    assert code == 200
    token = run_cli("token", "--agent", a.comm, env=nokey).stdout.strip()  # (to read the result)

    def finished():
        code, _, doc = curl(rest, "GET", f"/v1/calls/{data.decode()}", extra=[("Authorization", f"Bearer {token}")])
        doc = json.loads(doc)
        return doc if doc["state"] in ("done", "failed") else None

    assert wait_for(finished, 20, "the COMPSs call to finish")["result"] == "23"
    assert curl(rest, "PUT", "/COMPSs/addResources", ADD_RESOURCES_SELF)[0] == 200
    assert status(a, nokey)["cpus"]["total"] == 5
    assert curl(rest, "PUT", "/COMPSs/removeResources", REDUCE_RESOURCES)[0] == 200
    assert status(a, nokey)["cpus"]["total"] == 3
    code, _, data = curl(rest, "GET", "/COMPSs/resources")
    assert code == 200 and [r["name"] for r in json.loads(data)["resources"]] == ["o0"]

    # --rest-open never lifts the other checks, nor the token of /v1/*
    assert curl(rest, "PUT", "/COMPSs/startApplication", CALL_PYTHON_ADD, host="evil.example")[0] == 421
    assert curl(rest, "PUT", "/COMPSs/startApplication", CALL_PYTHON_ADD, content_type="text/plain")[0] == 415
    assert curl(rest, "PUT", "/COMPSs/addResources", ADD_RESOURCES_SELF,
                extra=[("Origin", "http://evil.example")])[0] == 403
    assert curl(rest, "POST", "/v1/calls", json.dumps({"function": "operator:add", "args": [1, 2]}).encode(),
                content_type="application/json")[0] == 401
    body = status(a, nokey)
    assert body["done"] == 1 and body["cpus"]["total"] == 3
    assert body["rest"]["open"] is True
    assert body["rest"]["refused"] == {"host": 1, "origin": 1, "token": 1, "content_type": 1, "busy": 0}

    assert curl(rest, "DELETE", "/COMPSs")[0] == 200  # a graceful leave, as the scripts ask it
    assert a.proc.wait(20) == 0


def test_compss_scripts_drive_a_mesh_agent(agents, mesh_key):
    token = mesh_key.rest_token()
    a = agents.start("c0", "--rest-port", "0", cpus=1)
    rest = a.state["rest"]
    b = agents.start("c1", cpus=1)  # not linked yet: addResources links it

    assert http(rest, token, "GET", "/COMPSs/test")[0] == 200
    code, body = http(rest, token, "PUT", "/COMPSs/startApplication", CALL_PYTHON_ADD)
    assert code == 200
    call_id = body.decode()

    def outcome(cid):
        def finished():
            code, data = http(rest, token, "GET", f"/v1/calls/{cid}")
            doc = json.loads(data)
            return doc if doc["state"] in ("done", "failed") else None
        return wait_for(finished, 20, "the COMPSs call to finish")

    assert outcome(call_id)["result"] == "23"  # COMPSs passes the arguments as strings
    code, body = http(rest, token, "PUT", "/COMPSs/startApplication", CALL_PYTHON_UNICODE)
    assert code == 200 and outcome(body.decode())["state"] in ("done", "failed")

    # resources: grow and reduce our own slots, by the name COMPSs uses (our address)
    assert http(rest, token, "PUT", "/COMPSs/addResources", ADD_RESOURCES_SELF)[0] == 200
    assert status(a)["cpus"]["total"] == 5
    assert http(rest, token, "PUT", "/COMPSs/removeResources", REDUCE_RESOURCES)[0] == 200
    assert status(a)["cpus"]["total"] == 3

    # link another agent: its name and Port, as the script sends them
    port = b.comm.rpartition(":")[2]
    peer_xml = ADD_RESOURCES_PEER.replace(b"127.0.0.2", b"localhost").replace(b"46202", port.encode())
    assert http(rest, token, "PUT", "/COMPSs/addResources", peer_xml)[0] == 200
    wait_for(lambda: status(a)["peers_alive"] == 1, 10, "c0 to link c1")
    code, data = http(rest, token, "GET", "/COMPSs/resources")
    names = {r["name"] for r in json.loads(data)["resources"]}
    assert code == 200 and names == {"c0", "c1"}

    # lost: dropped at once
    assert http(rest, token, "PUT", "/COMPSs/lostNode", LOST_NODE.replace(b"127.0.0.2", b"c1"))[0] == 200
    peers = {p["name"]: p["state"] for p in json.loads(run_cli("peers", "--agent", a.comm, "--json").stdout)}
    assert peers["c1"] in ("dead", "alive")  # dead at once; c1 is in fact alive and may refute

    # errors
    assert http(rest, token, "PUT", "/COMPSs/startApplication", CALL_JAVA_DEFAULT)[0] == 406
    assert http(rest, token, "PUT", "/COMPSs/startApplication", b"<startApplication><lang>")[0] == 400
    assert http(rest, token, "PUT", "/COMPSs/lostNode", LOST_NODE)[0] == 500  # no such member
    assert http(rest, "wrong", "PUT", "/COMPSs/addResources", ADD_RESOURCES_SELF)[0] == 401

    # DELETE /COMPSs: a graceful leave
    assert http(rest, token, "DELETE", "/COMPSs")[0] == 200
    assert a.proc.wait(20) == 0
    assert "left the mesh" in a.log()


def stop_body(module: str, method: str, args: list[str], forward_to: list[str]) -> bytes:
    """What ``compss_agent_call_operation --stop --forward_to=a;b`` sends (layout as
    tests/compss_helpers.py's CALL_PYTHON_CEI_STOP_FORWARD)."""
    agents = "".join(f"<agent>http://{a}</agent>" for a in forward_to)
    action = f"<action><actionName>stop</actionName><forwardTo>{agents}</forwardTo></action>"
    params = "".join(param("STRING_64_T", element(b64(a), i), i) for i, a in enumerate(args))
    return start(params, class_name=module, method=method, extra=action)


def test_start_application_answers_a_number_and_stop_is_forwarded(agents, mesh_key):
    """startApplication answers the application's id as a number (COMPSs answers a
    long), readable at /v1/calls/{id}; --stop stops the agent once the application has
    ended, and --forward_to stops those agents too (before: parsed, not acted on)."""
    token = mesh_key.rest_token()
    a = agents.start("s0", "--rest-port", "0", cpus=1)
    b = agents.start("s1", "--rest-port", "0", "--peer", a.comm, cpus=1)
    c = agents.start("s2", "--rest-port", "0", "--rest-open", "--peer", a.comm, cpus=1)
    rest = a.state["rest"]
    code, body = http(rest, token, "PUT", "/COMPSs/startApplication",
                      stop_body("tests.compss_apps", "slow_echo", ["hello", "1.5"],
                                [b.state["rest"], c.state["rest"]]))
    assert code == 200 and body.decode().isdigit() and int(body) < 2**63
    code, data = http(rest, token, "GET", f"/v1/calls/{body.decode()}")
    assert code == 200 and json.loads(data)["state"] in ("queued", "running", "delegated", "done")
    assert a.alive() and b.alive() and c.alive()  # (the application runs 1.5 s)
    for agent in (a, b, c):
        assert agent.proc.wait(30) == 0, agent.name
    assert "asked this agent to stop" in a.log()
    assert "left the mesh" in b.log() and "left the mesh" in c.log()


def test_add_resources_own_address_with_another_port_links_that_agent(agents, mesh_key):
    """Two agents on one device: naming our address with the other's Port links it
    (COMPSs: a name that is not the agent's own is another resource); before, the
    agent grew its own slots."""
    token = mesh_key.rest_token()
    a = agents.start("d0", "--rest-port", "0", cpus=1)
    b = agents.start("d1", cpus=1)
    port = b.comm.rpartition(":")[2]
    xml = ADD_RESOURCES_PEER.replace(b"127.0.0.2", b"127.0.0.1").replace(b"46202", port.encode())
    assert http(a.state["rest"], token, "PUT", "/COMPSs/addResources", xml)[0] == 200
    wait_for(lambda: status(a)["peers_alive"] == 1, 10, "d0 to link d1")
    assert status(a)["cpus"]["total"] == 1


def test_add_resources_os_and_architecture_become_labels(agents, mesh_key):
    token = mesh_key.rest_token()
    a = agents.start("l0", "--rest-port", "0", "--label", "mine", cpus=1)
    xml = (ADD_RESOURCES_SELF.replace(b"<operatingSystemType>[unassigned]", b"<operatingSystemType>Linux")
           .replace(b"<architecture>[unassigned]", b"<architecture>arm64"))
    assert http(a.state["rest"], token, "PUT", "/COMPSs/addResources", xml)[0] == 200
    labels = status(a)["labels"]
    assert labels == ["mine", "operating_system_type=Linux", "processor_architecture=arm64"]
    assert status(a)["cpus"]["total"] == 5
    reduce = REDUCE_RESOURCES.replace(b"<architecture>[unassigned]", b"<architecture>arm64")
    assert http(a.state["rest"], token, "PUT", "/COMPSs/removeResources", reduce)[0] == 200
    assert status(a)["labels"] == ["mine", "operating_system_type=Linux"]
    assert status(a)["cpus"]["total"] == 3
