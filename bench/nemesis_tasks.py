"""The task bodies nemesis programs run (plain functions for `client.submit`/`client.call`,
and `@task` versions of them), and their side channel.

Every body first appends one line `CID AGENT PID WALLTIME` to `DIR/exec-AGENT.log` (one
`os.write` of an O_APPEND descriptor: lines of concurrent writers never mix), then works,
then returns the value `bench.nemesis_model` says. The lines are the nemesis' count of
executions per call id, independent of what the mesh reports about itself. Module-level
functions, so cloudpickle sends them by reference (the workers import this module: agents
get the repository root on PYTHONPATH).
"""

from __future__ import annotations

import os
import time

from bench import nemesis_model as model
from mesh import task, wait_on

CPU_S = 0.05


class NemesisBoom(Exception):
    """The exception a `boom` task raises on purpose (the model expects it)."""


def record(cid: str, d: str) -> None:
    agent = os.environ.get("MESH_AGENT_NAME", "local")
    line = f"{cid} {agent} {os.getpid()} {time.time():.3f}\n".encode()
    fd = os.open(os.path.join(d, f"exec-{agent}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def p_noop(cid: str, d: str, x: int) -> int:
    record(cid, d)
    return x


def p_cpu(cid: str, d: str, x: int) -> int:
    record(cid, d)
    _busy(CPU_S)
    return model.cpu_value(x)


def p_add(cid: str, d: str, a: int, b: int) -> int:
    record(cid, d)
    return model.add_value(a, b)


def p_big(cid: str, d: str, x: int, size: int) -> bytes:
    record(cid, d)
    return model.big_value(x, size)


def p_digest(cid: str, d: str, blob: bytes) -> int:
    record(cid, d)
    return model.digest_value(blob)


def p_slow(cid: str, d: str, x: int, sleep_s: float, time_out: float) -> int:
    record(cid, d)
    time.sleep(sleep_s)
    return x


def p_boom(cid: str, d: str, x: int) -> int:
    record(cid, d)
    raise NemesisBoom(f"boom {x}")


def p_after(cid: str, d: str, y: int) -> int:
    record(cid, d)
    return y


def p_nested(cid: str, d: str, x: int, n: int) -> int:
    """N `cpu` subtasks (call ids CID.0 .. CID.N-1) sent from this worker to its agent."""
    record(cid, d)
    parts = [t_cpu(f"{cid}.{k}", d, x + k) for k in range(n)]
    return sum(wait_on(parts)) % model.MOD


t_noop = task(p_noop)
t_cpu = task(p_cpu)
t_add = task(p_add)
t_big = task(p_big)
t_digest = task(p_digest)
t_nested = task(p_nested)
t_boom = task(p_boom, on_failure="CANCEL_SUCCESSORS")  # ran once, raised once
t_after = task(p_after)


def t_slow(time_out: float):
    """`slow` as a task with this `time_out` (CANCEL_SUCCESSORS: one attempt, no retry)."""
    return task(p_slow, time_out=time_out, on_failure="CANCEL_SUCCESSORS")
