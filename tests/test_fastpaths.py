"""The per-task fast paths: framing (one write per frame, buffered reads), ``taskexec.dumps``
(cloudpickle's bytes, by the standard pickler when equal), and the client's coalesced wakes."""

from __future__ import annotations

import os
import pickle
import socket
import sys
import threading
import types

import cloudpickle
import pytest

from mesh.program import taskexec
from mesh.wire.framing import FrameSocket


def _pair():
    a, b = socket.socketpair()
    return FrameSocket(a), FrameSocket(b)


def test_frames_of_all_sizes_round_trip():
    fa, fb = _pair()
    frames = [b"", b"x", os.urandom(70_000), os.urandom(3_000_000)]
    frames += [bytes([i % 256]) * i for i in range(200)]
    sender = threading.Thread(target=lambda: [fa.send(f) for f in frames])
    sender.start()
    got = [fb.recv() for _ in frames]
    sender.join()
    assert got == frames


def test_frames_buffered_by_one_read_are_readable():
    fa, fb = _pair()
    for f in (b"one", b"two", b"three"):
        fa.send(f)  # a socket pair: in fb's receive buffer once send returns
    assert fb.readable()
    assert fb.recv() == b"one"  # one read took all three
    assert fb.readable() and fb.recv() == b"two"
    assert fb.readable() and fb.recv() == b"three"
    assert not fb.readable()
    fa.send(b"four")
    assert fb.readable() and fb.recv() == b"four"
    fa.close()
    fb.readable()  # may answer from the buffer alone once; EOF is seen by the next one
    assert fb.readable()
    with pytest.raises(EOFError):
        fb.recv()


def test_frames_from_two_threads_never_interleave():
    fa, fb = _pair()
    n = 300

    def send(tag: bytes):
        for i in range(n):
            fa.send(tag + i.to_bytes(4, "big") + tag * (1000 + 37 * i))

    threads = [threading.Thread(target=send, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    seen = {b"a": 0, b"b": 0}
    for _ in range(2 * n):
        frame = fb.recv()
        tag, i = frame[:1], int.from_bytes(frame[1:5], "big")
        assert i == seen[tag] and frame[5:] == tag * (1000 + 37 * i)
        seen[tag] += 1
    for t in threads:
        t.join()


def _local_function():
    def inner(x):
        return x + 1

    return inner


def noop(i=None):
    return None


@pytest.mark.parametrize("obj", [
    None, 1, 2.5, "s", b"b", True, (1, "a", [2, {"k": None}]), {"a": 1}, [list(range(100))],
    {1: 2}, (noop, (1,), {}), (taskexec._execute, (noop, (1,), {}, [], [], 1), {}),
    (None, [], [], "agent"), os.path.join, print,
])
def test_dumps_gives_cloudpickles_bytes(obj):
    assert taskexec.dumps(obj) == cloudpickle.dumps(obj)


def test_dumps_sends_what_cannot_be_imported_by_value():
    for fn in (lambda x: 3 * x, _local_function()):
        blob = taskexec.dumps((fn, (1,), {}))
        assert blob == cloudpickle.dumps((fn, (1,), {}))
        f, args, _ = pickle.loads(blob)
        assert f is not fn and f(*args) == fn(1)
    dyn = types.ModuleType("mesh_test_dynamic_module")  # no __spec__: left to cloudpickle
    exec("def f(x):\n    return 2 * x\n", dyn.__dict__)
    sys.modules[dyn.__name__] = dyn
    try:
        assert taskexec.dumps((dyn.f, (1,), {})) == cloudpickle.dumps((dyn.f, (1,), {}))
    finally:
        del sys.modules[dyn.__name__]


def test_dumps_honours_register_pickle_by_value():
    mod = types.ModuleType("mesh_test_by_value")
    mod.__spec__ = types.SimpleNamespace(name=mod.__name__)  # looks importable
    exec("def g():\n    return 7\n", mod.__dict__)
    mod.g.__module__ = mod.__name__
    sys.modules[mod.__name__] = mod
    try:
        cloudpickle.register_pickle_by_value(mod)
        try:
            blob = taskexec.dumps(mod.g)
            assert blob == cloudpickle.dumps(mod.g)
            del sys.modules[mod.__name__]  # by value: loads without the module
            assert pickle.loads(blob)() == 7
            sys.modules[mod.__name__] = mod
        finally:
            cloudpickle.unregister_pickle_by_value(mod)
    finally:
        sys.modules.pop(mod.__name__, None)


def test_client_bursts_from_threads_and_callback_calls(agents):
    import operator
    import queue
    import time

    import mesh
    from mesh.errors import AgentUnreachable

    a = agents.start("fast0", cpus=2)
    client = mesh.connect(a.comm)
    try:
        got: queue.SimpleQueue = queue.SimpleQueue()

        def burst(k: int) -> None:
            for i in range(150):
                client._submit_to(lambda ok, v: got.put((ok, v)), (), operator.add, 1000 * k, i)

        threads = [threading.Thread(target=burst, args=(k,)) for k in (1, 2)]
        for t in threads:
            t.start()
        futures = [client.submit(operator.mul, i, 2) for i in range(300)]
        for t in threads:
            t.join()
        assert [f.result(60) for f in futures] == [2 * i for i in range(300)]
        outcomes = [got.get(timeout=60) for _ in range(300)]
        assert all(ok for ok, _ in outcomes)
        assert sorted(v for _, v in outcomes) == sorted(1000 * k + i for k in (1, 2) for i in range(150))
        client._submit_to(lambda ok, v: got.put((ok, v)), (), operator.truediv, 1, 0)
        ok, exc = got.get(timeout=60)
        assert not ok and isinstance(exc, ZeroDivisionError)
        client._submit_to(lambda ok, v: got.put((ok, v)), (), time.sleep, 1.5)  # still running at close
    finally:
        client.close()
    ok, exc = got.get(timeout=10)
    assert not ok and isinstance(exc, AgentUnreachable)
