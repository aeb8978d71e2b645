"""The worker processes of the ledger simulator's agents (``mesh.sim.ledger_sim``).

Theory of operation
-------------------
Workers, as ``mesh.agent.pool.WorkerPool`` (``--depth N`` sets every ``Dispatcher.depth``;
default 1: one call per worker): each worker holds a FIFO; its first call runs, calls
given with ``RunLocal(behind=True)`` wait in order behind it and the process starts
each the moment the previous ends, without the agent. ``behind=False`` goes to an idle
worker (none idle: one more worker, retired once idle), ``behind=True`` to the worker
with the fewest calls among those that may take one more (not running a long call nor
giving calls back), else the one with the fewest calls. The agent reads a worker's
results in order (a frozen agent later: its workers run on). ``KillLocal`` of a
worker's first call kills the process (its unread results are lost with it) and
starts a new one; the calls that waited behind it come back: the agent calls
``Dispatcher.unstarted`` with them in their order, as ``Agent._unstarted`` does. ``KillLocal``
of a waiting call withdraws it silently (had the process started it meanwhile, its
result is dropped). With ``--long-call S``, a worker whose call has run S seconds
(checked every ``SLOW_CHECK``, as the agent polls) while calls wait behind it gives
back those it has not started (``unstarted``), and the agent's ``depth`` is 1 while
no worker may take one more (``WorkerPool.depth``), until a long call ends. A killed
agent's workers die with it.

Each ``Worker`` holds ``queue`` (its calls as the agent sees them: ``queue[0]`` runs,
the rest wait) and ``done`` (calls at the head of ``queue`` that the process finished
while the agent has not read their results yet). The process runs ahead of the agent:
it starts its next call the moment one ends (``_run_end``), the agent reads the result
later (``_read_result``, delayed while the agent is frozen). ``token`` ties a run's end
event to the process that started it, so a killed worker's pending end is void.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

from mesh.sim.clock import Clock
from mesh.sim.ledger_model import Node, Worker
from mesh.wire.messages import Call, Result

SLOW_CHECK = 0.01  # s: how often an agent looks for long calls while calls wait at workers


class WorkerPoolModel:
    """The agents' worker processes: ``RunLocal`` and ``KillLocal``, as
    ``mesh.agent.pool.WorkerPool`` and the agent carry them out. A part of ``LedgerSim``,
    given the clock, the agents by node id and what it calls back: ``handle`` (run now, or queue in a
    frozen agent's inbox), ``do`` (carry out a dispatcher's actions), ``record`` (trace),
    ``violation``, and ``holds_dead(node, origin)`` (membership: ``node`` declared
    ``origin`` dead). ``LedgerSim`` calls ``run`` and ``kill_local``; it reads the figures
    kept here (``executions`` and the rest) for its report."""

    def __init__(self, clock: Clock, by_id: dict[str, Node], *, depth: int, long_call: float | None,
                 handle: Callable[..., None], do: Callable[[Node, list], None],
                 record: Callable[[Node, str, str], None], violation: Callable[[str], None],
                 holds_dead: Callable[[Node, Node], bool]) -> None:
        self.clock = clock
        self.by_id = by_id
        self.depth = depth
        self.long_call = long_call
        self._handle, self._do, self._record = handle, do, record
        self.violation = violation
        self.holds_dead = holds_dead
        self.executions: Counter[str] = Counter()  # runs started, per call
        self.dead_origin_runs = 0  # started where the (killed) origin was already declared dead
        self.waited = 0  # runs started after waiting behind another call
        self.given_back = 0  # calls given back unstarted when the call ahead of them was killed
        self.withdrawn = 0  # calls given back unstarted because the call ahead ran long
        self.withdrawals = 0  # times a worker gave back its waiting calls for a long call
        self._tokens = itertools.count()  # (ties a run's end event to the process that started it)

    def run(self, node: Node, call: Call, behind: bool = False) -> None:
        """``RunLocal``, as ``WorkerPool.run``: to an idle worker, or (``behind``) to wait
        at the worker with the fewest calls that may take one more; one more worker
        when none fits (retired once idle)."""
        cid = call.call_id
        if cid in node.runs:
            self.violation(f"{node.name} runs {cid} twice at once")
        if behind:
            w = min((w for w in node.workers if self._can_wait_at(w)),
                    key=lambda w: len(w.queue), default=None)
            if w is None:  # (every worker turned long since the dispatcher was told)
                w = min(node.workers, key=lambda w: len(w.queue), default=None)
        else:
            w = next((w for w in node.workers if not w.queue), None)
        if w is None:
            w = Worker()
            node.workers.append(w)
        w.queue.append(call)
        if len(w.queue) == 1:
            w.started = self.clock.now
        node.runs[cid] = (w, call.origin)
        if len(w.queue) == w.done + 1:  # the process is idle: it starts the call at once
            self._start(node, w, waited=False)
        elif len(w.queue) > 1:
            self._watch(node, w)

    def _start(self, node: Node, w: Worker, waited: bool) -> None:
        """The worker process starts its next call (whatever the agent is doing)."""
        call = w.queue[w.done]
        cid = call.call_id
        origin = self.by_id.get(call.origin)
        if origin is not None and not origin.alive and self.holds_dead(node, origin):
            self.dead_origin_runs += 1
        self.executions[cid] += 1
        self.waited += waited
        w.token = token = next(self._tokens)
        self.clock.at(self.clock.now + float(call.payload) / node.d.speed, self._run_end, node, w, cid, token)

    def _run_end(self, node: Node, w: Worker, cid: str, token: int) -> None:
        """The process finished a call: it sends the result (read by the agent when it
        can) and starts the next call in its FIFO at once."""
        if not (node.alive and w.alive and w.token == token):
            return
        w.done += 1
        if node.runs.get(cid, (None,))[0] is w:
            del node.runs[cid]
        if len(w.queue) > w.done:
            self._start(node, w, waited=True)
        self._handle(node, self._read_result, node, w, cid)

    def _read_result(self, node: Node, w: Worker, cid: str) -> None:
        """The agent reads a result from the worker's socket (``WorkerPool.readable``,
        ``Agent._read_worker``); a killed worker's unread results are gone with it."""
        if not (node.alive and w.alive) or not w.queue or w.queue[0].call_id != cid:
            return
        w.queue.popleft()
        w.done -= 1
        w.withdrawn = False
        w.started = self.clock.now
        if len(w.queue) > 1:
            self._watch(node, w)
        if not w.queue and len(node.workers) > node.d.cpus:
            node.workers.remove(w)  # an extra worker, retired once idle
        node.d.depth = self.pool_depth(node)
        if cid in node.cancelled:  # withdrawn while it waited, but it had started
            node.cancelled.discard(cid)
            return
        self._do(node, node.d.local_done(Result(cid, True, b"", node.name)))

    def kill_local(self, node: Node, cid: str) -> None:
        """``KillLocal``, as ``WorkerPool.cancel``: the worker running the call is killed
        (its unread results are lost) and replaced, the calls that waited behind it come
        back ``unstarted``; a call still waiting is withdrawn silently (if it started
        meanwhile, its result is dropped)."""
        w = next((w for w in node.workers if any(c.call_id == cid for c in w.queue)), None)
        if w is None:
            return
        if node.runs.get(cid, (None,))[0] is w:
            del node.runs[cid]
        if w.queue[0].call_id != cid:  # waiting
            k = next(k for k, c in enumerate(w.queue) if c.call_id == cid)
            if k > w.done:  # not started: the worker gives it back, and it is dropped
                del w.queue[k]
            else:
                node.cancelled.add(cid)
            return
        w.queue.popleft()
        back = [c.call_id for c in w.queue if c.call_id not in node.cancelled]
        node.cancelled.difference_update(c.call_id for c in w.queue)
        self._drop(node, w)
        w.queue.clear()
        w.alive = False
        node.workers.remove(w)
        if len(node.workers) < node.d.cpus:
            node.workers.append(Worker())
        self.given_back += len(back)
        self._unstarted(node, back)

    def _drop(self, node: Node, w: Worker) -> None:
        for c in w.queue:
            if node.runs.get(c.call_id, (None,))[0] is w:
                del node.runs[c.call_id]

    def _unstarted(self, node: Node, calls: list[str]) -> None:
        """As ``Agent._unstarted``: placed again, first first."""
        node.d.depth = self.pool_depth(node)
        for cid in calls:
            self._record(node, "unstarted", cid)
        self._do(node, node.d.unstarted(calls))

    def _can_wait_at(self, w: Worker) -> bool:
        """``WorkerPool._can_wait_at``: a call may wait at this worker (it is idle, or its
        call is not long and it was not asked to give back its waiting calls)."""
        return not w.withdrawn and (not w.queue or self.long_call is None
                                    or self.clock.now - w.started <= self.long_call)

    def pool_depth(self, node: Node) -> int:
        """``WorkerPool.depth``: the sim's ``depth``, or 1 while no worker can take one
        more call to wait (each runs a long call)."""
        if self.depth <= 1 or any(self._can_wait_at(w) for w in node.workers):
            return self.depth
        return 1

    def _watch(self, node: Node, w: Worker) -> None:
        """Calls wait at ``w``: check it when its call turns long (the agent polls every
        ``SLOW_CHECK`` while calls wait at workers)."""
        if self.long_call is None or w.check == w.started:
            return
        w.check = w.started
        when = max(w.started + self.long_call, self.clock.now + SLOW_CHECK)
        self.clock.at(when, self._slow_check, node, w, w.started)

    def _slow_check(self, node: Node, w: Worker, started: float) -> None:
        if w.check == started:
            w.check = None
        if node.alive and w.alive and w.started == started:
            self._handle(node, self._withdraw_slow, node, w, started)

    def _withdraw_slow(self, node: Node, w: Worker, started: float) -> None:
        """``WorkerPool.withdraw_slow``: a worker whose call runs long gives back the
        calls waiting behind it (those its process has not started); then the agent's
        depth is 1 while no worker can take one more."""
        if not (node.alive and w.alive and w.started == started) or w.withdrawn \
                or len(w.queue) <= 1 or self.clock.now - started < self.long_call:
            return
        self.withdrawals += 1
        self._record(node, "withdraw", w.queue[0].call_id)
        w.withdrawn = True
        given = [w.queue.pop() for _ in range(len(w.queue) - w.done - 1)][::-1]
        if len(w.queue) <= 1:
            w.withdrawn = False
        for c in given:
            if node.runs.get(c.call_id, (None,))[0] is w:
                del node.runs[c.call_id]
        back = [c.call_id for c in given if c.call_id not in node.cancelled]
        node.cancelled.difference_update(c.call_id for c in given)
        self.withdrawn += len(back)
        self._unstarted(node, back)
