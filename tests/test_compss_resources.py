"""mesh.faces.compss.answers: addResources / removeResources / lostNode bodies, and the JSON answer of
GET /COMPSs/resources.

Fixtures (byte-exact request bodies, and where they come from) and builders:
``tests/compss_helpers.py``.
"""

from __future__ import annotations

import json

import pytest

from mesh.faces.compss.answers import (
    COMM_AGENT_WORKER,
    MASTER_ADAPTOR,
    NodeResources,
    Processor,
    parse_lost_node,
    parse_resources,
    resources_json,
)
from tests.compss_helpers import (
    ADD_RESOURCES_PEER,
    ADD_RESOURCES_SELF,
    LOST_NODE,
    REDUCE_RESOURCES,
    refused,
)

# ---------------------------------------------------------------------------- addResources / removeResources / lostNode


@pytest.mark.timeout(10)
def test_add_resources_own_name():
    req = parse_resources(ADD_RESOURCES_SELF)
    assert (req.kind, req.name, req.cpus, req.gpus, req.fpgas) == ("add", "127.0.0.1", 4, 0, 0)
    assert req.processors == (Processor("MainProcessor", "CPU", 4),)
    assert req.adaptor == "es.bsc.compss.agent.comm.CommAgentAdaptor"
    assert req.resource_element == "externalResource"
    assert req.properties == () and req.port is None and req.address is None
    assert req.memory_size is None and req.memory_type is None  # -1 / [unassigned]
    assert req.os_type is req.os_distribution is req.os_version is None


@pytest.mark.timeout(10)
def test_add_resources_other_agent():
    req = parse_resources(ADD_RESOURCES_PEER)
    assert (req.kind, req.name, req.cpus, req.gpus) == ("add", "127.0.0.2", 2, 1)
    assert [p.type for p in req.processors] == ["CPU", "GPU"]
    assert req.memory_size == 8.0
    assert req.properties == (("Port", "46202"),)
    assert req.port == 46202 and req.address == "127.0.0.2:46202"


@pytest.mark.timeout(10)
def test_reduce_resources():
    req = parse_resources(REDUCE_RESOURCES)
    assert (req.kind, req.name, req.cpus, req.gpus) == ("reduce", "127.0.0.1", 2, 0)
    assert req.adaptor is None and req.properties == ()


@pytest.mark.timeout(10)
def test_lost_node():
    assert parse_lost_node(LOST_NODE) == "127.0.0.2"


@pytest.mark.timeout(10)
def test_nio_resource_and_other_properties():
    body = (b"<newResource><nioResource><name>w1</name><description><processors><processor>"
            b"<name>MainProcessor</name><type>CPU</type><computingUnits>3</computingUnits>"
            b"<architecture>arm64</architecture></processor></processors></description>"
            b"<resourceConf><MinPort>43001</MinPort><MaxPort>43002</MaxPort></resourceConf>"
            b"</nioResource></newResource>")
    req = parse_resources(body)
    assert (req.name, req.cpus, req.resource_element) == ("w1", 3, "nioResource")
    assert req.adaptor == "es.bsc.compss.nio.master.NIOAdaptor"
    assert req.processors[0].architecture == "arm64"
    assert req.properties == (("MinPort", "43001"), ("MaxPort", "43002")) and req.port is None


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    ADD_RESOURCES_PEER.replace(b"<name>127.0.0.2</name>", b"<name></name>"),
    ADD_RESOURCES_PEER.replace(b"<name>127.0.0.2</name>", b"<name>two words</name>"),
    ADD_RESOURCES_PEER.replace(b"<computingUnits>2</computingUnits>", b""),
    ADD_RESOURCES_PEER.replace(b"<computingUnits>2</computingUnits>", b"<computingUnits>-2</computingUnits>"),
    ADD_RESOURCES_PEER.replace(b"<computingUnits>2</computingUnits>", b"<computingUnits>two</computingUnits>"),
    ADD_RESOURCES_PEER.replace(b"<memorySize>8</memorySize>", b"<memorySize>lots</memorySize>"),
    ADD_RESOURCES_PEER.replace(b"<Name>Port</Name>", b""),
    b"<newResource></newResource>",
    b"<newResource><externalResource><name>a</name></externalResource></newResource>",  # no description
    REDUCE_RESOURCES.replace(b"<workerName>127.0.0.1</workerName>", b""),
    b"<reduceNode><workerName>a</workerName></reduceNode>",  # no resources
    LOST_NODE,  # a lostNode is not a resources request
    ADD_RESOURCES_PEER[:-3],
])
def test_bad_resources_requests_are_400(body):
    refused(parse_resources, body, 400)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    b"<lostNode></lostNode>",
    b"<lostNode><workerName>  </workerName></lostNode>",
    b"<lostNode><workerName>a</workerName><workerName>b</workerName></lostNode>",
    b"<lostNode><workerName><x/></workerName></lostNode>",
    REDUCE_RESOURCES,
    LOST_NODE[:-2],
])
def test_bad_lost_node_is_400(body):
    refused(parse_lost_node, body, 400)


# ---------------------------------------------------------------------------- GET /COMPSs/resources


@pytest.mark.timeout(10)
def test_resources_json_shape():
    me = NodeResources("127.0.0.1", cpus=4, memory_size=16)
    peers = [NodeResources("127.0.0.2", cpus=2, gpus=1), NodeResources("edge-3", cpus=1, adaptor="x.Y",
                                                                       architecture="arm64")]
    doc = resources_json(me, peers, time_ms=1_700_000_000_123)
    assert json.loads(json.dumps(doc)) == doc
    assert set(doc) == {"time", "resources"} and doc["time"] == 1_700_000_000_123
    assert [r["name"] for r in doc["resources"]] == ["127.0.0.1", "127.0.0.2", "edge-3"]
    first, second, third = doc["resources"]
    assert first == {
        "name": "127.0.0.1",
        "adaptor": MASTER_ADAPTOR,
        "description": {
            "processors": [{"name": "MainProcessor", "architecture": "[unassigned]", "units": 4}],
            "memory_size": 16,
            "memory_type": "[unassigned]",
            "storage_size": -1,
            "storage_type": "[unassigned]",
            "storage_bandwidth": -1,
        },
    }
    assert second["adaptor"] == COMM_AGENT_WORKER
    assert second["description"]["processors"] == [
        {"name": "MainProcessor", "architecture": "[unassigned]", "units": 2},
        {"name": "gpu", "architecture": "[unassigned]", "units": 1},
    ]
    assert third["adaptor"] == "x.Y"
    assert third["description"]["processors"][0]["architecture"] == "arm64"


@pytest.mark.timeout(10)
def test_resources_json_defaults():
    doc = resources_json(NodeResources("solo", cpus=0, memory_size=1.5))
    assert isinstance(doc["time"], int) and doc["time"] > 1_600_000_000_000
    (only,) = doc["resources"]
    assert only["description"]["processors"] == []
    assert only["description"]["memory_size"] == 1.5
