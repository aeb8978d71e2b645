"""Worker processes: the agent's slots, where user code runs.

The agent's loop never runs user code and never unpickles anything: it hands a
call's bytes to a worker process over a socket pair and gets the result's bytes
back. A worker is a fresh interpreter (``python -m mesh.worker``), so a crash, a
segfault or ``os._exit`` in user code costs one call (reported as a failure of that
call) and the worker is started again. Heartbeats are answered by the agent's
loop, so a device whose every slot is busy is still alive.

Frames between agent and worker are CBOR lists:
  agent -> worker: ``[call_id, function, payload, want_json, inline_max, put_room]``
                   (the last two: ``mesh.objects``; bytes the call may keep here), and
                   ``["obj", oid, data or None, error]`` answering a worker's ``get``;
  worker -> agent: ``["ready", pid]`` once, then
                   ``[call_id, ok, value, error_type, error, traceback, json]`` per call,
                   and while a call runs: ``["put", call_id, oid, data]`` (keep this
                   output here), ``["get", call_id, oid, holder]`` (send me this object),
                   ``["hit", call_id, oid]`` (read from the worker's own recent copies),
                   ``["lend", call_id, bool]``, ``["progress", call_id, total, done, failed]``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import cbor2

from mesh.framing import FrameSocket
from mesh.messages import Call, Result

log = logging.getLogger("mesh.executor")

try:  # Linux: a worker is killed when its agent dies, even by SIGKILL (no orphan keeps
    # running a call nobody will collect)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:  # in the child, between fork and exec: no imports here
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Worker:
    proc: subprocess.Popen
    conn: FrameSocket
    call_id: str | None = None  # the call it runs, if any
    ready: bool = False
    lent: bool = False  # its call is blocked waiting for other tasks (slot lent)

    def fileno(self) -> int:
        return self.conn.fileno()


class WorkerPool:
    """``size`` worker processes; the dispatcher never gives it more calls than slots."""

    def __init__(self, size: int, agent_name: str, env: dict | None = None) -> None:
        self.agent_name = agent_name
        self.env = env  # extra environment of workers (how nested tasks reach the agent)
        self.workers: list[Worker] = []
        self.crashes = 0
        self.lends: list[tuple[str, bool]] = []  # (call id, lent?) read by the agent
        self.progress: dict[str, dict] = {}  # call id -> task graph progress (mesh run)
        self.puts: list[tuple[str, str, bytes]] = []  # (call id, oid, data) read by the agent
        self.gets: list[tuple[Worker, str, str]] = []  # (worker, oid, holder) read by the agent
        self.inline_max = 0  # set by the agent: see mesh.objects
        self.worker_hits = 0  # objects a worker read from its own recent copies
        self.room = lambda: 0  # bytes a call may put in the agent's store, asked per call
        self.max_put = 0  # the biggest object a put may keep (it must fit in a frame to peers)
        self.target = size
        self._closed = False
        self.resize(size)

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self) -> Worker:
        parent, child = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesh.worker", str(child.fileno()), self.agent_name],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=None if self.env is None else {**os.environ, **self.env},
            start_new_session=False,
            preexec_fn=_die_with_agent if _prctl is not None else None,
        )
        child.close()
        conn = FrameSocket(parent)
        return Worker(proc, conn)

    def resize(self, size: int) -> None:
        """Grow at once; shrink by retiring idle workers now and busy ones when their
        call finishes (COMPSs' lazy reduce)."""
        self.target = max(size, 0)
        while len(self.workers) < self.target:
            self.workers.append(self._spawn())
        self._retire_idle()

    def _retire_idle(self) -> None:
        # a worker whose call lent its slot does not count: its stand-in stays
        excess = len(self.workers) - self.target - sum(1 for w in self.workers if w.lent)
        for w in [w for w in self.workers if w.call_id is None][: max(excess, 0)]:
            self._stop(w)
            self.workers.remove(w)

    def close(self, timeout: float = 2.0) -> None:
        """Stop every worker (bounded in time); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for w in self.workers:
            try:
                w.conn.close()
            except OSError:
                pass
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(1)
        self.workers.clear()

    def _stop(self, w: Worker) -> None:
        try:
            w.conn.close()
        except OSError:
            pass
        try:
            w.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(1.0)

    # ------------------------------------------------------------------ calls

    def run(self, call: Call) -> Result | None:
        """Hand ``call`` to an idle worker; when every worker is busy (some of them
        blocked with their slot lent, see ``mesh.slot``), start one more, retired once
        idle. Returns a failure ``Result`` only if the worker died at once."""
        idle = next((w for w in self.workers if w.call_id is None), None)
        if idle is None:
            idle = self._spawn()
            self.workers.append(idle)
        idle.call_id = call.call_id
        try:
            room = min(self.room() // max(self.target, 1), self.max_put) if self.inline_max else 0
            idle.conn.send(cbor2.dumps([call.call_id, call.function, call.payload, call.want_json,
                                        self.inline_max, room]))
        except OSError:
            return self._crashed(idle)
        return None

    def give(self, w: Worker, oid: str, data: bytes | None, error: str) -> None:
        """Answer a worker's ``get`` (if it is still there: it may have been killed)."""
        if w in self.workers:
            try:
                w.conn.send(cbor2.dumps(["obj", oid, data, error]))
            except OSError:
                pass  # it died: readable() reports it

    def cancel(self, call_id: str) -> bool:
        """Stop the worker running ``call_id`` at once (nobody wants its result) and
        start a new one in its place; nothing is reported for the call."""
        w = next((w for w in self.workers if w.call_id == call_id), None)
        if w is None:
            return False
        self._replace(w)
        self.progress.pop(call_id, None)
        return True

    def readable(self, w: Worker) -> list[Result]:
        """The worker's socket is readable: collect what it sent. A closed socket
        means the worker died: its call fails and a new worker takes its place."""
        results: list[Result] = []
        try:
            while w.conn.readable():
                frame = cbor2.loads(w.conn.recv())
                if len(frame) != 7:  # not a result: one of the worker's notices
                    self._notice(w, frame)
                    continue
                call_id, ok, value, error_type, error, tb, text = frame
                w.call_id, w.lent = None, False
                self.progress.pop(call_id, None)
                results.append(Result(call_id, ok, value, self.agent_name, error_type, error, tb, text))
                if len(self.workers) > self.target:
                    self._retire_idle()  # a reduce was waiting for this call
                    if w not in self.workers:
                        break
        except (EOFError, OSError, ValueError, cbor2.CBORDecodeError):
            failed = self._crashed(w)
            if failed is not None:
                results.append(failed)
        return results

    def _notice(self, w: Worker, frame: list) -> None:
        """A frame from the worker that is not a result; anything else than these
        is a broken channel (ValueError, as a result of the wrong length would be)."""
        kind = frame[0] if frame else None
        if kind == "ready":
            w.ready = True
        elif kind == "progress":  # [_, call_id, total, done, failed]
            self.progress[frame[1]] = {"total": frame[2], "done": frame[3], "failed": frame[4]}
        elif kind == "lend":  # the task blocks on other tasks, or resumes
            self.lends.append((frame[1], bool(frame[2])))
            w.lent = bool(frame[2])
        elif kind == "put" and len(frame) == 4 and isinstance(frame[3], bytes):
            self.puts.append((frame[1], frame[2], frame[3]))
        elif kind == "get" and len(frame) == 4:
            self.gets.append((w, str(frame[2]), str(frame[3])))
        elif kind == "hit":  # the worker had the object's bytes already
            self.worker_hits += 1
        else:
            raise ValueError(f"unexpected frame from a worker: {kind!r}")

    def _crashed(self, w: Worker) -> Result | None:
        self.crashes += 1
        code = self._replace(w)
        log.warning("worker %d exited (code %s) while running %s; starting a new one",
                    w.proc.pid, code, w.call_id or "nothing")
        if w.call_id is None:
            return None
        return Result(w.call_id, False, b"", self.agent_name, "WorkerDied",
                      f"the worker process running this call exited with code {code}", "")

    def _replace(self, w: Worker) -> int | None:
        """Kill ``w`` (if it still runs), drop it, and start a new worker if the pool is
        below its size. Returns the old worker's exit code."""
        code = w.proc.poll()
        if code is None:
            w.proc.kill()
            try:
                code = w.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not exit after SIGKILL", w.proc.pid)
        self.workers.remove(w)
        try:
            w.conn.close()
        except OSError:
            pass
        if not self._closed and len(self.workers) < self.target:
            self.workers.append(self._spawn())
        return code

    @property
    def idle(self) -> int:
        return sum(1 for w in self.workers if w.call_id is None)
