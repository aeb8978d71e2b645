"""Hostile input: garbage never kills an agent, strangers never get anything unpickled."""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import urllib.error
import urllib.request

import cbor2
import psutil
import pytest
import zmq

from mesh import keys
from mesh.agent.transport import curve_client
from mesh.wire import messages as m
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(180)]

RSS_GROWTH_BOUND = 32 * 1024 * 1024  # bytes an agent may grow while eating 100,000 bad frames


def status(agent) -> dict:
    res = run_cli("status", "--agent", agent.comm, "--json", timeout=15)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def mutate(frame: bytes, rng: random.Random) -> bytes:
    b = bytearray(frame)
    choice = rng.randrange(4)
    if choice == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif choice == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif choice == 2:
        b = b + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        b = b[::-1]
    return bytes(b)


def garbage(rng: random.Random, n: int):
    info = m.NodeInfo("ab" * 16, "x", "127.0.0.1:1", 1, 0)
    base = [
        m.encode(m.Ping(1, info, m.Load(1, 1, 0, 0), [])),
        m.encode(m.Query(1, "status")),
        m.encode(m.Result("c", True, b"", "x")),
        m.encode(m.Leave("cd" * 16, 0)),
    ]
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield [rng.randbytes(rng.randint(0, 64))]
        elif kind == 1:
            yield [mutate(rng.choice(base), rng)]
        elif kind == 2:
            body = {"v": rng.choice([0, 1, 2, "1", None]), "t": rng.choice(["ping", "leave", "zzz", 7]),
                    "seq": rng.choice([1, "x", None, -1, 2**70])}
            yield [cbor2.dumps(body)]
        else:
            yield [rng.randbytes(rng.randint(0, 8)) for _ in range(rng.randint(2, 4))]


def dealer(address: str, key) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 20_000)  # queued frames still go out after close()
    sock.setsockopt(zmq.SNDHWM, 0)
    curve_client(sock, key)
    sock.connect(f"tcp://{address}")
    return sock


class Canary:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def canary_calls(path: str) -> list[bytes]:
    blob = pickle.dumps(Canary(path))
    return [
        m.encode(m.Call("canary1", "", blob)),
        m.encode(m.Call("canary2", "operator:add", pickle.dumps(((Canary(path),), {})))),
        m.encode(m.Call("canary3", "", blob, 1, "ab" * 16)),
    ]


def test_100000_bad_frames_from_a_member_leave_the_agent_alive(agents, mesh_key):
    agent = agents.start("target", cpus=1)
    proc = psutil.Process(agent.proc.pid)
    rss_before = proc.memory_info().rss
    rng = random.Random(1234)
    sock = dealer(agent.comm, mesh_key)
    for parts in garbage(rng, 100_000):
        sock.send_multipart(parts)
    # an oversized frame: ZeroMQ drops the connection (MAXMSGSIZE) before buffering it
    sock.send(b"\xa1" + bytes(m.MAX_FRAME + 2048))
    sock.close()
    # not even ZMTP: raw TCP garbage
    host, _, port = agent.comm.rpartition(":")
    for n in (1, 7, 100, 5000):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(rng.randbytes(n))

    wait_for(lambda: sum(status(agent)["dropped"].values()) >= 50_000, 60, "the agent to count the garbage")
    body = status(agent)
    assert agent.alive()
    assert body["dropped"]["cbor"] > 0 and body["dropped"]["version"] > 0 and body["dropped"]["frames"] > 0
    res = run_cli("call", "--agent", agent.comm, "operator:add", "2", "3")
    assert res.stdout.strip() == "5", res.stderr
    growth = proc.memory_info().rss - rss_before
    assert growth < RSS_GROWTH_BOUND, f"agent grew by {growth / 1e6:.1f} MB"


def test_strangers_cannot_make_the_agent_unpickle_anything(agents, mesh_key, tmp_path):
    agent = agents.start("guarded", "--rest-port", "0", cpus=1)
    canary = str(tmp_path / "canary")
    wrong = keys.MeshKey.generate()
    for key in (None, wrong):
        sock = dealer(agent.comm, key)
        for frame in canary_calls(canary):
            sock.send(frame)
        sock.close()
    # REST without a token, and with a wrong one
    rest = agent.state["rest"]
    assert rest is not None and not rest.startswith("0.0.0.0")
    for headers in ({}, {"Authorization": "Bearer " + wrong.rest_token()}):
        for path in ("/v1/status", "/v1/calls", "/COMPSs/startApplication"):
            req = urllib.request.Request(f"http://{rest}{path}", data=pickle.dumps(Canary(canary)),
                                         headers=headers, method="PUT" if "COMPSs" in path else "POST")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=5)
            assert info.value.code in (401, 404, 405, 501)
        req = urllib.request.Request(f"http://{rest}/v1/status", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 401
    wait_for(lambda: status(agent)["auth"]["handshake_failures"] >= 2, 10, "both strangers to be refused")
    body = status(agent)
    assert body["done"] == 0 and body["failed"] == 0, body
    assert not os.path.exists(canary)

    # control: the same frames with the mesh key do get unpickled (so the canary works)
    good = urllib.request.Request(f"http://{rest}/v1/status",
                                  headers={"Authorization": "Bearer " + mesh_key.rest_token()})
    assert json.load(urllib.request.urlopen(good, timeout=5))["name"] == "guarded"
    sock = dealer(agent.comm, mesh_key)
    sock.send(canary_calls(canary)[0])
    wait_for(lambda: os.path.exists(canary), 20, "a member's canary to be unpickled")
    sock.close()


def test_wrong_key_is_reported_as_exit_3(agents, tmp_path):
    agent = agents.start("locked")
    other = str(tmp_path / "other.key")
    keys.write(other, keys.MeshKey.generate())
    res = run_cli("status", "--agent", agent.comm, "--timeout", "2", "--key-file", other)
    assert res.returncode == 3
    assert "mesh key" in res.stderr
    plain = run_cli("status", "--agent", agent.comm, "--timeout", "2", env={"MESH_KEY_FILE": ""})
    assert plain.returncode == 3


def test_plaintext_agent_survives_garbage_too(agents):
    agent = agents.start("open", secure=False)
    sock = dealer(agent.comm, None)
    for parts in garbage(random.Random(7), 10_000):
        sock.send_multipart(parts)
    sock.close()
    env = {"MESH_KEY_FILE": ""}
    wait_for(lambda: sum(json.loads(run_cli("status", "--agent", agent.comm, "--json", env=env).stdout)
                         ["dropped"].values()) >= 5000, 30, "the agent to count the garbage")
    assert run_cli("call", "--agent", agent.comm, "operator:add", "2", "3", env=env).stdout.strip() == "5"
