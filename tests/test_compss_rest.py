"""The COMPSs-compatible REST endpoints against a real agent, with byte-for-byte the
XML bodies that the COMPSs agent scripts send (fixtures in tests/compss_helpers.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.compss_helpers import (
    ADD_RESOURCES_PEER,
    ADD_RESOURCES_SELF,
    CALL_JAVA_DEFAULT,
    CALL_PYTHON_ADD,
    CALL_PYTHON_UNICODE,
    LOST_NODE,
    REDUCE_RESOURCES,
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


def status(agent) -> dict:
    return json.loads(run_cli("status", "--agent", agent.comm, "--json").stdout)


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
