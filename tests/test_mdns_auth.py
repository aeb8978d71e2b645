"""mDNS announcements are authenticated with the mesh key: a forged one is ignored,
a right one is used. The forger is a zeroconf instance pinned to 127.0.0.1."""

from __future__ import annotations

import json
import socket

import pytest
from zeroconf import ServiceInfo, Zeroconf

from mesh import keys
from mesh.discovery.mdns import SERVICE_TYPE
from mesh.wire import messages as m
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(90)]


def announce(zc: Zeroconf, target, auth: str, label: str) -> ServiceInfo:
    host, _, port = target.comm.rpartition(":")
    props = {"id": target.id, "name": target.name, "v": str(m.PROTOCOL), "port": port, "cpus": "1",
             "auth": auth}
    info = ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", addresses=[socket.inet_aton(host)],
                       port=int(port), properties=props, server=f"{label}.local.")
    zc.register_service(info)
    return info


def peer_names(agent) -> set[str]:
    res = run_cli("peers", "--agent", agent.comm, "--json")
    return {p["name"] for p in json.loads(res.stdout)}


def dropped(agent) -> dict:
    return json.loads(run_cli("status", "--agent", agent.comm, "--json").stdout)["dropped"]


def test_forged_announcement_ignored_right_one_used(agents, mesh_key):
    listener = agents.start("listener", mdns=True)
    hidden = agents.start("hidden")  # no mDNS of its own: only the announcements below tell of it
    host, _, port = hidden.comm.rpartition(":")
    fields = keys.announcement_fields(hidden.id, hidden.name, m.PROTOCOL, host, int(port), 1)
    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        forged = announce(zc, hidden, keys.MeshKey.generate().announcement_auth(fields), "forged-x1")
        wait_for(lambda: dropped(listener).get("mdns_auth", 0) >= 1, 15, "the forged announcement")
        assert "hidden" not in peer_names(listener)
        zc.unregister_service(forged)
        announce(zc, hidden, mesh_key.announcement_auth(fields), "right-x2")
        wait_for(lambda: "hidden" in peer_names(listener), 15, "the right announcement to be used")
    finally:
        zc.close()
