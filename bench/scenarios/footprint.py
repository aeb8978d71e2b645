"""Idle footprint of one 2-slot agent (ready time, RSS/USS, idle CPU) vs an idle Dask worker and bare pyzmq.

Sequence: the agent starts alone (so its start-up does not compete with Dask's for CPU), then a
bare pyzmq process and a Dask scheduler + worker (nanny, 1 process x 2 threads) start; after a
settle delay all are measured at the same moment, then their CPU use is read over one shared
idle window. `ratio_agent_vs_dask` compares the summed RSS of the whole agent tree (agent + its
workers) with that of the whole `dask worker` tree (nanny + worker process): what each system
keeps resident on a device. RSS sums double-count pages shared by forked children, so
`ratio_agent_vs_dask_pss` (proportional set size, Linux) is the fairer tree comparison.
The agent is measured in the bench's base configuration (secure with a fresh mesh key, mDNS
off, REST off), and a second agent, started alone right after the first, in the real default
configuration of `join` (mDNS on, pinned to 127.0.0.1 by `--interface`, and REST on an ephemeral
port; same slot count): keys `default_config_*`. `default_config_extra_rss_mb` is what mDNS
(zeroconf's import, its event-loop thread, sockets and caches; estimated ~10 MB beforehand)
and the REST server add to the agent process on top of the base configuration.
If the agent cannot start, the comparators are still measured and reported, but the result
carries "error" and the run exits 1; no agent figures are invented.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    CpuWindow,
    assert_loopback,
    log,
    ratio,
    start_agent,
    stop,
    tree_memory,
)
from bench.refs import start_bare_pyzmq, start_dask

TARGETS = {"agent_rss_mb": 30, "idle_cpu_pct": 1, "ready_s": 0.5}
SLOTS = 2



def _check_loopback(roots: dict[str, int], mdns: set[str] = frozenset()) -> None:
    for name, pid in roots.items():
        assert_loopback(pid, name, allow_mdns=name in mdns)


def run(quick: bool = False) -> dict[str, Any]:
    errors: list[str] = []
    try:
        return _run(quick, errors)
    except BenchError as exc:  # keep an earlier agent failure in the message
        raise BenchError("\n".join([*errors, str(exc)])) from None


def _run(quick: bool, errors: list[str]) -> dict[str, Any]:
    settle = 1.0 if quick else 2.0
    window = 5.0 if quick else 30.0
    res: dict[str, Any] = {"scenario": "footprint", "slots": SLOTS}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        agent = default = None
        log("starting the mesh agent alone (secure, no mDNS, no REST)")
        try:
            agent = start_agent(tmp, cpus=SLOTS)
            stack.callback(stop, agent.child)
            res["agent_secure"] = agent.key is not None
            res["ready_s"] = round(agent.ready_s, 4)
            res["agent_pid"] = agent.pid
            if agent.issues:
                res["contract_issues"] = agent.issues
            log(f"agent ready in {agent.ready_s:.3f} s: {agent.state}")
        except BenchError as exc:
            errors.append(str(exc))
            log(f"AGENT FAILED: {str(exc).splitlines()[0]}")
            log("measuring the comparators anyway; the run will exit 1")
        log("starting a second agent alone in join's default configuration "
            "(secure, mDNS on 127.0.0.1, REST on)")
        try:
            default = start_agent(tmp, name="bench-default", cpus=SLOTS, mdns=True, rest=True)
            stack.callback(stop, default.child)
            res["default_config"] = "secure, mDNS on 127.0.0.1, REST on 127.0.0.1:0"
            res["default_config_ready_s"] = round(default.ready_s, 4)
            if default.issues:
                res["default_config_contract_issues"] = default.issues
            log(f"default-config agent ready in {default.ready_s:.3f} s: {default.state}")
        except BenchError as exc:
            errors.append(f"default-config agent: {exc}")
            log(f"DEFAULT-CONFIG AGENT FAILED: {str(exc).splitlines()[0]}")

        log("starting bare pyzmq and Dask (scheduler + 1 worker x 2 threads) on 127.0.0.1")
        zmq_child, _ = start_bare_pyzmq(tmp)
        stack.callback(stop, zmq_child)
        dask = start_dask(tmp, nthreads=SLOTS)
        stack.callback(dask.stop)

        roots = {"bare_pyzmq": zmq_child.pid, "dask_worker": dask.worker.pid,
                 "dask_scheduler": dask.scheduler.pid}
        if default is not None:
            roots = {"default_config": default.pid, **roots}
        if agent is not None:
            roots = {"agent": agent.pid, **roots}
        _check_loopback(roots, mdns={"default_config"})
        time.sleep(settle)  # let the idle processes settle before measuring (not synchronisation)
        mem = {name: tree_memory(pid) for name, pid in roots.items()}
        log(f"measuring idle CPU over {window:.0f} s")
        cpu_window = CpuWindow(roots)
        time.sleep(window)
        cpu = cpu_window.finish()
        _check_loopback(roots, mdns={"default_config"})
        res["idle_window_s"] = cpu["window_s"]

        if agent is not None:
            if agent.child.popen.poll() is not None:
                errors.append(f"agent exited during the idle window (code "
                              f"{agent.child.popen.returncode}):\n{agent.child.tail()}")
            a = mem["agent"]
            res.update({
                "agent_rss_mb": a["root"]["rss_mb"],
                "agent_uss_mb": a["root"].get("uss_mb"),
                "worker_rss_mb": [c["rss_mb"] for c in a["children"]],
                "worker_uss_mb": [c.get("uss_mb") for c in a["children"]],
                "agent_tree_rss_mb": a["total_rss_mb"],
                "agent_tree_uss_mb": a.get("total_uss_mb"),
                "agent_tree_pss_mb": a.get("total_pss_mb"),
                "idle_cpu_pct": cpu["agent"],
            })
            stopped = stop(agent.child)
            res.update({"agent_stop": stopped["how"], "agent_stop_s": stopped["stop_s"],
                        "agent_exit_code": stopped["returncode"],
                        "agent_orphans": stopped["orphans"]})
            if stopped["how"] != "graceful" or stopped["orphans"]:
                log(f"agent did not stop cleanly on SIGTERM: {stopped}")

        if default is not None:
            if default.child.popen.poll() is not None:
                errors.append(f"default-config agent exited during the idle window (code "
                              f"{default.child.popen.returncode}):\n{default.child.tail()}")
            a = mem["default_config"]
            res.update({
                "default_config_agent_rss_mb": a["root"]["rss_mb"],
                "default_config_agent_uss_mb": a["root"].get("uss_mb"),
                "default_config_agent_tree_rss_mb": a["total_rss_mb"],
                "default_config_agent_tree_pss_mb": a.get("total_pss_mb"),
                "default_config_idle_cpu_pct": cpu["default_config"],
            })
            if res.get("agent_rss_mb") is not None:
                res["default_config_extra_rss_mb"] = round(
                    res["default_config_agent_rss_mb"] - res["agent_rss_mb"], 2)
            stopped = stop(default.child)
            res.update({"default_config_stop": stopped["how"],
                        "default_config_stop_s": stopped["stop_s"],
                        "default_config_orphans": stopped["orphans"]})

        d, s, z = mem["dask_worker"], mem["dask_scheduler"], mem["bare_pyzmq"]
        workers = [p for p in d["children"] if p["pid"] in dask.worker_pids]
        res.update({
            "dask_worker_rss_mb": round(sum(p["rss_mb"] for p in workers), 2),
            "dask_worker_uss_mb": round(sum(p.get("uss_mb", 0.0) for p in workers), 2),
            "dask_nanny_rss_mb": d["root"]["rss_mb"],
            "dask_worker_tree_rss_mb": d["total_rss_mb"],
            "dask_worker_tree_uss_mb": d.get("total_uss_mb"),
            "dask_worker_tree_pss_mb": d.get("total_pss_mb"),
            "dask_worker_idle_cpu_pct": cpu["dask_worker"],
            "dask_scheduler_rss_mb": s["total_rss_mb"],
            "dask_scheduler_idle_cpu_pct": cpu["dask_scheduler"],
            "bare_pyzmq_rss_mb": z["root"]["rss_mb"],
            "bare_pyzmq_uss_mb": z["root"].get("uss_mb"),
            "bare_pyzmq_idle_cpu_pct": cpu["bare_pyzmq"],
        })
        res["ratio_agent_vs_dask"] = ratio(res.get("agent_tree_rss_mb"),
                                            res["dask_worker_tree_rss_mb"])
        res["ratio_agent_vs_dask_pss"] = ratio(res.get("agent_tree_pss_mb"),
                                                res["dask_worker_tree_pss_mb"])
        res["ratio_agent_vs_bare_pyzmq"] = ratio(res.get("agent_rss_mb"),
                                                  res["bare_pyzmq_rss_mb"])
        res["dask_stop"] = {k: v["how"] for k, v in dask.stop().items()}

    res["targets"] = TARGETS
    res["meets_targets"] = {k: (res[k] <= v if res.get(k) is not None else None)
                            for k, v in TARGETS.items()}
    res["env"] = _env()
    res["summary"] = _summary(res, quick)
    if errors:
        res["error"] = "\n".join(errors)
    return res


def _env() -> dict[str, Any]:
    import distributed
    import psutil
    import zmq

    return {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "distributed": distributed.__version__,
            "cpu_count": psutil.cpu_count(), "platform": sys.platform,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def _summary(r: dict[str, Any], quick: bool) -> list[str]:
    def f(key: str, unit: str = "") -> str:
        v = r.get(key)
        return "n/a" if v is None else f"{v}{unit}"

    return [
        f"footprint ({'quick' if quick else 'full'}, "
        f"idle window {f('idle_window_s', ' s')})",
        f"  mesh agent : (secure, no mDNS/REST) ready {f('ready_s', ' s')}, RSS {f('agent_rss_mb', ' MB')} "
        f"(USS {f('agent_uss_mb', ' MB')}), workers RSS {f('worker_rss_mb')}, "
        f"tree RSS {f('agent_tree_rss_mb', ' MB')} (PSS {f('agent_tree_pss_mb', ' MB')}), idle CPU {f('idle_cpu_pct', ' %')}",
        f"  default cfg: (mDNS + REST on) ready {f('default_config_ready_s', ' s')}, RSS "
        f"{f('default_config_agent_rss_mb', ' MB')} (USS {f('default_config_agent_uss_mb', ' MB')}, "
        f"+{f('default_config_extra_rss_mb', ' MB')} vs base), idle CPU "
        f"{f('default_config_idle_cpu_pct', ' %')}",
        f"  dask worker: worker RSS {f('dask_worker_rss_mb', ' MB')}, nanny RSS "
        f"{f('dask_nanny_rss_mb', ' MB')}, tree RSS {f('dask_worker_tree_rss_mb', ' MB')} "
        f"(PSS {f('dask_worker_tree_pss_mb', ' MB')}), "
        f"idle CPU {f('dask_worker_idle_cpu_pct', ' %')}; scheduler RSS "
        f"{f('dask_scheduler_rss_mb', ' MB')}",
        f"  bare pyzmq : RSS {f('bare_pyzmq_rss_mb', ' MB')} (USS {f('bare_pyzmq_uss_mb', ' MB')}), "
        f"idle CPU {f('bare_pyzmq_idle_cpu_pct', ' %')}",
        f"  ratios     : agent tree / dask worker tree {f('ratio_agent_vs_dask')} "
        f"(PSS {f('ratio_agent_vs_dask_pss')}), "
        f"agent / bare pyzmq {f('ratio_agent_vs_bare_pyzmq')}",
    ]
