"""A minimal raw-pyzmq task dispatcher: the reference the `tasks` scenario compares the mesh to.

`python -m bench.zmqpool STATE_FILE LIFETIME_S [WORKERS] [CREDIT]` runs a broker process
that binds two ROUTERs on 127.0.0.1 (a frontend for clients, a backend for workers), starts
WORKERS worker processes (`--worker`, 2 by default) and writes `{"pid", "addr"}` to
STATE_FILE once every worker said it is ready.

Wire format (no CBOR, no envelope, no authentication, no retries, no failure detection):
- client -> broker: `[b"", task_id, cloudpickle((fn, args, kwargs))]` from a DEALER or a REQ
  (the empty delimiter makes both look alike);
- broker -> worker: `[client_identity, task_id, payload]` to a worker with credit;
- worker -> broker: `[client_identity, task_id, b"1" | b"0", cloudpickle(value | exception)]`;
- broker -> client: `[b"", task_id, b"1" | b"0", result]`.
Each worker starts with CREDIT (2: one running, one queued) and gets one back per result; the
broker queues tasks while no worker has credit and gives the next to the worker with most.

`TaskPool` is the client side used by the scenario.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque

import cloudpickle
import zmq

RECV_TIMEOUT_MS = 30_000


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def worker(backend: str, credit: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(backend)
    sock.send_multipart([b"R", str(credit).encode()])
    while True:
        client, tid, payload = sock.recv_multipart()
        try:
            fn, args, kwargs = cloudpickle.loads(payload)
            out, ok = fn(*args, **kwargs), b"1"
        except Exception as exc:  # noqa: BLE001 - user code; the exception is the result
            out, ok = exc, b"0"
        try:
            data = cloudpickle.dumps(out)
        except Exception as exc:  # noqa: BLE001
            data, ok = cloudpickle.dumps(RuntimeError(f"unpicklable result: {exc}")), b"0"
        sock.send_multipart([client, tid, ok, data])


def broker(state_path: str, lifetime: float, n_workers: int, credit: int) -> None:
    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    back = ctx.socket(zmq.ROUTER)
    for s in (front, back):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
    front_port = front.bind_to_random_port("tcp://127.0.0.1")
    back_port = back.bind_to_random_port("tcp://127.0.0.1")
    procs = [subprocess.Popen([sys.executable, "-m", "bench.zmqpool", "--worker",
                               f"tcp://127.0.0.1:{back_port}", str(credit)],
                              preexec_fn=_die_with_parent) for _ in range(n_workers)]
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    credits: dict[bytes, int] = {}
    pending: deque = deque()
    deadline = time.monotonic() + lifetime
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    announced = False
    try:
        while not stopping and time.monotonic() < deadline:
            if not announced and len(credits) == n_workers:
                tmp = state_path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"pid": os.getpid(), "addr": f"127.0.0.1:{front_port}",
                               "workers": [p.pid for p in procs]}, f)
                os.replace(tmp, state_path)
                announced = True
            events = dict(poller.poll(200))
            if back in events:
                while True:
                    try:
                        msg = back.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    wid = msg[0]
                    if msg[1] == b"R":
                        credits[wid] = credits.get(wid, 0) + int(msg[2])
                    else:  # [wid, client, tid, ok, data]
                        credits[wid] += 1
                        front.send_multipart([msg[1], b"", *msg[2:]])
            if front in events:
                while True:
                    try:
                        msg = front.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    pending.append((msg[0], msg[2], msg[3]))  # client, tid, payload
            while pending and credits:
                wid = max(credits, key=credits.__getitem__)
                if credits[wid] <= 0:
                    break
                credits[wid] -= 1
                client, tid, payload = pending.popleft()
                back.send_multipart([wid, client, tid, payload])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        front.close(0)
        back.close(0)
        ctx.term()


class RawTaskError(RuntimeError):
    pass


class TaskPool:
    """Client of the broker: `run_many` pipelines calls (a bounded window in flight) through a
    DEALER; `call` is one REQ/REP round trip."""

    def __init__(self, address: str, window: int = 500) -> None:
        self.ctx = zmq.Context()
        self.window = window
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.req = self.ctx.socket(zmq.REQ)
        for s in (self.dealer, self.req):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
            s.setsockopt(zmq.SNDTIMEO, RECV_TIMEOUT_MS)
            s.connect(f"tcp://{address}")
        self._ids = itertools.count(1)

    @staticmethod
    def _value(ok: bytes, data: bytes):
        value = cloudpickle.loads(data)
        if ok != b"1":
            raise RawTaskError(f"task failed: {value!r}")
        return value

    def call(self, fn, *args, **kwargs):
        tid = str(next(self._ids)).encode()
        self.req.send_multipart([tid, cloudpickle.dumps((fn, args, kwargs))])
        try:
            rtid, ok, data = self.req.recv_multipart()
        except zmq.Again:
            raise RawTaskError("no reply from the raw dispatcher in time") from None
        if rtid != tid:
            raise RawTaskError("reply to another request")
        return self._value(ok, data)

    def run_many(self, calls: list[tuple]) -> list:
        """`calls` is a list of (fn, *args); returns their values in order."""
        results: dict[bytes, object] = {}
        tids = []
        sent = received = 0
        n = len(calls)
        while received < n:
            while sent < n and sent - received < self.window:
                fn, *args = calls[sent]
                tid = str(next(self._ids)).encode()
                tids.append(tid)
                self.dealer.send_multipart([b"", tid, cloudpickle.dumps((fn, tuple(args), {}))])
                sent += 1
            try:
                _, tid, ok, data = self.dealer.recv_multipart()
            except zmq.Again:
                raise RawTaskError("no reply from the raw dispatcher in time") from None
            results[tid] = self._value(ok, data)
            received += 1
        return [results[t] for t in tids]

    def close(self) -> None:
        self.dealer.close(0)
        self.req.close(0)
        self.ctx.term()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 3:
        broker(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2,
               int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    else:
        sys.exit("usage: python -m bench.zmqpool STATE_FILE LIFETIME_S [WORKERS] [CREDIT]")
