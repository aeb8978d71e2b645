"""Task overhead: no-op throughput, sequential round trips and a reduction tree; mesh vs Dask vs raw pyzmq.

Three systems run side by side in the same run, each with 2 single-threaded worker processes on
127.0.0.1 (on this machine at the same time; only one is driven at a time):
- mesh: one agent with a mesh key (`--cpus 2`: 2 slots; mDNS and REST off), this process
  connected with `mesh.connect` (which, from the agent's own device, goes through the agent's
  local socket: a Unix socket only our user can reach, no CURVE; `mesh.wire.localsock`). (b) also
  measures a second client over TCP with CURVE (`local=False`, as from another device):
  `mesh_tcp`;
- Dask distributed: `dask scheduler` + `dask worker --nworkers 2 --nthreads 1` (nanny);
- raw pyzmq: `bench/zmqpool.py`, a broker (ROUTER/ROUTER) with 2 worker processes (DEALER,
  credit 2 each), client DEALER (pipelined) or REQ (round trips); cloudpickle, nothing else.
All run the same plain functions from `bench/taskfns.py` (sent by reference).

(a) throughput of N no-op tasks (5,000; 1,000 with --quick), tasks/s: mesh `@task` calls then
    `barrier()`, and mesh `Client.submit(noop, i)` for all then waiting on every future;
    Dask `client.map(noop, range(N), pure=False)` + `gather`; raw pyzmq pipelined (500 in
    flight). 3 rounds per system in rotating order, the median round reported (1 with --quick).
(b) sequential round trips of a no-op (300; 100 with --quick): median, p99, mean in us: mesh
    `Client.submit(noop).result()`, Dask `client.submit(noop, pure=False).result()`, raw REQ/REP.
    Taken in blocks of 50 that rotate between the systems.
(c) a pairwise reduction tree over L leaves (1,024; 256 with --quick): leaves are tasks returning
    their index, every internal node a task adding two futures (2L-1 tasks), wall time from the
    first call to the root's value: mesh `@task` graph + `wait_on`, Dask futures, raw pyzmq level
    by level (values come back to the client between levels). Rounds as in (a).

Ratios are mesh / raw and mesh / Dask (for tasks/s a ratio < 1 means the mesh is slower; for
times a ratio > 1 means the mesh is slower). Targets (the issue): >= 10,000 tasks/s, <= 400 us
median round trip, <= 0.3 s for the 1,024-leaf tree (only checked by a full run).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import wait as wait_futures
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from bench import taskfns
from bench.common import (
    BenchError,
    assert_loopback,
    log,
    pct,
    ratio,
    read_json,
    spawn,
    start_agent,
    stop,
    wait_until,
)
from bench.refs import LIFETIME_S, start_dask

TARGET_TPS = 10_000
TARGET_RTT_US = 400
TARGET_TREE_S = 0.3
BLOCK = 50
RESULT_TIMEOUT_S = 120




# -- the raw pyzmq dispatcher --------------------------------------------------------------------

def start_raw(workdir: Path, timeout: float = 30.0):
    state = Path(workdir) / "zmqpool.state.json"
    child = spawn("zmqpool", [sys.executable, "-m", "bench.zmqpool", str(state), str(LIFETIME_S),
                              "2", "2"], workdir)
    try:
        info = wait_until(lambda: read_json(state, ("pid", "addr")), timeout,
                          "the raw pyzmq dispatcher", child)
        assert_loopback(child.pid, "the raw pyzmq dispatcher")
    except BaseException:
        stop(child)
        raise
    return child, info


# -- one system each: the same three operations --------------------------------------------------

class Mesh:
    name = "mesh"

    def __init__(self, client) -> None:
        from mesh.program import api

        self.client = client
        self.api = api
        self.noop_t = api.task(taskfns.noop)
        self.leaf_t = api.task(taskfns.leaf)
        self.add_t = api.task(taskfns.add)

    def throughput_task(self, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            self.noop_t(i)
        self.api.barrier()
        return time.perf_counter() - t0

    def throughput_submit(self, n: int) -> float:
        t0 = time.perf_counter()
        futs = [self.client.submit(taskfns.noop, i) for i in range(n)]
        done, not_done = wait_futures(futs, timeout=RESULT_TIMEOUT_S)
        wall = time.perf_counter() - t0
        if not_done:
            raise BenchError(f"mesh: {len(not_done)} of {n} submitted no-ops unfinished after "
                             f"{RESULT_TIMEOUT_S} s")
        for f in done:
            f.result()
        return wall

    def round_trip(self) -> None:
        self.client.submit(taskfns.noop).result(timeout=RESULT_TIMEOUT_S)

    def tree(self, leaves: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        level = [self.leaf_t(i) for i in range(leaves)]
        while len(level) > 1:
            level = [self.add_t(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        value = self.api.wait_on(level[0])
        return time.perf_counter() - t0, value


class DaskSide:
    name = "dask"

    def __init__(self, client) -> None:
        self.client = client

    def throughput(self, n: int) -> float:
        t0 = time.perf_counter()
        futs = self.client.map(taskfns.noop, range(n), pure=False)
        self.client.gather(futs)
        return time.perf_counter() - t0

    def round_trip(self) -> None:
        self.client.submit(taskfns.noop, pure=False).result(timeout=RESULT_TIMEOUT_S)

    def tree(self, leaves: int) -> tuple[float, int]:
        c = self.client
        t0 = time.perf_counter()
        level = [c.submit(taskfns.leaf, i, pure=False) for i in range(leaves)]
        while len(level) > 1:
            level = [c.submit(taskfns.add, level[i], level[i + 1], pure=False)
                     for i in range(0, len(level), 2)]
        value = level[0].result(timeout=RESULT_TIMEOUT_S)
        return time.perf_counter() - t0, value


class RawSide:
    name = "raw"

    def __init__(self, pool) -> None:
        self.pool = pool

    def throughput(self, n: int) -> float:
        t0 = time.perf_counter()
        self.pool.run_many([(taskfns.noop, i) for i in range(n)])
        return time.perf_counter() - t0

    def round_trip(self) -> None:
        self.pool.call(taskfns.noop)

    def tree(self, leaves: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        values = self.pool.run_many([(taskfns.leaf, i) for i in range(leaves)])
        while len(values) > 1:
            values = self.pool.run_many([(taskfns.add, values[i], values[i + 1])
                                         for i in range(0, len(values), 2)])
        return time.perf_counter() - t0, values[0]


# -- the scenario ---------------------------------------------------------------------------------

def _rotations(systems: list[str], rounds: int):
    for r in range(rounds):
        k = r % len(systems)
        yield systems[k:] + systems[:k]


def run(quick: bool = False) -> dict[str, Any]:
    n_tasks = 1_000 if quick else 5_000
    n_rtt = 100 if quick else 300
    leaves = 256 if quick else 1_024
    rounds = 1 if quick else 3
    res: dict[str, Any] = {"scenario": "tasks", "n_tasks": n_tasks, "n_round_trips": n_rtt,
                           "tree_leaves": leaves, "tree_tasks": 2 * leaves - 1, "rounds": rounds}
    load_start = round(os.getloadavg()[0], 2)
    from mesh.client.client import connect

    with tempfile.TemporaryDirectory(prefix="mesh-bench-tasks-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        log("starting the raw pyzmq dispatcher (broker + 2 worker processes)")
        raw_child, raw_info = start_raw(tmp)
        stack.callback(stop, raw_child)
        from bench.zmqpool import TaskPool

        pool = TaskPool(raw_info["addr"])
        stack.callback(pool.close)

        log("starting Dask (scheduler + 2 worker processes x 1 thread, nanny) on 127.0.0.1")
        dask = start_dask(tmp, nthreads=1, nworkers=2, nanny=True)
        stack.callback(dask.stop)
        from distributed import Client as DaskClient

        dclient = DaskClient(dask.address, timeout=60)
        stack.callback(dclient.close)

        log("starting the mesh agent (secure, 2 slots)")
        agent = start_agent(tmp, name="bench-tasks", cpus=2, secure=True)
        stack.callback(stop, agent.child)
        if agent.issues:
            res["mesh_contract_issues"] = agent.issues
        mclient = connect(agent.comm, timeout=10.0, key=agent.key)
        stack.callback(mclient.close)
        res["mesh_local_socket"] = mclient.local_path is not None
        from mesh.client.client import Client

        tclient = Client(agent.comm, timeout=10.0, key=agent.key, local=False)  # (b) over TCP
        stack.callback(tclient.close)
        mesh_tcp = Mesh(tclient)

        mesh, dsk, raw = Mesh(mclient), DaskSide(dclient), RawSide(pool)
        res["pids"] = {"mesh_agent": agent.pid, "dask_scheduler": dask.scheduler.pid,
                       "dask_workers": dask.worker_pids, "raw_broker": raw_child.pid,
                       "client": os.getpid()}

        # warm up: worker start, imports, connections, code paths
        log("warming up every system")
        for _ in range(50):
            mesh.round_trip()
            mesh_tcp.round_trip()
            dsk.round_trip()
            raw.round_trip()
        mesh.throughput_task(200)
        mesh.throughput_submit(200)
        dsk.throughput(200)
        raw.throughput(200)
        for side in (mesh, dsk, raw):
            _, v = side.tree(16)
            if v != 16 * 15 // 2:
                raise BenchError(f"{side.name}: 16-leaf tree gave {v}, expected 120")

        # (a) throughput
        log(f"(a) throughput: {n_tasks} no-ops x {rounds} round(s) per system")
        runs: dict[str, list[float]] = {"mesh_task": [], "mesh_submit": [], "dask": [], "raw": []}
        fns = {"mesh_task": mesh.throughput_task, "mesh_submit": mesh.throughput_submit,
               "dask": dsk.throughput, "raw": raw.throughput}
        for order in _rotations(list(fns), rounds):
            for name in order:
                runs[name].append(n_tasks / fns[name](n_tasks))
        for name, tps in runs.items():
            res[f"a_{name}_tasks_s"] = round(statistics.median(tps))
            res[f"a_{name}_tasks_s_runs"] = [round(x) for x in tps]
        for mname in ("mesh_task", "mesh_submit"):
            res[f"a_ratio_{mname}_over_raw"] = ratio(res[f"a_{mname}_tasks_s"], res["a_raw_tasks_s"])
            res[f"a_ratio_{mname}_over_dask"] = ratio(res[f"a_{mname}_tasks_s"], res["a_dask_tasks_s"])

        # (b) sequential round trips
        log(f"(b) {n_rtt} sequential no-op round trips per system, rotating blocks of {BLOCK}")
        rtt: dict[str, list[float]] = {"mesh": [], "mesh_tcp": [], "dask": [], "raw": []}
        sides = {"mesh": mesh, "dask": dsk, "raw": raw}
        rtt_sides = dict(sides, mesh_tcp=mesh_tcp)
        for order in _rotations(list(rtt_sides), math.ceil(n_rtt / BLOCK)):
            for name in order:
                fn = rtt_sides[name].round_trip
                for _ in range(min(BLOCK, n_rtt - len(rtt[name]))):
                    t0 = time.perf_counter()
                    fn()
                    rtt[name].append((time.perf_counter() - t0) * 1e6)
        for name, us in rtt.items():
            res[f"b_{name}_rtt_median_us"] = round(statistics.median(us), 1)
            res[f"b_{name}_rtt_p99_us"] = round(pct(us, 99), 1)
            res[f"b_{name}_rtt_mean_us"] = round(statistics.fmean(us), 1)
        for stat in ("median", "p99"):
            for ref in ("raw", "dask"):
                res[f"b_ratio_mesh_over_{ref}_{stat}"] = ratio(res[f"b_mesh_rtt_{stat}_us"],
                                                                res[f"b_{ref}_rtt_{stat}_us"])
            res[f"b_ratio_mesh_tcp_over_raw_{stat}"] = ratio(res[f"b_mesh_tcp_rtt_{stat}_us"],
                                                             res[f"b_raw_rtt_{stat}_us"])

        # (c) reduction tree
        log(f"(c) {leaves}-leaf pairwise reduction tree ({2 * leaves - 1} tasks) x {rounds} "
            "round(s) per system")
        expected = leaves * (leaves - 1) // 2
        walls: dict[str, list[float]] = {"mesh": [], "dask": [], "raw": []}
        for order in _rotations(list(sides), rounds):
            for name in order:
                wall, value = sides[name].tree(leaves)
                if value != expected:
                    raise BenchError(f"{name}: the tree gave {value}, expected {expected}")
                walls[name].append(wall)
        for name, w in walls.items():
            res[f"c_{name}_tree_s"] = round(statistics.median(w), 4)
            res[f"c_{name}_tree_s_runs"] = [round(x, 4) for x in w]
        for ref in ("raw", "dask"):
            res[f"c_ratio_mesh_over_{ref}"] = ratio(res["c_mesh_tree_s"], res[f"c_{ref}_tree_s"])

        for pid, what in ((agent.pid, "the mesh agent"), (raw_child.pid, "the raw dispatcher"),
                          (dask.scheduler.pid, "the dask scheduler"),
                          (dask.worker.pid, "the dask workers")):
            assert_loopback(pid, what)
        mclient.close()
        tclient.close()
        res["mesh_agent_stop"] = stop(agent.child)["how"]

    full = not quick
    res["targets"] = {
        "tasks_s": {"target": f">= {TARGET_TPS}", "mesh_task": res["a_mesh_task_tasks_s"],
                    "mesh_submit": res["a_mesh_submit_tasks_s"],
                    "met": res["a_mesh_task_tasks_s"] >= TARGET_TPS if full else None,
                    "met_by_submit": res["a_mesh_submit_tasks_s"] >= TARGET_TPS if full else None},
        "rtt_median_us": {"target": f"<= {TARGET_RTT_US}", "mesh": res["b_mesh_rtt_median_us"],
                          "met": res["b_mesh_rtt_median_us"] <= TARGET_RTT_US},
        "tree_s": {"target": f"<= {TARGET_TREE_S} (1,024 leaves)", "mesh": res["c_mesh_tree_s"],
                   "met": res["c_mesh_tree_s"] <= TARGET_TREE_S if full else None},
    }
    import dask as _dask
    import zmq

    res["env"] = {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
                  "libzmq": zmq.zmq_version(), "dask": _dask.__version__,
                  "cpu_count": psutil.cpu_count(), "loadavg_1m_start": load_start,
                  "loadavg_1m_end": round(os.getloadavg()[0], 2)}
    res["summary"] = _summary(res, quick)
    return res


def _summary(r: dict[str, Any], quick: bool) -> list[str]:
    t = r["targets"]

    def met(x):
        return "n/a (quick)" if x is None else ("met" if x else "MISSED")

    return [
        f"tasks ({'quick' if quick else 'full'}): mesh vs raw pyzmq vs Dask, 2 worker processes each",
        f"  (a) {r['n_tasks']} no-ops, tasks/s: mesh @task {r['a_mesh_task_tasks_s']}, mesh submit "
        f"{r['a_mesh_submit_tasks_s']}, raw {r['a_raw_tasks_s']}, Dask {r['a_dask_tasks_s']}; "
        f"mesh@task/raw {r['a_ratio_mesh_task_over_raw']}, mesh@task/Dask "
        f"{r['a_ratio_mesh_task_over_dask']}; target {t['tasks_s']['target']}: "
        f"{met(t['tasks_s']['met'])} (@task), {met(t['tasks_s']['met_by_submit'])} (submit)",
        f"  (b) round trip median/p99 us: mesh {r['b_mesh_rtt_median_us']}/{r['b_mesh_rtt_p99_us']}, "
        f"raw {r['b_raw_rtt_median_us']}/{r['b_raw_rtt_p99_us']}, Dask "
        f"{r['b_dask_rtt_median_us']}/{r['b_dask_rtt_p99_us']}; mesh/raw "
        f"{r['b_ratio_mesh_over_raw_median']}, mesh/Dask {r['b_ratio_mesh_over_dask_median']}; "
        f"mesh over TCP+CURVE {r['b_mesh_tcp_rtt_median_us']}/{r['b_mesh_tcp_rtt_p99_us']} "
        f"(/raw {r['b_ratio_mesh_tcp_over_raw_median']}); "
        f"target {t['rtt_median_us']['target']}: {met(t['rtt_median_us']['met'])}",
        f"  (c) {r['tree_leaves']}-leaf tree, s: mesh {r['c_mesh_tree_s']}, raw {r['c_raw_tree_s']}, "
        f"Dask {r['c_dask_tree_s']}; mesh/raw {r['c_ratio_mesh_over_raw']}, mesh/Dask "
        f"{r['c_ratio_mesh_over_dask']}; target {t['tree_s']['target']}: {met(t['tree_s']['met'])}",
    ]
