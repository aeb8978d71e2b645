"""What `python bench/run.py fuzz` found (issue 15): minimal reproductions, each expected to fail
until its owner fixes the cause (`xfail(strict=True)`: a fix turns it into an unexpected pass,
and then the mark goes).

1. The codec raises something other than DecodeError, and the agent dies (one frame, from
   any peer with the key or a program on the device): an int of more than 4,300 digits in
   `v` or `t` (mesh/wire/codec.py:225, :229 put it in the error message with repr(), which
   Python refuses for such ints: ValueError), a float field given a huge int
   (mesh/wire/fields.py:66: float() raises OverflowError).
2. A call may claim zero or fewer slots (`Needs.cpus` is any int): the dispatcher then
   counted negative slots in use and more free slots than it has (it started more calls than
   it has slots), and a `metrics` query while such a call ran killed the agent
   (mesh/faces/metrics.py:22: float() of a huge int; the codec now refuses such ints, and
   REST renders the metrics). Fixed: a call takes at least one slot (`Pending.slots`,
   mesh/sched/records.py).
3. REST threads raise (no answer, a traceback in the agent's log): deeply nested JSON
   (mesh/faces/rest.py:226 catches ValueError but not RecursionError), a client that hangs
   up before its answer is written (mesh/faces/rest.py:250, BrokenPipeError printed by
   socketserver), a member whose numbers have more than 4,300 digits makes every
   /v1/status and /v1/peers fail (mesh/faces/rest.py:239, json.dumps).
4. A member's incarnation of more than 4,300 digits makes the agent's member-change log line
   fail (mesh/agent/actions.py:169, "%d"): a logging error with a traceback, the line lost.
5. A member that answers on the agent's own connection to it with a Pong naming the agent
   and gossip of a newcomer at its own address makes the agent close that connection and
   open another within one read, then read the closed socket (mesh/agent/input.py:147 checks
   the address, not the socket): ZMQError, the agent dies.
6. The local socket's client waits with select() (mesh/wire/localconn.py:271), which
   refuses descriptors past 1023: in a process with many open files (an agent with many
   members serving /v1/tree) dialing raises ValueError.
7. A member's heartbeat load was taken as it came: a huge negative `queued` made placing a
   call that has to queue raise OverflowError (placement divided it): the agent died. Fixed:
   the counts of a peer's load are believed between 0 and 2**31 - 1 (`records.count`).
"""

from __future__ import annotations

import http.client
import json
import pickle
import socket
import time

import cbor2
import psutil
import pytest
import zmq

from mesh.agent.transport import curve_client
from mesh.errors import DecodeError
from mesh.faces.metrics import render as render_metrics
from mesh.sched.dispatch import Dispatcher
from mesh.wire import messages as m
from tests.conftest import wait_for
from tests.dispatch_helpers import check

HUGE = 10**5000  # an int Python will not turn into text (more than 4,300 digits)
TIMEOUT_MS = 10_000


def ping_with(**load) -> bytes:
    """A valid Ping frame whose Load has these fields changed (at the CBOR level)."""
    body = cbor2.loads(m.encode(m.Ping(1, m.NodeInfo("ab" * 16, "x", "127.0.0.1:9", 1), m.Load(1, 1, 0, 0))))
    body["load"].update(load)
    return cbor2.dumps(body)


KILLERS = {  # name: (frame, what goes wrong, the exception that escapes decode)
    "version": (cbor2.dumps({"v": HUGE, "t": "ping"}),
                "mesh/wire/codec.py:225 puts repr(v) in the DecodeError's message", ValueError),
    "type": (cbor2.dumps({"v": m.PROTOCOL, "t": HUGE}),
             "mesh/wire/codec.py:229 puts repr(t) in the DecodeError's message", ValueError),
    "float": (ping_with(speed=10**400), "mesh/wire/fields.py:66 float() of a huge int", OverflowError),
}


def killers():
    return sorted(KILLERS)


# ---------------------------------------------------------------------------- the codec


@pytest.mark.parametrize("name", killers())
def test_decode_raises_only_decode_error(name):
    with pytest.raises(DecodeError):
        m.decode(KILLERS[name][0])


def dealer(address: str, key, identity: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    curve_client(sock, key)
    sock.connect(f"tcp://{address}")
    return sock


def ask(sock: zmq.Socket, what: str, agent, qid: int = 7) -> m.Answer:
    """A Query over `sock`; its Answer (other frames that come first are skipped). Fails
    at once if the agent exits meanwhile, or after TIMEOUT_MS."""
    sock.send(m.encode(m.Query(qid, what)))
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if not sock.poll(50):
            if not agent.alive():
                pytest.fail(f"the agent died:\n{agent.log()[-1500:]}")
            continue
        msg = m.decode(sock.recv())
        for one in (m.unbatch(msg)[0] if type(msg) is m.Batch else [msg]):
            if type(one) is m.Answer and one.qid == qid:
                return one
    pytest.fail(f"no answer to {what} within {TIMEOUT_MS / 1000:.0f} s")


@pytest.mark.agents
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", killers())
def test_an_agent_survives_one_frame_whose_decode_raises(agents, mesh_key, name):
    agent = agents.start(f"victim-{name}")
    sock = dealer(agent.comm, mesh_key)
    try:
        sock.send(KILLERS[name][0])
        dropped = ask(sock, "status", agent).body["dropped"]
    finally:
        sock.close()
    assert dropped.get("version", 0) + dropped.get("type", 0) + dropped.get("field", 0) == 1, dropped


# ---------------------------------------------------------------------------- slots


@pytest.mark.parametrize("cpus", [0, -5])
def test_a_running_call_takes_at_least_one_slot(cpus):
    d = Dispatcher("me", 1, "cd" * 16)
    d.submit(m.Call("c1", "operator:add", b"", needs=m.Needs(cpus=cpus)), b"client")
    check(d)  # (a call running here takes a slot: local <= running, free <= cpus)
    assert d.free <= d.cpus


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_metrics_while_a_call_claims_negative_slots(agents, mesh_key):
    agent = agents.start("slots")
    sock = dealer(agent.comm, mesh_key)
    try:
        # (the most negative count the codec carries: bigger ints are refused since)
        sock.send(m.encode(m.Call("c1", "time:sleep", pickle.dumps(((2.0,), {})),
                                  needs=m.Needs(cpus=-((1 << 64) - 1)))))
        wait_for(lambda: ask(sock, "status", agent, 1).body["running"] != 0, 10, "the call to run")
        status = ask(sock, "status", agent, 2).body
        peers = ask(sock, "peers", agent, 3).body
    finally:
        sock.close()
    assert status["running"] == 1 and status["cpus"]["free"] == 0  # (one slot, taken)
    assert 'mesh_slots{agent="slots",state="free"} 0.0' in render_metrics(status, peers)  # (as REST)


# ---------------------------------------------------------------------------- REST


def rest_agent(agents, mesh_key, name):
    agent = agents.start(name, "--rest-port", "0")
    host, _, port = agent.state["rest"].rpartition(":")
    return agent, host, int(port), mesh_key.rest_token()


def request(host: str, port: int, token: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers={
            "Host": f"{host}:{port}", "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_deeply_nested_json_gets_a_400(agents, mesh_key):
    """RecursionError in the REST thread (the body was read for ValueError only): no
    answer, a traceback in the log. (More bodies: tests/test_rest_connections.py.)"""
    agent, host, port, token = rest_agent(agents, mesh_key, "nested")
    status, body = request(host, port, token, "POST", "/v1/calls", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and b"JSON" in body
    assert "Traceback" not in agent.log()


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_a_client_that_hangs_up_leaves_no_traceback(agents, mesh_key):
    """BrokenPipeError in the REST thread when the answer found the client gone, printed
    by socketserver with its traceback (25 lines in the agent's log per hang-up). Now
    counted (rest.aborted.hangup) and logged at DEBUG."""
    agent, host, port, token = rest_agent(agents, mesh_key, "hangup")
    proc = psutil.Process(agent.proc.pid)
    threads = proc.num_threads()
    for _ in range(10):  # refused (no token) and answered at once: after we closed
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"GET /v1/status HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        s.close()

    def handled() -> bool:
        status = json.loads(request(host, port, token, "GET", "/v1/status")[1])
        return status["rest"]["refused"]["token"] >= 10 and proc.num_threads() <= threads

    wait_for(handled, 10, "the 10 requests to be refused and their threads to end")
    assert "Traceback" not in agent.log()


def raw(msg: m.Message, **fields) -> bytes:
    """``msg``'s frame with these fields changed at the CBOR level (``sender.cpus``: a
    field of a record), where encode would refuse them."""
    body = cbor2.loads(m.encode(msg))
    for path, value in fields.items():
        *outer, last = path.split("__")
        target = body
        for step in outer:
            target = target[step]
        target[last] = value
    return cbor2.dumps(body)


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_a_member_that_claims_huge_numbers_is_refused_and_rest_answers(agents, mesh_key):
    """A member that said it had 10**5000 slots became a member whose /v1/peers line
    json.dumps could not write (ValueError, mesh/faces/rest.py): no answer, ever, while it
    was a member. The codec refuses ints beyond 64 bits now: its Ping is dropped (field)."""
    agent, host, port, token = rest_agent(agents, mesh_key, "bignum")
    member = bytes.fromhex("ef" * 16)
    ping = m.Ping(1, m.NodeInfo(member.hex(), "big", "127.0.0.1:9", 1, 1), m.Load(1, 1, 0, 0))
    sock = dealer(agent.comm, mesh_key, identity=member)
    try:
        sock.send(raw(ping, sender__cpus=HUGE))
        dropped = ask(sock, "status", agent).body["dropped"]
        peers = ask(sock, "peers", agent).body
    finally:
        sock.close()
    assert dropped.get("field", 0) == 1, dropped
    assert not any(p["id"] == member.hex() for p in peers)
    status, body = request(host, port, token, "GET", "/v1/peers")
    assert status == 200


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_a_leave_with_a_huge_incarnation_is_refused_and_logs_no_error(agents, mesh_key):
    """A member whose incarnation had more than 4,300 digits broke the member-change log
    line (%d: a logging error with its traceback). Such frames are dropped at decode now."""
    agent = agents.start("incarnation")
    member = bytes.fromhex("ee" * 16)
    sock = dealer(agent.comm, mesh_key, identity=member)
    try:
        sock.send(m.encode(m.Ping(1, m.NodeInfo(member.hex(), "big", "127.0.0.1:9", 1, 1), m.Load(1, 1, 0, 0))))
        wait_for(lambda: any(p["id"] == member.hex() for p in ask(sock, "peers", agent).body), 10,
                 "the member to join")
        sock.send(raw(m.Leave(member.hex(), 1), incarnation=HUGE))
        dropped = ask(sock, "status", agent).body["dropped"]
        peers = ask(sock, "peers", agent).body
    finally:
        sock.close()
    assert dropped.get("field", 0) == 1, dropped
    assert [p["state"] for p in peers if p["id"] == member.hex()] != ["left"]
    assert "--- Logging error ---" not in agent.log()


# ---------------------------------------------------------------------------- the agent's own connections


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_a_member_that_makes_the_agent_reconnect_to_it_mid_read(agents, mesh_key):
    from mesh.agent.transport import Transport

    agent = agents.start("reconnect")
    member = "ed" * 16
    puppet = Transport(bytes.fromhex(member), "127.0.0.1", 0, mesh_key)
    sock = dealer(agent.comm, mesh_key, identity=bytes.fromhex(member))
    try:
        sock.send(m.encode(m.Ping(1, m.NodeInfo(member, "p", puppet.address, 1, 1), m.Load(1, 0, 0, 0))))
        poller = zmq.Poller()
        poller.register(puppet.router, zmq.POLLIN)
        poller.register(puppet.zap, zmq.POLLIN)
        deadline, identity = time.monotonic() + 10, None
        while identity is None and time.monotonic() < deadline:  # the agent probes its new member
            for s, _ in poller.poll(50):
                if s is puppet.zap:
                    puppet.handle_zap()
                else:
                    identity, _ = puppet.router.recv_multipart()
        assert identity == bytes.fromhex(agent.id), "the agent never connected to its member"
        me_again = m.NodeInfo(agent.id, "me", puppet.address, 1, 0)
        newcomer = m.Digest("ec" * 16, "newcomer", puppet.address, "alive", 1, 1)
        puppet.router.send_multipart([identity, m.encode(m.Pong(99, me_again, m.Load(1, 0, 0, 0), [newcomer]))])
        # a sound agent closes that connection, opens a new one and pings the newcomer on it
        pinged, deadline = False, time.monotonic() + 10
        while not pinged and agent.alive() and time.monotonic() < deadline:
            for s, _ in poller.poll(50):
                if s is puppet.zap:
                    puppet.handle_zap()
                else:
                    pinged = isinstance(m.decode(puppet.router.recv_multipart()[1]), (m.Ping, m.Batch))
        status = ask(sock, "status", agent)
    finally:
        sock.close()
        puppet.close()
    assert agent.alive() and status.body["name"] == "reconnect"
    assert not status.body.get("errors"), status.body["errors"]  # (not caught by a guard either)


@pytest.mark.timeout(30)
def test_dialing_the_local_socket_from_a_process_with_many_descriptors():
    """localconn.dial waited with select.select: 'filedescriptor out of range' once the
    process had 1,024 descriptors open (the fuzzed agent's /v1/tree did). It polls now.
    (A real agent and calls: tests/test_localsock.py.)"""
    import os
    import struct
    import threading

    from mesh.wire import localconn, localsock
    from tests.test_localsock import many_descriptors

    address = "127.0.0.1:1"  # (no agent there: its local socket is played here)
    path = localsock.bind_path(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)

    def agent_side() -> None:  # answers the status query that dial sends
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            size = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))[0]
            conn.recv(size, socket.MSG_WAITALL)
            answer = m.encode(m.Answer(0, "status", {"key": None}))
            conn.sendall(struct.pack(">I", len(answer)) + answer)

    thread = threading.Thread(target=agent_side, daemon=True)
    thread.start()
    try:
        with many_descriptors():  # the next descriptor is past 1023
            dialed = localconn.dial(address, None, 5.0, m.MAX_FRAME)
    finally:
        listener.close()
        os.unlink(path)
    assert dialed is not None and dialed[1] == path
    dialed[0].close()


def test_queueing_a_call_with_a_member_that_reports_an_absurd_backlog():
    d = Dispatcher("me", 1, "cd" * 16, prefetch=1)
    d.peer_load("ab" * 16, "absurd", 1, 0, 0.001, -(10**400))
    d.submit(m.Call("c1", "operator:add", b""), b"client")  # (takes our one slot)
    d.submit(m.Call("c2", "operator:add", b""), b"client")  # (must queue: here or at the member)
    check(d)
