"""Garbage sent to a live agent's comm port never kills it."""

from __future__ import annotations

import json
import random
import socket

import cbor2
import psutil
import pytest
import zmq

from mesh import messages as m
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


def status(agent) -> dict:
    res = run_cli("status", "--agent", agent.comm, "--json", timeout=15)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def valid_frames(rng: random.Random) -> list[bytes]:
    info = m.NodeInfo("ab" * 16, "x", "127.0.0.1:1", 1, 0)
    load = m.Load(1, 1, 0, 0)
    return [
        m.encode(m.Ping(1, info, load, [])),
        m.encode(m.Query(1, "status")),
        m.encode(m.Result("c", True, b"", "x")),
        m.encode(m.Call("c" * 8, "operator:add", b"\x80\x04garbage")),
    ]


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


def test_random_truncated_and_oversized_frames(agents):
    agent = agents.start("target", cpus=1)
    rss_before = psutil.Process(agent.proc.pid).memory_info().rss
    rng = random.Random(1234)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(f"tcp://{agent.comm}")
    base = valid_frames(rng)
    sent = 0
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            frame = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            sock.send(frame)
        elif kind == 1:
            sock.send(mutate(rng.choice(base), rng))
        elif kind == 2:
            body = {"v": rng.choice([0, 1, 2, "1", None]), "t": rng.choice(["ping", "call", "zzz", 7]),
                    "seq": rng.choice([1, "x", None, -1, 2**70])}
            sock.send(cbor2.dumps(body))
        else:
            parts = [bytes([rng.randrange(256)]) * rng.randint(0, 8) for _ in range(rng.randint(2, 4))]
            sock.send_multipart(parts)
        sent += 1
    sock.close(0)

    # an oversized frame: ZeroMQ drops the connection (MAXMSGSIZE) before buffering it
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(f"tcp://{agent.comm}")
    big.send(b"\xa1" + bytes(m.MAX_FRAME + 2048))
    big.close(0)

    # not even ZMTP: raw TCP garbage, then a half-open connection
    for n in (1, 7, 100, 5000):
        with socket.create_connection(tuple_addr(agent.comm), timeout=5) as raw:
            raw.sendall(bytes(rng.randrange(256) for _ in range(n)))

    wait_for(lambda: sum(status(agent)["dropped"].values()) >= 5000, 30, "the agent to count the garbage")
    body = status(agent)
    assert agent.alive()
    assert body["dropped"].get("cbor", 0) > 0 and body["dropped"].get("version", 0) > 0
    # it still does its job
    res = run_cli("call", "--agent", agent.comm, "operator:add", "2", "3")
    assert res.stdout.strip() == "5", res.stderr
    rss_after = psutil.Process(agent.proc.pid).memory_info().rss
    assert rss_after < rss_before + 64 * 1024 * 1024, (rss_before, rss_after)


def tuple_addr(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
