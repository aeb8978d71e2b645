"""The COMPSs agent REST formats: parsing requests and formatting answers (no I/O here).

Existing COMPSs agent scripts (``compss_agent_call_operation``, ``compss_agent_add_resources``,
``compss_agent_reduce_resources``, ``compss_agent_lost_resources``) talk to an agent at
``/COMPSs/...``. This module reads the XML those scripts send and writes the JSON the real
agent answers, so the REST server can offer the same endpoints. Formats taken from
bsc-wdc/compss (GitHub):

* scripts: ``compss/runtime/scripts/user/compss_agent_call_operation``, ``..._add_resources``,
  ``..._reduce_resources``, ``..._lost_resources`` and the XML builders they source,
  ``compss/runtime/scripts/system/agents/commons.sh``;
* JAXB classes (element names) under ``compss/runtime/adaptors/agent/RESTagent/commons/src/
  main/java/es/bsc/compss/agent/rest/types/``: ``messages/StartApplicationRequest.java``
  (root ``startApplication``), ``ApplicationParameterImpl.java`` (``params``),
  ``ApplicationParameterValue.java`` (``element``/``array``), ``ActionTrigger.java``
  (``action``), ``OrchestratorNotification.java`` (``orchestrator``),
  ``messages/IncreaseNodeNotification.java`` (``newResource``), ``ExternalAdaptorResource.java``,
  ``NIOAdaptorResource.java``, ``messages/ReduceNodeRequest.java`` (``reduceNode``),
  ``messages/LostNodeNotification.java`` (``lostNode``);
* answers: ``compss/runtime/adaptors/agent/RESTagent/worker/src/main/java/es/bsc/compss/
  agent/rest/RESTAgent.java``.

What the real agent answers (for whoever wires the endpoints)::

    GET    /COMPSs/test              200, empty body
    GET    /COMPSs/resources         200, resources_json(...) (sent as text/plain by COMPSs)
    PUT    /COMPSs/startApplication  200, the application id as text/plain;
                                     406 "Unsupported language." for an unknown lang
    PUT    /COMPSs/addResources      200, empty body (500 + message if the agent refuses)
    PUT    /COMPSs/removeResources   200, empty body
    PUT    /COMPSs/lostNode          200, empty body
    DELETE /COMPSs                   200, empty body; the agent stops

The code is split by concept; every public name stays importable from this module:
:mod:`mesh.faces.compss.requests` holds the request records and :class:`CompssRequestError`,
:mod:`mesh.faces.compss.xmlbodies` parses the XML bodies (its limits and safety rules are described
there); this module writes the answers (:func:`resources_json`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from mesh.faces.compss.requests import (
    UNASSIGNED,
    CompssRequestError,
    Orchestrator,
    Processor,
    ResourcesRequest,
    StartApplication,
)

# MAX_NAME is not in __all__ (as before the split) but stays importable from here.
from mesh.faces.compss.xmlbodies import MAX_NAME as MAX_NAME
from mesh.faces.compss.xmlbodies import (
    MAX_PARAMS,
    MAX_XML_BYTES,
    SUPPORTED_LANG,
    UNSUPPORTED_LANG_MSG,
    parse_lost_node,
    parse_resources,
    parse_start_application,
)

# What the real agent reports as the adaptor of its own node and of agents it links to.
MASTER_ADAPTOR = "es.bsc.compss.types.COMPSsMaster"
COMM_AGENT_WORKER = "es.bsc.compss.agent.comm.CommAgentWorker"


# --------------------------------------------------------------------- answers


@dataclass(frozen=True)
class NodeResources:
    """One node for :func:`resources_json`: this agent, or a peer it can use.

    ``name`` is what COMPSs clients use to address the node afterwards (the name given to
    compss_agent_add_resources / reduce / lost). ``adaptor`` defaults to what the real
    agent shows: :data:`MASTER_ADAPTOR` for itself, :data:`COMM_AGENT_WORKER` for a linked
    agent. Unknown sizes stay ``None`` and are shown as COMPSs shows them (-1).
    """

    name: str
    cpus: int
    gpus: int = 0
    fpgas: int = 0
    memory_size: float | None = None  # GB
    memory_type: str | None = None
    storage_size: float | None = None  # GB
    storage_type: str | None = None
    storage_bandwidth: int | None = None
    architecture: str | None = None
    adaptor: str | None = None


def labels_of(req: ResourcesRequest) -> list[str]:
    """The labels (``join --label``) a resource description gives an agent, named as
    PyCOMPSs' ``@constraint`` keys with their value, ``key=value``: what
    ``mesh.compat.pycompss`` turns those constraints into, so that a task constrained on
    an OS or an architecture runs on an agent COMPSs' addResources described so.
    ``operating_system_type``, ``_distribution``, ``_version`` (``--os_type``...), the
    CPUs' ``processor_architecture``, ``memory_type``, ``storage_type``, and
    ``processor_type=GPU`` / ``=FPGA`` for such processors."""
    labels = []
    for key, value in (("operating_system_type", req.os_type),
                       ("operating_system_distribution", req.os_distribution),
                       ("operating_system_version", req.os_version),
                       ("memory_type", req.memory_type), ("storage_type", req.storage_type)):
        if value:
            labels.append(f"{key}={value}")
    for p in req.processors:
        if p.architecture and p.architecture != UNASSIGNED and p.type.upper() == "CPU":
            labels.append(f"processor_architecture={p.architecture}")
    if req.gpus > 0:
        labels.append("processor_type=GPU")
    if req.fpgas > 0:
        labels.append("processor_type=FPGA")
    return list(dict.fromkeys(labels))


def resources_json(me: NodeResources, peers: Iterable[NodeResources] = (),
                   time_ms: int | None = None) -> dict:
    """The body of ``GET /COMPSs/resources``, as the real agent builds it::

        {"time": <ms since the epoch>,
         "resources": [{"name": ..., "adaptor": <Java class name>,
                        "description": {"processors": [{"name", "architecture", "units"}],
                                        "memory_size", "memory_type", "storage_size",
                                        "storage_type", "storage_bandwidth"}}, ...]}

    This agent first, then ``peers`` in the order given. Processors are named as the
    COMPSs scripts name them: ``MainProcessor`` (CPU), ``gpu``, ``FPGA``; a kind with no
    units is left out. ``json.dumps`` the result; COMPSs sends it as text/plain.
    """
    if time_ms is None:
        time_ms = int(time.time() * 1000)
    nodes = [(me, MASTER_ADAPTOR)] + [(peer, COMM_AGENT_WORKER) for peer in peers]
    return {"time": int(time_ms),
            "resources": [_node_json(node, default_adaptor) for node, default_adaptor in nodes]}


def _node_json(node: NodeResources, default_adaptor: str) -> dict:
    arch = node.architecture or UNASSIGNED
    processors = [{"name": name, "architecture": arch if kind == "CPU" else UNASSIGNED, "units": int(units)}
                  for name, kind, units in (("MainProcessor", "CPU", node.cpus), ("gpu", "GPU", node.gpus),
                                            ("FPGA", "FPGA", node.fpgas))
                  if units > 0]
    description = {
        "processors": processors,
        "memory_size": _json_number(node.memory_size),
        "memory_type": node.memory_type or UNASSIGNED,
        "storage_size": _json_number(node.storage_size),
        "storage_type": node.storage_type or UNASSIGNED,
        "storage_bandwidth": -1 if node.storage_bandwidth is None else int(node.storage_bandwidth),
    }
    return {"name": node.name, "description": description, "adaptor": node.adaptor or default_adaptor}


def _json_number(value: float | None):
    """-1 for unknown; whole numbers without ``.0``, as org.json writes them."""
    if value is None:
        return -1
    value = float(value)
    return int(value) if value.is_integer() else value


__all__ = [
    "COMM_AGENT_WORKER", "MASTER_ADAPTOR", "MAX_PARAMS", "MAX_XML_BYTES", "SUPPORTED_LANG",
    "UNSUPPORTED_LANG_MSG", "CompssRequestError", "NodeResources", "Orchestrator", "Processor",
    "ResourcesRequest", "StartApplication", "labels_of", "parse_lost_node", "parse_resources",
    "parse_start_application", "resources_json",
]
