"""Reference systems that scenarios compare the mesh against: a bare pyzmq process and Dask.

All bind 127.0.0.1 only, and every process carries its own lifetime cap as a last resort.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import Child, assert_loopback, read_json, spawn, stop, wait_until

LIFETIME_S = 900  # no reference process outlives a benchmark by more than this

# A python process that imports zmq, binds a ROUTER on an ephemeral loopback port and idles.
BARE_PYZMQ = r"""
import json, os, sys, time, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
port = sock.bind_to_random_port("tcp://127.0.0.1")
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), "addr": f"127.0.0.1:{port}"}, f)
os.replace(tmp, sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
poller = zmq.Poller()
poller.register(sock, zmq.POLLIN)
while time.monotonic() < deadline:
    if poller.poll(1000):
        sock.recv_multipart()
"""


def start_bare_pyzmq(workdir: Path, timeout: float = 30.0) -> tuple[Child, dict]:
    state = Path(workdir) / "pyzmq.state.json"
    child = spawn("bare-pyzmq", [sys.executable, "-c", BARE_PYZMQ, str(state), str(LIFETIME_S)],
                  workdir)
    try:
        info = wait_until(lambda: read_json(state, ("pid", "addr")), timeout,
                          "the bare pyzmq process", child)
        assert_loopback(child.pid, "bare pyzmq")
    except Exception:
        stop(child)
        raise
    return child, info


@dataclass
class Dask:
    scheduler: Child
    worker: Child  # the `dask worker` (nanny) process; the worker process is its child
    address: str
    worker_pids: list[int]

    def stop(self) -> dict:
        return {"worker": stop(self.worker), "scheduler": stop(self.scheduler)}


def start_dask(workdir: Path, nthreads: int = 2, nworkers: int = 1, nanny: bool = True,
               timeout: float = 60.0) -> Dask:
    """`dask scheduler` + `dask worker` on 127.0.0.1; waits until the workers joined.

    `--no-dashboard` alone still opens an HTTP server (health/metrics routes) on 0.0.0.0,
    hence the explicit loopback `--dashboard-address` for both."""
    from distributed import Client

    sched_file = Path(workdir) / "dask-scheduler.json"
    scheduler = spawn("dask-scheduler", [
        sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
        "--port", "0", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
        "--scheduler-file", str(sched_file),
        "--idle-timeout", f"{LIFETIME_S}s"], workdir)
    worker = None
    try:
        info = wait_until(lambda: read_json(sched_file, ("address",)), timeout,
                          "the dask scheduler file", scheduler)
        address = info["address"]
        if not address.startswith("tcp://127.0.0.1:"):
            raise RuntimeError(f"dask scheduler not on loopback: {address}")
        assert_loopback(scheduler.pid, "dask scheduler")
        worker = spawn("dask-worker", [
            sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
            "--nthreads", str(nthreads), "--nworkers", str(nworkers), "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0",
            "--nanny" if nanny else "--no-nanny", "--lifetime", f"{LIFETIME_S}s",
            "--local-directory", str(Path(workdir) / "dask-worker-space")], workdir)
        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(nworkers, timeout=timeout)
            pids = sorted(client.run(os.getpid).values())
        assert_loopback(worker.pid, "dask worker")
        assert_loopback(scheduler.pid, "dask scheduler")
        return Dask(scheduler, worker, address, pids)
    except BaseException:
        if worker is not None:
            stop(worker)
        stop(scheduler)
        raise
