"""Worker processes: the agent's slots, where user code runs.

The agent's loop never runs user code and never unpickles anything: it hands a
call's bytes to a worker process over a socket pair and gets the result's bytes
back. A worker is a fresh interpreter (``python -m mesh.agent.worker``), so a crash, a
segfault or ``os._exit`` in user code costs one call (reported as a failure of that
call) and the worker is started again. Heartbeats are answered by the agent's
loop, so a device whose every slot is busy is still alive.

Frames between agent and worker are CBOR lists:
  agent -> worker: ``["call", call_id, function, payload, want_json, inline_max, put_room]``
                   (the last two: ``mesh.sched.objects``; bytes the call may keep here),
                   ``["obj", oid, data or None, error]`` answering a worker's ``get``, and
                   ``["withdraw", call_ids or None]``: give back these waiting calls (None:
                   all of them) if not started;
  worker -> agent: ``["ready", pid]`` once, then
                   ``[call_id, ok, value, error_type, error, traceback, json, seconds]`` per
                   call (``seconds``: how long it ran), ``["back", call_ids]`` (calls given
                   back unstarted: withdrawn, or waiting when the running call lent its
                   slot), and while a call runs: ``["put", call_id, oid, data]`` (keep this
                   output here), ``["get", call_id, oid, holder]`` (send me this object),
                   ``["hit", call_id, oid]`` (read from the worker's own recent copies),
                   ``["lend", call_id, bool]``, ``["progress", call_id, total, done, failed]``.

Calls waiting at a worker (``Dispatcher.depth``): while the calls an agent runs are
short, a busy worker is given more calls, which wait in order behind the one it runs
(``run(call, behind=True)``): the worker starts the next one the moment it finishes,
without waiting for the agent, and the agent hands calls over and takes results in
bulk (a worker's thread reads what the agent sends as it comes, see ``mesh.agent.worker``).
How many may wait is bounded by time: about ``WAIT_BUDGET`` of the recent mean run
time per slot (``depth()``). A call that runs much longer than that makes its worker
give back the calls waiting behind it (``withdraw_slow``), and so does a call that
blocks on other tasks (it lends its slot, ``mesh.program.slot``): they are placed again, so
nothing waits long behind a long call and nested graphs cannot deadlock. A call is
started by the worker or given back by it, never both: its thread decides, under one
lock.

Stand-ins and their cap. A call that blocks on other tasks lends its slot: the
dispatcher may then give this agent another call, and when no worker is idle a new one
is started for it, a stand-in. Stand-ins stay while any call here is blocked (a nested
graph runs: it wants them again as it goes up and down the recursion) and are retired
once idle beyond the pool's size after that. Workers are capped: at most ``cap``
(``MESH_MAX_WORKERS``; default 4 per slot + 8), stand-ins included. A call for which no
worker is idle waits in the pool (``held``) and keeps its slot meanwhile: the
dispatcher counts it running, so it gives this agent no more than its slots (lent ones
included) allow, and what else waits stays in its backlog, where peers can be given it
or steal it. Only a blocked call lends a slot. ``pump`` starts waiting calls newest
first, each when a slot is free (fewer calls run unblocked than there are slots) and a
worker can take it: an idle one, or a new one below the cap. Newest first is depth
first, and so is the dispatcher (``Dispatcher._retry_backlog``: while a call here is
blocked, the room here goes to the newest calls waiting): the calls a blocked call waits
for are, as a rule, the last ones submitted, so they run before older work and the
blocked calls are mostly ancestors of the running ones. fib(10) with nested tasks on one
slot takes 11-17 workers this way (fib(12) 24-30), where the order in which calls
arrived (breadth first) took ~70 (and fib(12) ~180). Not exactly the depth of the recursion: nested calls
and resumptions reach the agent a moment after the events that cause them.

Why waiting cannot deadlock: a call waits in the pool only while a worker runs a call
that is not blocked (that call ends or blocks, and either makes the pool look again), or
while every worker's call is blocked, the one state that nothing here would ever end.
Then, once no worker has said anything for ``QUIET`` (a resumption on its way would
have), one more worker starts, past the cap (``over_cap`` counts them, the log says so):
progress before the bound. So the cap is exceeded only by a recursion that needs more
workers than the cap, and then by about what it needs. A call waiting in the
dispatcher's backlog for a slot (one a waiting call keeps) waits for the same progress:
each call started ends or blocks, and either frees a slot.

What the system refuses and what workers garble costs calls, never the agent. A worker
that cannot be started (``fork`` or ``socketpair`` fails: out of processes, descriptors
or memory) fails the newest waiting call with ``WorkerUnavailable`` naming the cause,
unless a worker will free (then the call waits for it); at start or after a crash the
pool just stays smaller and starts a worker when a call needs one. A frame from a
worker that is not one of those above, with the types above, means its channel is
broken: the worker is killed and replaced as if it had died, and its call fails
(``WorkerDied``, saying what it sent).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import cbor2

from mesh.wire.framing import FrameSocket
from mesh.wire.messages import Call, Result

log = logging.getLogger("mesh.executor")

try:  # Linux: a worker is killed when its agent dies, even by SIGKILL (no orphan keeps
    # running a call nobody will collect)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:  # in the child, between fork and exec: no imports here
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


WAIT_BUDGET = float(os.environ.get("MESH_WORKER_WAIT_MS", "10")) / 1000  # s a call may wait at a worker
MAX_DEPTH = int(os.environ.get("MESH_WORKER_DEPTH", "16"))  # calls per slot at most (1: none wait)
SLOW_MIN = 0.02  # s: a call running longer than this and SLOW_FACTOR x the mean is long
SLOW_FACTOR = 4.0
MIN_SAMPLES = 8  # run times seen before calls may wait at workers
# the most worker processes (stand-ins included); unset: 4 per slot + 8 (WorkerPool.cap)
MAX_WORKERS = int(os.environ["MESH_MAX_WORKERS"]) if os.environ.get("MESH_MAX_WORKERS") else None
LOG_EVERY = 60.0  # seconds between two log lines about workers the system would not start
QUIET = 0.1  # s without a word from any worker before one starts past the cap


def cannot_start(exc: OSError) -> str:
    """What a failure to start a worker process means, for logs and errors."""
    cause = {errno.EAGAIN: "out of processes?", errno.EMFILE: "out of file descriptors",
             errno.ENFILE: "the system is out of file descriptors",
             errno.ENOMEM: "out of memory"}.get(exc.errno or 0, "")
    return f"cannot start a worker process: {exc.strerror or exc}" + (f" ({cause})" if cause else "")


@dataclass
class Worker:
    proc: subprocess.Popen
    conn: FrameSocket
    queue: deque = field(default_factory=deque)  # call ids given to it: running first, then waiting
    started: float = 0.0  # when its running call started (as the agent saw it)
    ready: bool = False
    lent: bool = False  # its call is blocked waiting for other tasks (slot lent)
    withdrawn: bool = False  # asked to give back its waiting calls (its call runs long)

    @property
    def call_id(self) -> str | None:
        """The call it runs, if any."""
        return self.queue[0] if self.queue else None

    def fileno(self) -> int:
        return self.conn.fileno()


class WorkerPool:
    """``size`` worker processes; the dispatcher never gives it more calls than slots."""

    def __init__(self, size: int, agent_name: str, env: dict | None = None,
                 max_workers: int | None = None) -> None:
        self.agent_name = agent_name
        self.env = env  # extra environment of workers (how nested tasks reach the agent)
        self.workers: list[Worker] = []
        self.generation = 0  # bumped whenever ``workers`` changes (the agent polls them)
        self.crashes = 0
        self.lends: list[tuple[str, bool]] = []  # (call id, lent?) read by the agent
        self.progress: dict[str, dict] = {}  # call id -> task graph progress (mesh run)
        self.puts: list[tuple[str, str, bytes]] = []  # (call id, oid, data) read by the agent
        self.gets: list[tuple[Worker, str, str]] = []  # (worker, oid, holder) read by the agent
        self.inline_max = 0  # set by the agent: see mesh.sched.objects
        self.worker_hits = 0  # objects a worker read from its own recent copies
        self.room = lambda: 0  # bytes a call may put in the agent's store, asked per call
        self.max_put = 0  # the biggest object a put may keep (it must fit in a frame to peers)
        self.unstarted: list[str] = []  # calls workers gave back unstarted, read by the agent
        self.cancelled: set[str] = set()  # waiting calls nobody wants: dropped when they come back
        self.run_time: float | None = None  # mean seconds a call ran here lately (EWMA)
        self.samples = 0
        self.withdrawals = 0  # times a worker was asked to give back its waiting calls
        self.spawn_failures = 0  # workers the system would not start (processes, descriptors)
        self._spawn_logged = -LOG_EVERY  # when a failure to start a worker was last logged
        self.held: list[Call] = []  # calls waiting for a worker (none idle), newest last
        self.failed: list[Result] = []  # calls that could not start, read by the agent
        self.max_workers = MAX_WORKERS if max_workers is None else max_workers  # (see cap)
        self.over_cap = 0  # workers started past the cap (every worker's call was blocked)
        self._over_logged = -LOG_EVERY
        self.peak = 0  # the most workers there were at once
        self._heard = 0.0  # when a worker last sent something
        self.target = size
        self._closed = False
        self.resize(size)

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self) -> Worker:
        parent, child = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mesh.agent.worker", str(child.fileno()), self.agent_name],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=None if self.env is None else {**os.environ, **self.env},
                start_new_session=False,
                preexec_fn=_die_with_agent if _prctl is not None else None,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        conn = FrameSocket(parent)
        return Worker(proc, conn)

    def _start_worker(self) -> Worker:
        """A new worker, in the pool. Raises OSError when the system will not start one
        (counted in ``spawn_failures``, logged at most once a minute)."""
        try:
            w = self._spawn()
        except OSError as exc:
            self.spawn_failures += 1
            now = time.monotonic()
            if now - self._spawn_logged >= LOG_EVERY:
                self._spawn_logged = now
                log.warning("%s (%d time(s) so far); the calls that need a new worker fail",
                            cannot_start(exc), self.spawn_failures)
            raise
        self.workers.append(w)
        self.generation += 1
        self.peak = max(self.peak, len(self.workers))
        return w

    def unavailable(self, call_id: str, why: str) -> Result:
        """The failure of a call no worker could take."""
        return Result(call_id, False, b"", self.agent_name, "WorkerUnavailable",
                      f"no worker process could take this call on {self.agent_name}: {why}", "")

    def resize(self, size: int) -> None:
        """Grow at once (as far as the system lets us: the rest when calls need them);
        shrink by retiring idle workers now and busy ones when their call finishes
        (COMPSs' lazy reduce)."""
        self.target = max(size, 0)
        while len(self.workers) < self.target:
            try:
                self._start_worker()
            except OSError:
                break
        self._retire_idle()

    def _retire_idle(self) -> None:
        """Stop idle workers beyond the pool's size; none while calls wait for a worker
        (they take the idle ones), nor while a call here is blocked on nested calls: a
        nested graph runs, which wants its stand-ins again as it goes up and down the
        recursion (a process takes a few hundred ms to start: retired the moment they
        idled, fib(10) on one slot took ~50 s instead of ~9). They go once no call here
        is blocked."""
        if self.held or any(w.lent for w in self.workers):
            return
        excess = len(self.workers) - self.target
        for w in [w for w in self.workers if w.call_id is None][: max(excess, 0)]:
            self._stop(w)
            self.workers.remove(w)
            self.generation += 1

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
        self.held.clear()
        self.generation += 1

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

    def run(self, call: Call, behind: bool = False, now: float | None = None) -> None:
        """Hand ``call`` to an idle worker. ``behind``: no slot is free, the call waits at
        the busy worker with the fewest calls (not one whose call lent its slot or runs
        long). When no worker can take it now, the call waits in ``held`` (keeping the
        slot the dispatcher gave it) until ``pump`` starts it, in a stand-in below the cap
        or in a worker that frees. Calls that could not start go to ``failed``."""
        if behind:
            now = time.monotonic() if now is None else now
            limit = self._slow_limit()
            w = min((w for w in self.workers if self._can_wait_at(w, now, limit)),
                    key=lambda w: len(w.queue), default=None)
            if w is None:  # (every worker turned slow or lent since the dispatcher asked)
                w = min((w for w in self.workers if not w.lent), key=lambda w: len(w.queue),
                        default=None)
        else:
            w = next((w for w in self.workers if not w.queue), None)
        if w is None:  # (it keeps its slot meanwhile: the dispatcher counts it running)
            self.held.append(call)
            return
        self._hand(w, call, now)

    def _hand(self, w: Worker, call: Call, now: float | None) -> None:
        w.queue.append(call.call_id)
        if len(w.queue) == 1:
            w.started = time.monotonic() if now is None else now
        try:
            room = min(self.room() // max(self.target, 1), self.max_put) if self.inline_max else 0
            w.conn.send(cbor2.dumps(["call", call.call_id, call.function, call.payload,
                                     call.want_json, self.inline_max, room]))
        except OSError:
            failed = self._crashed(w)
            if failed is not None:
                self.failed.append(failed)

    @property
    def cap(self) -> int:
        """The most workers there may be (but see ``pump``: past it only so that waiting ends)."""
        cap = self.max_workers if self.max_workers is not None else 4 * self.target + 8
        return max(cap, self.target, 1)

    def _unblocked(self) -> int:
        """Workers running a call that does not lend its slot: the slots taken here."""
        return sum(1 for w in self.workers if w.queue and not w.lent)

    def pump(self, now: float | None = None) -> bool:
        """Start calls that wait for a worker (``held``), newest first, while fewer calls
        run unblocked than there are slots and a worker can take one: an idle one, a new
        one below the cap, or a new one past the cap when every worker's call is blocked
        (else nothing would ever free one). A worker the system will not start fails the
        newest waiting call, unless a worker will free (then it waits for that one).
        Returns whether anything started or failed."""
        did = False
        now = time.monotonic() if now is None else now
        while self.held and self._unblocked() < self.target:
            w = next((w for w in self.workers if not w.queue), None)
            if w is None:
                over = len(self.workers) >= self.cap
                if over and not all(w.lent for w in self.workers):
                    break  # a worker runs a call that is not blocked: it ends or blocks
                if over and now - self._heard < QUIET:
                    break  # (a blocked call may be about to resume: its result is on its way)
                try:
                    w = self._start_worker()
                except OSError as exc:
                    if self._unblocked():
                        break  # (a worker will free: the call waits for it)
                    call = self.held.pop()  # (its failure frees its slot)
                    self.failed.append(self.unavailable(call.call_id, cannot_start(exc)))
                    did = True
                    continue
                if over:
                    self.over_cap += 1
                    t = time.monotonic()
                    if t - self._over_logged >= LOG_EVERY:
                        self._over_logged = t
                        log.warning("every one of the %d workers waits for nested calls: started "
                                    "one more, past the cap of %d (MESH_MAX_WORKERS); %d time(s) "
                                    "so far", len(self.workers) - 1, self.cap, self.over_cap)
            self._hand(w, self.held.pop(), now)
            did = True
        return did

    def depth(self, now: float | None = None) -> int:
        """Calls a slot may hold now (``Dispatcher.depth``): 1 until calls ran here, or
        when no worker can take one more to wait (each runs a long call or lends its
        slot); else as many as fit in ``WAIT_BUDGET`` of the recent mean run time (at
        most ``MAX_DEPTH``)."""
        rt = self.run_time
        if rt is None or self.samples < MIN_SAMPLES or MAX_DEPTH <= 1:
            return 1
        now = time.monotonic() if now is None else now
        limit = self._slow_limit()
        if not any(self._can_wait_at(w, now, limit) for w in self.workers):
            return 1
        return max(1, min(MAX_DEPTH, int(WAIT_BUDGET / max(rt, 1e-6))))

    def _slow_limit(self) -> float:
        """A call running longer than this is long (it holds up the calls behind it)."""
        return max(SLOW_MIN, SLOW_FACTOR * (self.run_time or 0.0))

    @staticmethod
    def _can_wait_at(w: Worker, now: float, limit: float) -> bool:
        return not w.lent and not w.withdrawn and (not w.queue or now - w.started <= limit)

    @property
    def waiting(self) -> int:
        """Calls given to workers that wait behind another."""
        return sum(len(w.queue) - 1 for w in self.workers if len(w.queue) > 1)

    def withdraw_slow(self, now: float) -> int:
        """Ask every worker whose call has run long (``SLOW_MIN`` and ``SLOW_FACTOR`` x
        the mean) to give back the calls waiting behind it; they come back as
        ``unstarted``. Returns how many workers were asked."""
        limit = self._slow_limit()
        asked = 0
        for w in self.workers:
            if len(w.queue) > 1 and not w.withdrawn and now - w.started > limit:
                self._withdraw(w, None)
                asked += 1
        return asked

    def _withdraw(self, w: Worker, call_ids: list[str] | None) -> None:
        if call_ids is None:
            w.withdrawn = True
            self.withdrawals += 1
        try:
            w.conn.send(cbor2.dumps(["withdraw", call_ids]))
        except OSError:
            pass  # it died: readable() reports it and gives its waiting calls back

    def give(self, w: Worker, oid: str, data: bytes | None, error: str) -> None:
        """Answer a worker's ``get`` (if it is still there: it may have been killed)."""
        if w in self.workers:
            try:
                w.conn.send(cbor2.dumps(["obj", oid, data, error]))
            except OSError:
                pass  # it died: readable() reports it

    def cancel(self, call_id: str) -> str | None:
        """Nobody wants ``call_id``'s result: the worker running it is stopped at once
        and a new one started in its place (the calls that waited behind it come back
        as ``unstarted``); a call still waiting at a worker is withdrawn (should it have
        started meanwhile, its result is dropped). Nothing is reported for the call."""
        held = next((c for c in self.held if c.call_id == call_id), None)
        if held is not None:  # (it waited for a worker: it never reaches one)
            self.held.remove(held)
            return "withdrawn"
        w = next((w for w in self.workers if call_id in w.queue), None)
        if w is None:
            return None
        if w.queue[0] != call_id:
            self.cancelled.add(call_id)
            self._withdraw(w, [call_id])
            return "withdrawn"
        w.queue.popleft()
        self._give_back_waiting(w)
        self._replace(w)
        self.progress.pop(call_id, None)
        return "stopped"

    def _give_back_waiting(self, w: Worker) -> None:
        """``w`` will run nothing more (stopped, or dead) and its running call is off its
        queue: the calls that waited there never started, they come back as
        ``unstarted`` (but those nobody wants any more)."""
        self.unstarted.extend(c for c in w.queue if c not in self.cancelled)
        self.cancelled.difference_update(w.queue)
        w.queue.clear()

    def readable(self, w: Worker, now: float | None = None) -> list[Result]:
        """The worker's socket is readable (a poll said so): collect what it sent. A closed socket
        means the worker died: its call fails (the calls waiting behind it come back
        as ``unstarted``) and a new worker takes its place."""
        results: list[Result] = []
        conn = w.conn
        self._heard = time.monotonic() if now is None else now
        try:
            ready = True  # (the poll said so: no system call to ask again)
            while ready or conn.readable():
                ready = False
                raw = conn.recv()
                try:
                    frame = cbor2.loads(raw)
                except Exception as exc:  # (whatever cbor2 raises on garbage)
                    raise ValueError(f"not CBOR ({type(exc).__name__}: {exc})") from None
                if type(frame) is not list:
                    raise ValueError(f"a frame that is not a list: {frame!r:.80}")
                if len(frame) != 8:  # not a result: one of the worker's notices
                    self._notice(w, frame)
                    continue
                call_id, ok, value, error_type, error, tb, text, seconds = frame
                if not (type(call_id) is str and type(ok) is bool and type(value) is bytes
                        and type(error_type) is str and type(error) is str and type(tb) is str
                        and type(text) is str):
                    raise ValueError(f"a malformed result: {frame!r:.120}")
                if w.queue and w.queue[0] == call_id:
                    w.queue.popleft()
                    w.lent = w.withdrawn = False
                    w.started = time.monotonic() if now is None else now
                elif call_id in w.queue:  # (a worker runs its calls in order: not expected)
                    w.queue.remove(call_id)
                self.progress.pop(call_id, None)
                if type(seconds) is float and seconds >= 0:
                    rt = self.run_time
                    self.run_time = seconds if rt is None else rt + 0.2 * (seconds - rt)
                    self.samples += 1
                if call_id in self.cancelled:
                    self.cancelled.discard(call_id)
                    continue
                results.append(Result(call_id, ok, value, self.agent_name, error_type, error, tb, text))
                if len(self.workers) > self.target:
                    self._retire_idle()  # a reduce was waiting for this call
                    if w not in self.workers:
                        break
        except (EOFError, OSError) as exc:  # (it died, or closed its end)
            failed = self._crashed(w, None if isinstance(exc, EOFError) else str(exc))
            if failed is not None:
                results.append(failed)
        except (ValueError, TypeError) as exc:  # (it sent what a worker never sends)
            failed = self._crashed(w, f"sent a malformed frame ({exc})")
            if failed is not None:
                results.append(failed)
        return results

    def _notice(self, w: Worker, frame: list) -> None:
        """A frame from the worker that is not a result; anything else than these, or
        one of these with other fields, is a broken channel (ValueError)."""
        kind = frame[0] if frame else None
        n = len(frame)
        if kind == "ready" and n == 2:
            w.ready = True
        elif kind == "progress" and n == 5 and type(frame[1]) is str \
                and all(type(x) is int for x in frame[2:]):  # [_, call_id, total, done, failed]
            self.progress[frame[1]] = {"total": frame[2], "done": frame[3], "failed": frame[4]}
        elif kind == "lend" and n == 3 and type(frame[1]) is str:  # the task blocks, or resumes
            self.lends.append((frame[1], bool(frame[2])))
            w.lent = bool(frame[2])
        elif kind == "put" and n == 4 and type(frame[1]) is str and type(frame[2]) is str \
                and type(frame[3]) is bytes:
            self.puts.append((frame[1], frame[2], frame[3]))
        elif kind == "get" and n == 4 and type(frame[2]) is str and type(frame[3]) is str:
            self.gets.append((w, frame[2], frame[3]))
        elif kind == "hit" and n == 3:  # the worker had the object's bytes already
            self.worker_hits += 1
        elif kind == "back" and n == 2 and type(frame[1]) is list \
                and all(type(c) is str for c in frame[1]):
            for call_id in frame[1]:  # calls it gave back unstarted (a worker slow to
                if call_id in w.queue:  # start may give back even the first we gave it)
                    if w.queue[0] == call_id:
                        w.started = time.monotonic()
                    w.queue.remove(call_id)
                    if call_id in self.cancelled:
                        self.cancelled.discard(call_id)
                    else:
                        self.unstarted.append(call_id)
            if len(w.queue) <= 1:
                w.withdrawn = False
        else:
            raise ValueError(f"an unexpected frame: {frame!r:.80}")

    def _crashed(self, w: Worker, why: str | None = None) -> Result | None:
        """``w`` died (``why``: None) or broke its channel (``why`` says how): it is
        replaced, its call fails, the calls that waited behind it come back."""
        self.crashes += 1
        code = self._replace(w)
        call_id = w.queue.popleft() if w.queue else None
        if why is None:
            log.warning("worker %d exited (code %s) while running %s; starting a new one",
                        w.proc.pid, code, call_id or "nothing")
        else:
            log.warning("worker %d %s while running %s: stopped; starting a new one",
                        w.proc.pid, why, call_id or "nothing")
        self._give_back_waiting(w)
        if call_id is None or call_id in self.cancelled:
            self.cancelled.discard(call_id)
            return None
        text = (f"the worker process running this call exited with code {code}" if why is None
                else f"the worker process running this call {why}; it was stopped")
        return Result(call_id, False, b"", self.agent_name, "WorkerDied", text, "")

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
        self.generation += 1
        try:
            w.conn.close()
        except OSError:
            pass
        if not self._closed and len(self.workers) < self.target:
            try:
                self._start_worker()
            except OSError:
                pass  # (a smaller pool for now: a call that needs a worker starts one)
        return code

    @property
    def idle(self) -> int:
        return sum(1 for w in self.workers if w.call_id is None)
