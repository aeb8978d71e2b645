"""A nemesis program: `python -m bench.nemesis_prog CONFIG_JSON`, run inside a harness host.

It connects to one agent (`mesh.connect`, over its local socket or TCP as the config says)
and, until the config's end time, submits small graphs of mixed calls through the public
API: `@task` calls (`bench.nemesis_tasks`, with dependencies between them, outputs of a few
MB kept at agents, nested tasks, a `time_out`, a task that raises and one that reads its
output) and direct `client.submit` / `client.call` calls. Every call is written to the
history file before it is made (`submit`), and its outcome when it comes (`outcome`: a digest
of the value, or the error's kind); the model (`bench.nemesis_model`) is applied later, by
the checker, not here.

No wait is unbounded: each call has a deadline (`hang_s` after it was made, moved on by any
time this process itself did not run, e.g. while the nemesis stopped it); when it passes the
program writes `hung` and stops waiting for that call (an outcome that still comes is
recorded too, `after_hung`: late, not lost). Values are fetched (`wait_on`) by a small pool
of threads so that one fetch stuck on a frozen agent does not stop the others. When its task
graph has failed (a task failed twice under RETRY: the connection's graph is failed for good,
as documented in mesh.program.api) the program lets what is in flight end, then connects again. After the end time it drains (each call still has its own deadline), writes
`end` with the client's counters and leaves with os._exit (a client stuck in close must not
keep it alive).
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import mesh
from bench import nemesis_model as model
from bench import nemesis_tasks as nt
from mesh.client import client as mclient
from mesh.errors import RemoteError
from mesh.program import runtime as mruntime

POLL_S = 0.05
STALL_S = 1.0  # a turn of the loop this much later than due: the process was stopped


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"RemoteError:{exc.type_name}"
    return type(exc).__name__


class History:
    """Append-only JSON lines (one write per record: records of threads never mix)."""

    def __init__(self, path: str, program: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.program = program

    def write(self, ev: str, **fields: Any) -> None:
        rec = {"ev": ev, "p": self.program, "t": round(time.time(), 3), **fields}
        os.write(self.fd, (json.dumps(rec) + "\n").encode())


@dataclass
class Pending:
    cid: str
    fut: Any  # TaskFuture or concurrent.futures.Future
    deadline: float  # monotonic
    task: bool
    client: int = 0  # id() of the client it was made through
    resolving: bool = False
    gave_up: bool = False


class Program:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.name = cfg["name"]
        self.dir = cfg["dir"]
        self.hang_s = float(cfg["hang_s"])
        self.hist = History(cfg["history"], self.name)
        self.rng = random.Random(f"{cfg['seed']}/{self.name}")
        self.client = None
        self.pending: dict[str, Pending] = {}
        self.lock = threading.Lock()  # pending and the outcome records
        self.done: set[str] = set()
        self.gave_up_ids: dict[str, Pending] = {}
        self.retired: set[int] = set()  # id() of clients this program closed itself
        self.watched: list[Pending] = []  # task calls given up on, still watched
        self.seq = 0
        self.graphs = 0
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="resolve")
        self.late_results = 0
        self.stale_results = 0
        self.connects = 0

    # -- connection ---------------------------------------------------------------------

    def connect(self, until: float) -> bool:
        while time.time() < until:
            try:
                self.client = mesh.connect(self.cfg["agent"], timeout=5.0, local=self.cfg["local"])
                self.connects += 1
                self.hist.write("connect", agent=self.cfg["agent"], local=self.client.local_path is not None)
                return True
            except Exception as exc:  # noqa: BLE001 - recorded, tried again
                self.hist.write("connect_failed", kind=error_kind(exc), msg=str(exc)[:300])
                time.sleep(1.0)
        return False

    def wait_peers(self, until: float) -> None:
        while time.time() < until:
            try:
                if self.client.query("status", timeout=5.0)["peers_alive"] >= self.cfg["peers"]:
                    return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.2)

    def retire_client(self) -> None:
        """Stop using the current client (its graph failed): counters kept, closed in a
        thread that may not return."""
        client, self.client = self.client, None
        if client is None:
            return
        self.retired.add(id(client))
        self.late_results += client.late_results
        rt = mruntime.current(create=False) if mclient.default_client() is client else None
        if rt is not None:
            self.stale_results += rt.stale_results
        threading.Thread(target=client.close, daemon=True).start()

    # -- calls --------------------------------------------------------------------------

    def cid(self) -> str:
        self.seq += 1
        return f"{self.name}-{self.seq:06d}"

    def _submit(self, op: str, args: list, via: str, make) -> str:
        """Record then make one call; `make()` returns its future (or raises)."""
        cid = self.cid()
        self.hist.write("submit", cid=cid, op=op, args=args, via=via)
        try:
            fut = make(cid)
        except Exception as exc:  # noqa: BLE001 - the call's outcome, recorded
            self._outcome(cid, False, exc)
            return cid
        p = Pending(cid, fut, time.monotonic() + self.hang_s, task=via == "task",
                    client=id(self.client))
        with self.lock:
            self.pending[cid] = p
        if not p.task:
            fut.add_done_callback(lambda f, cid=cid: self._call_done(cid, f))
        return cid

    def _call_done(self, cid: str, fut) -> None:
        try:
            value = fut.result(0)
        except BaseException as exc:  # noqa: BLE001
            self._outcome(cid, False, exc)
        else:
            self._outcome(cid, True, value)

    def _outcome(self, cid: str, ok: bool, value: Any) -> None:
        with self.lock:
            p = self.pending.pop(cid, None)
            given_up = self.gave_up_ids.get(cid) if p is None and cid not in self.done else None
            self.done.add(cid)
        extra: dict[str, Any] = {"after_hung": True} if given_up is not None else {}
        if given_up is not None and given_up.client in self.retired:
            extra["self_inflicted"] = True  # (closing the client failed it: no answer)
        if ok:
            self.hist.write("outcome", cid=cid, ok=True, value=model.value_digest(value), **extra)
        else:
            self.hist.write("outcome", cid=cid, ok=False, kind=error_kind(value),
                            msg=str(value)[:300], **extra)

    def _resolve(self, p: Pending) -> None:
        try:
            value = mesh.wait_on(p.fut)
        except BaseException as exc:  # noqa: BLE001
            self._outcome(p.cid, False, exc)
        else:
            self._outcome(p.cid, True, value)

    def submit_graph(self) -> None:
        """One graph of mixed calls (see the module docstring), its shape drawn from the
        program's seeded generator. A call that raised when it was made has no future: the
        calls that would read it are not made."""
        rng, d = self.rng, self.dir
        self.graphs += 1
        x = rng.randrange(model.MOD)

        def task(op, args, make):
            cid = self._submit(op, args, "task", make)
            with self.lock:
                p = self.pending.get(cid)
            return cid, (p.fut if p is not None else None)

        ca, fa = task("noop", [x], lambda c: nt.t_noop(c, d, x))
        if fa is not None:
            cb, fb = task("cpu", [{"ref": ca}], lambda c: nt.t_cpu(c, d, fa))
            if fb is not None:
                task("add", [{"ref": ca}, {"ref": cb}], lambda c: nt.t_add(c, d, fa, fb))
        if rng.random() < 0.35:
            size = rng.choice((1, 2, 3, 4)) * 1024 * 1024
            ck, fk = task("big", [x, size], lambda c: nt.t_big(c, d, x, size))
            if fk is not None:
                task("digest", [{"ref": ck}], lambda c: nt.t_digest(c, d, fk))
        if rng.random() < 0.3:
            task("nested", [x, 3], lambda c: nt.t_nested(c, d, x, 3))
        if rng.random() < 0.2:
            sleep_s, time_out = rng.choice(((0.05, 5.0), (0.1, 3.0), (3.0, 1.0)))
            task("slow", [x, sleep_s, time_out],
                 lambda c: nt.t_slow(time_out)(c, d, x, sleep_s, time_out))
        if rng.random() < 0.2:
            ce, fe = task("boom", [x], lambda c: nt.t_boom(c, d, x))
            if fe is not None:
                task("after", [{"ref": ce}], lambda c: nt.t_after(c, d, fe))
        client = self.client
        self._submit("noop", [x + 1], "call",
                     lambda c: client.call("bench.nemesis_tasks:p_noop", (c, d, x + 1)))
        self._submit("cpu", [x + 2], "submit", lambda c: client.submit(nt.p_cpu, c, d, x + 2))
        if rng.random() < 0.2:
            size = rng.choice((1, 2, 3)) * 1024 * 1024
            self._submit("big", [x + 3, size], "submit",
                         lambda c: client.submit(nt.p_big, c, d, x + 3, size))
        if rng.random() < 0.15:
            self._submit("boom", [x + 4], "submit", lambda c: client.submit(nt.p_boom, c, d, x + 4))

    # -- the loop -----------------------------------------------------------------------

    def poll(self, now: float) -> None:
        with self.lock:
            items = list(self.pending.values())
        for p in items:
            if p.task and not p.resolving:
                try:
                    finished = p.fut.done()
                except Exception:  # noqa: BLE001
                    finished = False
                if finished:
                    p.resolving = True
                    self.pool.submit(self._resolve, p)
            if now >= p.deadline:
                with self.lock:
                    if self.pending.pop(p.cid, None) is None:
                        continue
                    self.gave_up_ids[p.cid] = p
                    if p.task and not p.resolving:
                        self.watched.append(p)
                self.hist.write("hung", cid=p.cid, waited_s=self.hang_s, resolving=p.resolving,
                                **self._ids(p))
        # calls given up on: an outcome that still comes is recorded (late, not lost)
        for p in list(self.watched):
            try:
                finished = p.fut.done()
            except Exception:  # noqa: BLE001
                finished = False
            if finished:
                self.watched.remove(p)
                p.resolving = True
                self.pool.submit(self._resolve, p)

    def _ids(self, p: Pending) -> dict:
        """Evidence to find a call in the agents' logs: its mesh call id (for a task, that
        of its running attempt, read from the runtime: best effort) and task id."""
        if not p.task:
            return {"call_id": getattr(p.fut, "call_id", None)}
        out = {"task_id": getattr(p.fut, "task_id", None)}
        rt = p.fut.runtime
        if not rt.lock.acquire(timeout=1.0):
            out["runtime_lock"] = "held for 1 s"
            return out
        try:
            out["call_id"] = rt._call_id.get(out["task_id"])
            state = rt.graph.task_state(out["task_id"])
            out["state"] = getattr(state, "name", str(state))
        except Exception:  # noqa: BLE001
            pass
        finally:
            rt.lock.release()
        return out

    def graph_failed(self) -> str | None:
        if self.client is None or mclient.default_client() is not self.client:
            return None
        rt = mruntime.current(create=False)
        return None if rt is None or rt.failure is None else str(rt.failure)[:300]

    def run(self) -> None:
        cfg = self.cfg
        end = cfg["end"]
        if not self.connect(end):
            return
        self.wait_peers(min(end, time.time() + 60))
        self.hist.write("start", agent=cfg["agent"])
        last = time.monotonic()
        next_graph = 0.0
        while time.time() < end:
            now = time.monotonic()
            self._stalled(now - last)
            last = now
            failure = self.graph_failed()
            if failure is not None:
                with self.lock:
                    left = bool(self.pending)
                if not left:  # (what was in flight ended, or was given up)
                    self.hist.write("graph_failed", cause=failure)
                    self.retire_client()
            if self.client is None:
                if not self.connect(end):
                    break
                last = time.monotonic()  # (the time connecting was no stall)
            elif failure is None and now >= next_graph and len(self.pending) < cfg["max_inflight"]:
                self.submit_graph()
                next_graph = now + cfg["pace_s"]
            self.poll(now)
            time.sleep(POLL_S)
        # drain: every call keeps its own deadline
        while True:
            now = time.monotonic()
            self._stalled(now - last)
            last = now
            self.poll(now)
            with self.lock:
                if not self.pending:
                    break
            time.sleep(POLL_S)

    def _stalled(self, gap: float) -> None:
        """The loop ran `gap` seconds after its last turn: beyond STALL_S this process did not
        run (stopped by the nemesis): that time is no call's fault."""
        if gap < STALL_S:
            return
        with self.lock:
            for p in self.pending.values():
                p.deadline += gap
        self.hist.write("stalled", gap_s=round(gap, 2))

    def finish(self) -> None:
        client = self.client
        if client is not None:
            self.late_results += client.late_results
            rt = mruntime.current(create=False)
            if rt is not None:
                self.stale_results += rt.stale_results
        self.hist.write("end", graphs=self.graphs, calls=self.seq, late_results=self.late_results,
                        stale_results=self.stale_results, connects=self.connects)


def main() -> None:
    faulthandler.register(signal.SIGUSR1)  # the bench asks for our stacks before it kills us
    cfg = json.loads(sys.argv[1])
    prog = Program(cfg)
    code = 0
    try:
        prog.run()
    except BaseException as exc:  # noqa: BLE001 - recorded; the checker counts what is left as lost
        prog.hist.write("program_error", kind=error_kind(exc), msg=str(exc)[:500])
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        try:
            prog.finish()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


if __name__ == "__main__":
    main()
