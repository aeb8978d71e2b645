"""Batch frames with a real agent: a client's burst of calls goes as few frames and its
results come back batched; a bad frame inside a batch is dropped alone, the others are
served, and the agent carries on."""

from __future__ import annotations

import operator
import pickle

import cbor2
import pytest
import zmq

import mesh
from mesh.client.client import Client
from mesh.wire import messages as m
from tests.conftest import wait_for
from tests.test_hostile import dealer

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


def status(agent) -> dict:
    with Client(agent.comm) as c:
        return c.query("status")


def test_members_send_each_other_a_turns_messages_as_one_frame(agents):
    """Calls an agent delegates and the results that come back travel between the two
    agents in Batch frames (b has no client: every batch it reads is from a)."""
    a = agents.start("origin", cpus=1)
    b = agents.start("helper", "--peer", a.comm, cpus=1)
    with mesh.connect(a.comm) as client:
        wait_for(lambda: any(p["state"] == "alive" for p in client.query("peers")), 20,
                 "a to see b alive")
        n = 2000
        futs = [client.submit(operator.mul, i, 2) for i in range(n)]
        assert [f.result(60) for f in futs] == [2 * i for i in range(n)]
        sent = client.query("status")
    helper = status(b)
    assert sent["forwarded"] > 0 and helper["done"] > 0, (sent, helper)
    assert helper["batches"]["in"] > 0  # calls from a, several per frame
    assert helper["batches"]["frames_in"] >= 2 * helper["batches"]["in"]
    assert helper["batches"]["out"] > 0  # results back to a, several per frame
    # (sends may count probes made before the connection to a was up: IMMEDIATE)
    assert helper["dropped"]["duplicate_results"] == 0
    assert not {k for k, v in helper["dropped"].items() if v and k != "sends"}, helper["dropped"]


def test_a_burst_of_calls_goes_and_comes_back_in_batches(agents):
    agent = agents.start("batcher", cpus=2)
    n = 3000
    with mesh.connect(agent.comm) as client:
        futs = [client.submit(operator.mul, i, 3) for i in range(n)]
        assert [f.result(60) for f in futs] == [3 * i for i in range(n)]
        assert client.batches_received > 0 and client.late_results == 0 and client.dropped == 0
    body = status(agent)
    assert body["done"] == n and body["failed"] == 0
    batches = body["batches"]
    # the calls came in fewer frames than calls, and results left batched
    assert batches["in"] > 0 and batches["frames_in"] >= batches["in"] * 2
    assert batches["out"] > 0 and batches["frames_out"] >= batches["out"] * 2
    assert sum(body["dropped"].values()) == 0, body["dropped"]


def test_a_bad_frame_in_a_batch_is_dropped_and_the_rest_is_served(agents, mesh_key):
    agent = agents.start("strict", cpus=1)
    good_call = m.encode(m.Call("c-good", "operator:add", pickle.dumps(((2, 3), {}))))
    wrong_field = cbor2.dumps(cbor2.loads(m.encode(m.Call("c-bad", "operator:add", b""))) | {"hops": "x"})
    nested = m.encode(m.Batch([m.encode(m.Query(9, "status"))]))
    frames = [b"\xff not cbor", good_call, wrong_field, nested, m.encode(m.Query(1, "status")),
              m.encode(m.Answer(5, "stray", None))]  # an answer is no request: unexpected
    sock = dealer(agent.comm, mesh_key)
    try:
        sock.send(m.encode(m.Batch(frames)))
        got: list[m.Message] = []

        def answered():
            while sock.poll(0, zmq.POLLIN):
                got.extend(m.unbatch(m.decode(sock.recv()))[0])
            return any(isinstance(x, m.Result) for x in got) and any(isinstance(x, m.Answer) for x in got)

        wait_for(answered, 20, "the good call's result and the query's answer")
    finally:
        sock.close(0)
    result = next(x for x in got if isinstance(x, m.Result))
    answer = next(x for x in got if isinstance(x, m.Answer))
    assert result.call_id == "c-good" and result.ok and pickle.loads(result.value) == 5
    assert answer.qid == 1  # (not 9: the query inside the nested batch was dropped)
    assert not any(isinstance(x, m.Answer) and x.qid == 9 for x in got)
    body = status(agent)
    assert body["dropped"]["cbor"] == 1 and body["dropped"]["field"] == 1
    assert body["dropped"]["type"] == 1 and body["dropped"]["unexpected"] == 1, body["dropped"]
    assert body["batches"]["in"] == 1 and body["batches"]["frames_in"] == len(frames)
    assert body["done"] == 1 and agent.alive()
