"""The agent's local socket (mesh.wire.localsock): programs on the agent's device reach it over a
Unix socket in a private directory, no CURVE; everyone else, and any doubt, goes over TCP."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

import pytest
import zmq

from mesh import keys
from mesh.agent.transport import Transport, curve_client
from mesh.client.client import Client
from mesh.errors import AgentUnreachable
from mesh.wire import framing, localconn, localsock
from mesh.wire import messages as m

from .conftest import run_cli, wait_for

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def many_descriptors(n: int = 1100):
    """This process with ``n`` more files open (the soft RLIMIT_NOFILE raised if need be), so
    that the next descriptor it opens is past 1023, where select() refuses to go."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 1024
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}: fewer than {want} descriptors")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    spare = []
    try:
        spare = [open(os.devnull) for _ in range(n)]
        yield
    finally:
        for f in spare:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- paths and directories (no agent) ------------------------------------------------------------

def test_path_is_the_same_for_both_sides_and_names_namespace_host_and_port(tmp_path):
    env = {"MESH_RUNTIME_DIR": str(tmp_path)}
    path = localsock.path_for("127.0.0.1:46102", env)
    assert path == localsock.path_for("localhost:46102", env)  # (the name of loopback)
    name = os.path.basename(path)
    assert name.endswith("-127.0.0.1-46102.sock") and name.split("-")[0].isdigit()
    assert os.path.dirname(path) == str(tmp_path)
    assert localsock.path_for("127.0.0.1:46103", env) != path
    assert localsock.path_for("127.0.0.2:46102", env) != path
    assert localsock.path_for(f"127.0.0.1:{'9' * 200}", env) is None  # too long for a sockaddr
    assert localsock.path_for("no-port", env) is None
    assert localsock.path_for("../../etc/x:1", env) is None
    assert localsock.path_for("127.0.0.1:46102", dict(env, MESH_LOCAL_SOCKET="0")) is None
    assert localsock.path_for("127.0.0.1:46102", dict(env, MESH_LOCAL_SOCKET="off")) is None


def test_only_a_private_directory_of_ours_is_trusted(tmp_path):
    d = tmp_path / "run"
    env = {"MESH_RUNTIME_DIR": str(d)}
    path = localsock.bind_path("127.0.0.1:5", env)  # made, mode 0700
    assert path is not None and localsock.private_dir(str(d))
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    os.chmod(d, 0o755)  # others may enter: not ours alone
    assert not localsock.private_dir(str(d)) and localsock.bind_path("127.0.0.1:5", env) is None
    os.chmod(d, 0o700)
    link = tmp_path / "link"
    link.symlink_to(d)
    assert not localsock.private_dir(str(link))  # a link could point anywhere later
    f = tmp_path / "file"
    f.write_text("")
    assert not localsock.private_dir(str(f))
    if os.geteuid() == 0:  # (only root can give a directory away)
        other = tmp_path / "other"
        other.mkdir(0o700)
        os.chown(other, 65534, 65534)
        assert not localsock.private_dir(str(other))
        assert localsock.bind_path("127.0.0.1:5", {"MESH_RUNTIME_DIR": str(other)}) is None


def test_a_client_dials_only_a_socket_file(tmp_path):
    env = {"MESH_RUNTIME_DIR": str(tmp_path / "run")}
    path = localsock.bind_path("127.0.0.1:7", env)
    assert localsock.dial_path("127.0.0.1:7", env) is None  # nothing there
    with open(path, "w") as f:
        f.write("not a socket")
    assert localsock.dial_path("127.0.0.1:7", env) is None
    os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    try:
        assert localsock.dial_path("127.0.0.1:7", env) == path
    finally:
        listener.close()


# -- real agents ---------------------------------------------------------------------------------

def test_a_program_on_the_device_uses_the_local_socket_and_gets_its_results(agents, mesh_key):
    a = agents.start("a", cpus=2)
    with Client(a.comm, key=mesh_key) as near, Client(a.comm, key=mesh_key, local=False) as far:
        status = near.query("status")
        assert near.local_path is not None and near.local_path == status["local_socket"]
        assert os.path.dirname(near.local_path) == os.environ["MESH_RUNTIME_DIR"]
        assert status["key"] == mesh_key.fingerprint()
        assert far.local_path is None
        # both ways at once, calls in flight on both: each result goes back to its caller
        futs = [(c, i, c.submit(pow, i, 2)) for i in range(200) for c in (near, far)]
        assert all(f.result(30) == i * i for _, i, f in futs)
        assert [near.call("math:factorial", (n,)).result(30) for n in range(6)] == [1, 1, 2, 6, 24, 120]
        with pytest.raises(ZeroDivisionError):
            near.submit(divmod, 1, 0).result(30)
    path = status["local_socket"]
    assert a.stop() == 0
    assert not os.path.exists(path), "a leaving agent removes its local socket"


def test_a_program_with_more_than_1024_descriptors_open_uses_the_local_socket(agents, mesh_key):
    """Its descriptors past 1023: dialing waited with select(), which refuses them (ValueError
    out of Client()); every wait on the local connection polls now."""
    a = agents.start("a")
    with many_descriptors(), Client(a.comm, key=mesh_key) as c:
        assert c.local_path is not None and c.link.fd > 1023
        futs = [c.submit(pow, i, 2) for i in range(200)]
        assert [f.result(30) for f in futs] == [i * i for i in range(200)]
        assert c.call("operator:add", (1, 2)).result(30) == 3
        a_side, b_side = socket.socketpair()  # (the waits of the framing itself)
        with a_side, b_side:
            assert a_side.fileno() > 1023
            assert framing.wait(a_side, 0, write=True) and not framing.wait(a_side, 0.01, read=True)
            b_side.sendall(struct.pack(">I", 2) + b"hi")
            assert framing.wait(a_side, 5, read=True)
            channel = framing.FrameSocket(a_side)
            assert channel.readable() and channel.recv() == b"hi" and not channel.readable()


def test_a_wrong_or_missing_key_still_fails_as_over_tcp(agents, mesh_key):
    a = agents.start("a")
    with pytest.raises(AgentUnreachable, match="wrong mesh key"):
        Client(a.comm, timeout=1.5, key=keys.MeshKey.generate())
    with pytest.raises(AgentUnreachable, match="may require a mesh key"):
        Client(a.comm, timeout=1.5, key=None)
    plain = agents.start("plain", secure=False)
    with Client(plain.comm, key=None) as c:  # a plaintext agent, a plaintext program: local
        assert c.local_path is not None and c.submit(abs, -3).result(30) == 3
    with pytest.raises(AgentUnreachable):  # our key, a plaintext agent: refused over TCP too
        Client(plain.comm, timeout=1.5, key=mesh_key)


def test_turned_off_or_not_private_the_agent_serves_tcp_only(agents, mesh_key, tmp_path):
    off = agents.start("off", env={"MESH_LOCAL_SOCKET": "0"})
    shared = tmp_path / "shared"
    shared.mkdir(0o755)
    os.chmod(shared, 0o755)
    open_dir = agents.start("open", env={"MESH_RUNTIME_DIR": str(shared)})
    assert "no local socket" in open_dir.log()
    for agent in (off, open_dir):
        with Client(agent.comm, key=mesh_key) as c:
            assert c.local_path is None and c.query("status")["local_socket"] is None
            assert c.submit(abs, -2).result(30) == 2
    assert os.listdir(shared) == []


def test_a_stale_socket_file_costs_a_client_at_most_a_second(agents, mesh_key):
    a = agents.start("a")
    with Client(a.comm, key=mesh_key) as c:
        path = c.local_path
    assert path is not None
    a.stop(signal.SIGKILL)
    assert os.path.exists(path)  # a killed agent leaves its file behind
    with pytest.raises(AgentUnreachable):
        Client(a.comm, timeout=1.0, key=mesh_key)
    # a new agent on the same port takes the path over
    port = a.comm.rpartition(":")[2]
    b = agents.start("b", "--comm-port", port)
    wait_for(lambda: b.comm == a.comm, 5, "the same address")
    with Client(b.comm, key=mesh_key) as c:
        assert c.local_path == path and c.query("status")["id"] == b.id


def _raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _answer(sock: socket.socket) -> m.Message:
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        chunk = sock.recv(65536)
        assert chunk, "the agent closed the connection"
        buf += chunk
    return m.decode(buf[4:4 + struct.unpack(">I", buf[:4])[0]])


def test_garbage_on_the_local_socket_is_dropped_and_the_agent_serves_on(agents, mesh_key):
    a = agents.start("a")
    with Client(a.comm, key=mesh_key) as c:
        path = c.local_path
        raw = _raw(path)  # a local program sending garbage frames: dropped, connection kept
        raw.sendall(b"".join(_frame(f) for f in (b"", b"\x00" * 10, b"\xff" * 3000,
                                                 m.encode(m.Query(1, "status"))[:-3])))
        raw.sendall(_frame(m.encode(m.Query(4, "status"))))
        assert _answer(raw).qid == 4
        huge = _raw(path)  # a frame over the limit: that connection is closed
        huge.sendall(struct.pack(">I", m.MAX_FRAME + 10_000) + b"x" * 100)
        assert huge.recv(10) == b""
        half = _raw(path)  # half a frame, then gone
        half.sendall(struct.pack(">I", 1000) + b"y" * 10)
        half.close()
        tagged = zmq.Context.instance().socket(zmq.DEALER)  # a TCP client naming itself
        tagged.setsockopt(zmq.LINGER, 0)  # as a local connection
        tagged.setsockopt(zmq.ROUTING_ID, localsock.LOCAL_TAG + b"\x00\x00\x00\x01")
        curve_client(tagged, mesh_key)
        tagged.connect(f"tcp://{a.comm}")
        tagged.send(m.encode(m.Query(3, "status")))

        def dropped():
            d = c.query("status")["dropped"]
            return d if d.get("identity", 0) >= 1 and d.get("oversized", 0) >= 1 else None

        d = wait_for(dropped, 10, "the agent to drop the bad frames", explain=a.log)
        assert d["identity"] == 1 and sum(d.values()) >= 5, d
        assert tagged.poll(300) == 0  # no answer to a forged identity
        tagged.close(0)
        assert c.submit(abs, -5).result(30) == 5
        raw.sendall(_frame(m.encode(m.Query(5, "status"))))
        assert _answer(raw).qid == 5
        raw.close()
        huge.close()
    assert a.alive()


def test_a_program_that_stops_reading_does_not_stall_the_agent(agents, mesh_key):
    """Answers pile up for a connection that never reads (written when it has room,
    refused past a bound); the agent goes on serving everyone else."""
    a = agents.start("a")
    with Client(a.comm, key=mesh_key) as c:
        mute = _raw(c.local_path)
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        query = _frame(m.encode(m.Query(9, "status")))
        mute.sendall(query * 2000)  # ~2,000 answers of ~1.5 kB each: more than the socket holds
        for i in range(50):
            assert c.submit(pow, i, 2).result(30) == i * i
        got = 0
        buf = b""
        while got < 2000:  # and they all come, in order, once it reads
            chunk = mute.recv(1 << 16)
            assert chunk
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                size = struct.unpack(">I", buf[:4])[0]
                msg = m.decode(buf[4:4 + size])
                buf = buf[4 + size:]
                got += 1 if type(msg) is m.Answer else len(m.unbatch(msg)[0])
        mute.close()


def test_a_dead_agent_fails_local_calls_at_once_and_the_client_goes_on_over_tcp(agents, mesh_key):
    """The local connection breaks: what was in flight fails at once (no waiting for a
    time-out), and the client reaches the agent's address over TCP from then on, as a
    TCP client always did: a new agent there serves it."""
    a = agents.start("a")
    c = Client(a.comm, key=mesh_key)
    assert c.local_path is not None
    slow = c.submit(time.sleep, 30)
    wait_for(lambda: c.query("status")["running"] == 1, 10, "the call to run")
    t0 = time.monotonic()
    a.stop(signal.SIGKILL)
    with pytest.raises(AgentUnreachable, match="lost the connection"):
        slow.result(10)
    assert time.monotonic() - t0 < 5
    b = agents.start("b", "--comm-port", a.comm.rpartition(":")[2])
    assert b.comm == a.comm
    wait_for(lambda: c.submit(abs, -7).result(5) == 7, 30, "a call through the new agent")
    assert c.local_path is None and c.query("status")["id"] == b.id
    c.close()


def test_a_call_made_when_the_connection_broke_goes_the_new_way(agents, mesh_key):
    """A retry made by the failure itself (a done-callback, as the task runtime's RETRY
    is) is a call on the new connection: it was refused with the old one's error
    (link.broken was cleared only after the calls in flight had failed)."""
    a = agents.start("a")
    c = Client(a.comm, key=mesh_key)
    slow = c.submit(time.sleep, 30)
    wait_for(lambda: c.query("status")["running"] == 1, 10, "the call to run")
    again: list = []

    def retry(_):
        try:
            again.append(c.submit(abs, -7))
        except AgentUnreachable as exc:
            again.append(exc)

    slow.add_done_callback(retry)
    a.stop(signal.SIGKILL)
    with pytest.raises(AgentUnreachable):
        slow.result(10)
    wait_for(lambda: again, 10, "the retry")
    assert not isinstance(again[0], Exception), again[0]
    agents.start("b", "--comm-port", a.comm.rpartition(":")[2])
    assert again[0].result(30) == 7
    c.close()

@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(socket, "SO_PEERCRED"),
                    reason="needs root (to run a process as another user) and SO_PEERCRED")
def test_a_connection_from_another_user_is_closed_even_if_the_directory_lets_it_in(
        agents, mesh_key, monkeypatch):
    run = tempfile.mkdtemp(prefix="m")  # (short: a socket's path has ~100 bytes)
    monkeypatch.setenv("MESH_RUNTIME_DIR", run)
    try:
        a = agents.start("a", env={"MESH_RUNTIME_DIR": run})
        with Client(a.comm, key=mesh_key) as c:
            path = c.local_path
            assert path is not None and path.startswith(run)
            os.chmod(run, 0o711)  # someone opened the directory and the socket to all
            os.chmod(path, 0o777)
            code = ("import os, socket, struct, sys\nos.setgid(65534); os.setuid(65534)\n"
                    "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
                    "try:\n"
                    "    s.sendall(struct.pack('>I', len(sys.argv[2]) // 2) + bytes.fromhex(sys.argv[2]))\n"
                    "    print(repr(s.recv(100)))\n"
                    "except OSError:\n"  # (closed before the query went)
                    "    print(repr(b''))\n")
            out = subprocess.run([sys.executable, "-c", code, path, m.encode(m.Query(1, "status")).hex()],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "b''"  # closed, unanswered
            assert c.query("status")["local"]["strangers"] == 1
            assert c.submit(abs, -1).result(30) == 1
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_the_other_end_of_our_own_socket_is_trusted():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert localconn.peer_uid(a) in (os.geteuid(), None) and localconn.trusted(a)


@pytest.mark.parametrize("seed", range(3))
def test_frames_cross_a_small_nonblocking_stream_whole_and_in_order(seed):
    """Partial writes (``out``, ``flush``) and partial reads (a frame split over reads,
    many frames in one read) give back every frame once, in order."""
    rnd = random.Random(seed)
    a, b = socket.socketpair(socket.AF_UNIX)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tx, rx = framing.FrameStream(a, 1 << 20), framing.FrameStream(b, 1 << 20)
    sent = [rnd.randbytes(rnd.choice((0, 1, 3, 100, 5000, 70_000, 300_000))) for _ in range(300)]
    got: list[bytes] = []
    i = 0
    deadline = time.monotonic() + 30
    while len(got) < len(sent):
        assert time.monotonic() < deadline, f"{len(got)} of {len(sent)} frames after 30 s"
        while i < len(sent) and rnd.random() < 0.7:
            assert tx.send(sent[i])
            i += 1
        tx.flush()
        got.extend(rx.frames())
    assert got == sent and not tx.out
    tx.close()
    with pytest.raises(framing.StreamClosed):  # the end of the stream, once read
        for _ in range(3):
            rx.frames()
    rx.close()


def test_a_frame_over_the_limit_closes_the_stream_after_the_frames_before_it():
    a, b = socket.socketpair(socket.AF_UNIX)
    tx, rx = framing.FrameStream(a, 1 << 20), framing.FrameStream(b, 100)
    tx.send(b"ok")
    tx.send(b"x" * 101)
    assert rx.frames() == [b"ok"]
    with pytest.raises(framing.StreamClosed) as err:
        rx.frames()
    assert err.value.oversized
    tx.close()
    rx.close()


def test_the_blocking_and_the_nonblocking_streams_speak_one_framing():
    """A worker's channel (FrameSocket) and a local connection (FrameStream) cut frames the
    same way: what one writes the other reads, whole and in order."""
    a, b = socket.socketpair(socket.AF_UNIX)
    blocking, stream = framing.FrameSocket(a), framing.FrameStream(b, 1 << 20)
    frames = [b"", b"x", os.urandom(70_000), b"last"]
    for f in frames:
        blocking.send(f)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < len(frames) and time.monotonic() < deadline:
        got.extend(stream.frames())
    assert got == frames
    for f in frames:
        assert stream.send(f)
    while not stream.flush():
        pass
    assert [blocking.recv() for _ in frames] == frames
    blocking.close()
    stream.close()


class _Exhausted:
    """A listener whose accept fails as when the process is out of descriptors."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self):
        raise OSError(errno.EMFILE, "Too many open files")


def test_a_failed_accept_pauses_the_listener_instead_of_waking_every_turn(monkeypatch):
    run = tempfile.mkdtemp(prefix="m")
    monkeypatch.setenv("MESH_RUNTIME_DIR", run)
    t = Transport(os.urandom(16), "127.0.0.1", 0, key=None, local=True)
    try:
        assert t.local is not None
        waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        waiting.connect(t.local_path)  # (queued until the agent accepts it)
        assert any(item is t.local for item, _ in t.poller.poll(0))
        real = t.local.listener
        t.local.listener = _Exhausted(real)
        assert t.accept_local(100.0) == [] and t.local.starved == 1
        assert not any(item is t.local for item, _ in t.poller.poll(0))  # not watched
        t.resume_local(100.5)
        assert not any(item is t.local for item, _ in t.poller.poll(0))
        t.local.listener = real
        t.resume_local(101.0)  # the pause is over: watched, and the connection comes in
        assert any(item is t.local for item, _ in t.poller.poll(0))
        streams = t.accept_local(101.0)
        assert len(streams) == 1 and t.local.starved == 1
        waiting.close()
    finally:
        t.close()
        shutil.rmtree(run, ignore_errors=True)


def test_mesh_status_shows_the_local_socket(agents):
    a = agents.start("a")
    off = agents.start("off", env={"MESH_LOCAL_SOCKET": "0"})
    res = run_cli("status", "--agent", a.comm)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("local "))
    assert os.environ["MESH_RUNTIME_DIR"] in line and "(1 connected, 0 strangers refused)" in line
    res = run_cli("status", "--agent", off.comm)
    assert res.returncode == 0 and "local     none (TCP only)" in res.stdout, res.stdout + res.stderr
