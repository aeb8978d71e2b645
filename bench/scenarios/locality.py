"""Locality: a data-heavy pipeline (C chains x K stages of S-byte objects); mesh with outputs kept where made vs everything inline through the program vs Dask.

The workload: C independent chains (8; 4 with --quick) of K stages (4): stage 0 makes an
S-byte object (4 MB; 1 MB with --quick), each next stage reads the previous stage's output
and returns a new object of the same size (a byte translation and a rotation, plus ~5 ms of
pure-Python CPU), a last task per chain returns a small digest (length and SHA-256), and the
program waits for the C digests and checks them against values computed locally beforehand
(a wrong digest fails the run). Task bodies are the plain functions of this module
(`bench.scenarios.locality`), imported by the workers of every system.

Three systems run side by side in the same run, on 127.0.0.1, all started at the beginning
(only one is driven at a time, in rotating order from round to round):
- `locality`: a mesh of 3 secure agents (`--no-mdns`, REST off): the program's agent with
  no slot (`--cpus 0`: the device the program runs on only routes, like a laptop or gateway
  driving devices) and 2 one-slot agents seeded with its address. Outputs over 100 kB stay
  in the store of the agent that made them (the default); the program gets a `Ref`.
- `inline`: the same layout with `MESH_INLINE_MAX=0` in every agent's environment: every
  output travels back to the program's agent and from there to the next reader (the
  behaviour before the feature).
- `dask`: Dask distributed, `dask scheduler` + `dask worker --nworkers 2 --nthreads 1`
  (nanny), the same functions as `client.submit` chains, `gather` of the digests.
Makespan (first call to the last digest in hand) is the median of R rounds (3; 1 with
--quick), after one untimed warm-up pipeline per system. For the mesh variants the figures
per round are: bytes received by the program's agent (`status["bytes"]["in"]` delta) and the
sum over all agents of the object counters (`objects`: put, put_bytes, local_reads, served,
served_bytes, fetched, fetched_bytes), so one can see how many bytes no longer go through the
program. The machine has 2 cores shared by all of it (and by other work: see `cpu`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    Agent,
    BenchError,
    MachineCpu,
    assert_loopback,
    calibrate_spin,
    log,
    ratio,
    spin,
    start_agent,
    stop_all,
    wait_members,
    workdir,
)
from bench.refs import start_dask

STAGE_CPU_S = 0.005
RESULT_TIMEOUT_S = 120
OBJ_KEYS = ("put", "put_bytes", "local_reads", "served", "served_bytes", "fetched",
            "fetched_bytes", "cache_hits", "worker_hits", "lost", "refused")
VARIANTS = ("locality", "inline", "dask")


# -- the task bodies (module level: workers import them as bench.scenarios.locality.*) ----------

def _table(k: int) -> bytes:
    """A byte permutation for stage k (odd multiplier mod 256 is a bijection)."""
    return bytes(((b * (2 * k + 3)) + k + 1) % 256 for b in range(256))


def make(chain: int, size: int, work: int) -> bytearray:
    """Stage 0: an S-byte object, different for every chain."""
    spin(work)
    seed = hashlib.sha256(f"chain {chain}".encode()).digest()
    out = bytearray(seed * (size // len(seed) + 1))
    del out[size:]
    return out


def stage(data: bytes, k: int, work: int) -> bytes:
    """Stage k: a new object of the same size (bytes translated, then rotated)."""
    spin(work)
    t = data.translate(_table(k))
    r = (k * 7919 + 1) % max(len(t), 1)
    return t[r:] + t[:r]


def digest(data: bytes) -> tuple[int, str]:
    """The chain's last task: a small digest of its last object."""
    return len(data), hashlib.sha256(data).hexdigest()[:16]


def expected_digests(chains: int, stages: int, size: int) -> list[tuple[int, str]]:
    out = []
    for c in range(chains):
        x: Any = make(c, size, 0)
        for k in range(1, stages):
            x = stage(x, k, 0)
        out.append(digest(x))
    return out


class MeshSide:
    """One 3-agent mesh: `p` (the program's agent, no slot) and w1, w2 (one slot each)."""

    def __init__(self, tmp: Path, label: str, env: dict[str, str]) -> None:
        self.label = label
        self.agents: list[Agent] = []
        self.clients: list[Any] = []
        from mesh.client.client import Client

        p = start_agent(tmp, f"{label}-p", 0, [], env=env)
        self.agents.append(p)
        for i in (1, 2):
            self.agents.append(start_agent(tmp, f"{label}-w{i}", 1, ["--peer", p.comm], env=env))
        self.clients = [Client(a.comm, timeout=10.0, key=a.key) for a in self.agents]

    @property
    def program(self) -> Agent:
        return self.agents[0]

    def names(self) -> list[str]:
        return [a.state["name"] for a in self.agents]

    def statuses(self) -> list[dict]:
        return [c.query("status", timeout=10.0) for c in self.clients]

    def pipeline(self, chains: int, stages: int, size: int, work: int) -> tuple[float, list]:
        """Connect a program to `p`, run the pipeline, return (makespan, digests)."""
        import mesh
        from mesh.program.api import task, wait_on

        make_t, stage_t, digest_t = task(make), task(stage), task(digest)
        with mesh.connect(self.program.comm, timeout=10.0, key=self.program.key):
            t0 = time.perf_counter()
            outs = []
            for c in range(chains):
                x = make_t(c, size, work)
                for k in range(1, stages):
                    x = stage_t(x, k, work)
                outs.append(digest_t(x))
            values = wait_on(outs)
            wall = time.perf_counter() - t0
            # the program still holds the last chain's future: released before disconnecting,
            # its output is freed at its holder (nothing frees it once the program is gone)
            del x, outs
        return wall, [tuple(v) for v in values]

    def close(self) -> None:
        for c in self.clients:
            c.close()
        stop_all([a.child for a in self.agents])


class DaskSide:
    def __init__(self, tmp: Path) -> None:
        from distributed import Client as DaskClient

        self.dask = start_dask(tmp, nthreads=1, nworkers=2, nanny=True)
        try:
            self.client = DaskClient(self.dask.address, timeout=60)
        except BaseException:
            self.dask.stop()
            raise

    def pipeline(self, chains: int, stages: int, size: int, work: int) -> tuple[float, list]:
        c = self.client
        t0 = time.perf_counter()
        outs = []
        for ch in range(chains):
            x = c.submit(make, ch, size, work, pure=False)
            for k in range(1, stages):
                x = c.submit(stage, x, k, work, pure=False)
            outs.append(c.submit(digest, x, pure=False))
        values = c.gather(outs)
        wall = time.perf_counter() - t0
        return wall, [tuple(v) for v in values]

    def close(self) -> dict:
        try:
            self.client.close()
        except Exception as exc:  # still stop the processes
            log(f"closing the Dask client: {exc}")
        return self.dask.stop()


def _objects_sum(statuses: list[dict]) -> dict[str, int]:
    return {k: sum(int(s.get("objects", {}).get(k, 0)) for s in statuses) for k in OBJ_KEYS}


def _rotations(names: list[str], rounds: int):
    for r in range(rounds):
        k = r % len(names)
        yield names[k:] + names[:k]


def run(quick: bool = False) -> dict[str, Any]:
    chains = 4 if quick else 8
    stages = 4
    size = (1 if quick else 4) * 1_000_000
    rounds = 1 if quick else 3
    res: dict[str, Any] = {
        "scenario": "locality", "chains": chains, "stages": stages, "object_bytes": size,
        "tasks_per_round": chains * (stages + 1), "rounds": rounds,
        "layout": "program agent --cpus 0 + 2 agents --cpus 1 (mesh); 2 worker processes x 1 "
                  "thread (Dask)",
        "cpu_count": psutil.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    log(f"calibrating the stage's CPU to ~{STAGE_CPU_S * 1e3:.0f} ms on one core")
    work, t_cal = calibrate_spin(STAGE_CPU_S)
    res["stage_cpu_s"] = round(t_cal, 5)
    log(f"computing the expected digests locally ({chains} chains x {stages} stages of "
        f"{size / 1e6:g} MB)")
    expected = expected_digests(chains, stages, size)

    with workdir("mesh-bench-locality-") as tmp, ExitStack() as stack:
        log("starting the mesh with data locality (3 agents, default MESH_INLINE_MAX)")
        loc = MeshSide(tmp, "loc", {})
        stack.callback(loc.close)
        log("starting the mesh with MESH_INLINE_MAX=0 (3 agents)")
        inl = MeshSide(tmp, "inl", {"MESH_INLINE_MAX": "0"})
        stack.callback(inl.close)
        variants = list(VARIANTS)
        dsk = None
        if importlib.util.find_spec("distributed") is None:  # (CI installs only '.[test]')
            log("Dask is not installed (pip install '.[bench]'): mesh variants only")
            res["dask"] = "not installed (pip install '.[bench]')"
            variants.remove("dask")
        else:
            log("starting Dask (scheduler + 2 worker processes x 1 thread, nanny) on 127.0.0.1")
            dsk = DaskSide(tmp)
            stack.callback(dsk.close)
        sides: dict[str, Any] = {"locality": loc, "inline": inl}
        if dsk is not None:
            sides["dask"] = dsk
        issues = {s.label: [i for a in s.agents for i in a.issues] for s in (loc, inl)}
        if any(issues.values()):
            res["mesh_contract_issues"] = issues
        res["pids"] = {"locality": [a.pid for a in loc.agents], "inline": [a.pid for a in inl.agents],
                       "client": os.getpid()}
        if dsk is not None:
            res["pids"].update(dask_scheduler=dsk.dask.scheduler.pid, dask_workers=dsk.dask.worker_pids)
        for side in (loc, inl):
            wait_members(side.clients, 3, 60.0, f"the {side.label} mesh")

        log("warming up every system (one small untimed pipeline each)")
        warm_expected = expected_digests(2, stages, size)
        for name, side in sides.items():
            _, got = side.pipeline(2, stages, size, work)
            if got != warm_expected:
                raise BenchError(f"{name}: warm-up digests {got} != expected {warm_expected}")

        before = {name: sides[name].statuses() for name in ("locality", "inline")}
        walls: dict[str, list[float]] = {n: [] for n in variants}
        window = MachineCpu()
        log(f"{rounds} round(s) of {chains} chains x {stages} stages + digests per system")
        for order in _rotations(variants, rounds):
            for name in order:
                wall, got = sides[name].pipeline(chains, stages, size, work)
                if got != expected:
                    raise BenchError(f"{name}: digests {got} != expected {expected}")
                walls[name].append(wall)
                log(f"  {name}: {wall:.3f} s")
        res["cpu"] = window.finish()
        after = {name: sides[name].statuses() for name in ("locality", "inline")}
        res["digests_ok"] = True

        for name in variants:
            res[f"{name}_makespan_s"] = round(statistics.median(walls[name]), 4)
            res[f"{name}_makespan_s_runs"] = [round(w, 4) for w in walls[name]]
        for name in ("locality", "inline"):
            b, a = before[name], after[name]
            side = sides[name]

            def per_round(x: float) -> float:
                return round(x / rounds, 1)

            per_agent = {}
            for nm, s0, s1 in zip(side.names(), b, a, strict=True):
                row = {k: per_round(int(s1["objects"].get(k, 0)) - int(s0["objects"].get(k, 0)))
                       for k in OBJ_KEYS}
                row["bytes_in"] = per_round(s1["bytes"]["in"] - s0["bytes"]["in"])
                row["done"] = per_round(s1["done"] - s0["done"])  # the status counter: calls answered
                row["forwarded"] = per_round(s1["forwarded"] - s0["forwarded"])
                per_agent[nm] = row
            objs0, objs1 = _objects_sum(b), _objects_sum(a)
            res[name] = {
                "program_bytes_in_per_round": per_round(a[0]["bytes"]["in"] - b[0]["bytes"]["in"]),
                "objects_per_round": {k: per_round(objs1[k] - objs0[k]) for k in OBJ_KEYS},
                "workers_bytes_in_per_round": per_round(sum(s1["bytes"]["in"] - s0["bytes"]["in"]
                                                            for s0, s1 in zip(b[1:], a[1:], strict=True))),
                "per_agent_per_round": per_agent,
                # still stored after every pipeline (warm-up included) has ended and been released
                "objects_left": {nm: int(s["objects"].get("objects", 0))
                                 for nm, s in zip(side.names(), a, strict=True)},
            }
            for ag in side.agents:
                assert_loopback(ag.pid, f"agent {ag.state['name']}")
        if dsk is not None:
            assert_loopback(dsk.dask.scheduler.pid, "the dask scheduler")
            assert_loopback(dsk.dask.worker.pid, "the dask workers")

        # what the program's agent would receive if every output came back: C*K objects
        res["data_bytes_per_round"] = chains * stages * size
        res["ratio_locality_over_inline"] = ratio(res["locality_makespan_s"], res["inline_makespan_s"])
        if dsk is not None:
            res["ratio_locality_over_dask"] = ratio(res["locality_makespan_s"], res["dask_makespan_s"])
            res["ratio_inline_over_dask"] = ratio(res["inline_makespan_s"], res["dask_makespan_s"])
        li, ii = res["locality"]["program_bytes_in_per_round"], res["inline"]["program_bytes_in_per_round"]
        res["program_bytes_in_saved_per_round"] = ii - li
        res["program_bytes_in_ratio_locality_over_inline"] = ratio(li, ii, 4)
        res["feature_active"] = {"locality_puts": res["locality"]["objects_per_round"]["put"] > 0,
                                 "inline_puts_zero": res["inline"]["objects_per_round"]["put"] == 0}
        stops: dict[str, str] = {}
        for side in (loc, inl):
            side.close()
            stops.update({a.state["name"]: a.child.stopped["how"] for a in side.agents})
        dstops = dsk.close() if dsk is not None else {}
        res["stops"] = {**stops, **{f"dask_{k}": v["how"] for k, v in dstops.items()}}
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["summary"] = _summary(res, quick)
    return res


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _summary(r: dict[str, Any], quick: bool) -> list[str]:
    lines = [
        f"locality ({'quick' if quick else 'full'}): {r['chains']} chains x {r['stages']} stages of "
        f"{_mb(r['object_bytes'])} objects + a digest each ({r['tasks_per_round']} tasks, "
        f"~{r['stage_cpu_s'] * 1e3:.0f} ms CPU per stage), median of {r['rounds']} round(s)",
        f"  makespan s: mesh locality {r['locality_makespan_s']}, mesh inline (MESH_INLINE_MAX=0) "
        f"{r['inline_makespan_s']}, " + (
            f"Dask {r['dask_makespan_s']}; locality/inline {r['ratio_locality_over_inline']}, "
            f"locality/Dask {r['ratio_locality_over_dask']}, inline/Dask {r['ratio_inline_over_dask']}"
            if "dask_makespan_s" in r else
            f"Dask {r['dask']}; locality/inline {r['ratio_locality_over_inline']}"),
    ]
    for name in ("locality", "inline"):
        v, o = r[name], r[name]["objects_per_round"]
        lines.append(
            f"  {name}, per round: program's agent received {_mb(v['program_bytes_in_per_round'])}; "
            f"over all agents put {o['put']} ({_mb(o['put_bytes'])}), local reads {o['local_reads']} (+{o['worker_hits']} in the worker), "
            f"served {_mb(o['served_bytes'])}, fetched {_mb(o['fetched_bytes'])}; workers' agents "
            f"received {_mb(v['workers_bytes_in_per_round'])}")
    lines.append(
        f"  bytes no longer received by the program's agent: "
        f"{_mb(r['program_bytes_in_saved_per_round'])} per round (stage outputs: "
        f"{_mb(r['data_bytes_per_round'])}; inline, each one reaches it twice: from the worker "
        f"that made it, then from the program in its reader's call); digests checked: "
        f"{'ok' if r['digests_ok'] else 'WRONG'}")
    left = sum(r["locality"]["objects_left"].values())
    if left:
        lines.append(f"  objects still held by the locality mesh's agents after all pipelines ended: "
                     f"{left} (frees posted just before a program disconnects can be lost)")
    c = r["cpu"]
    lines.append(f"  2-core machine shared by 6 agents, Dask and the program; other work used "
                 f"{c['others_cores']} cores meanwhile (machine busy {c['machine_busy_cores']})")
    return lines
