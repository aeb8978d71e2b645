"""The agent's slots as its loop sees them: the worker pool (``mesh.agent.pool``) between
the dispatcher and the poller.

``Slots`` carries out the dispatcher's ``RunLocal`` (hand a call to a worker) and
``KillLocal`` (nobody wants that call's result), reads what workers send when the poll
says so (results, lends of slots, puts and gets of objects, calls given back unstarted)
and turns it into events of the dispatcher and the object service, and keeps the poller
watching exactly the pool's workers (``fds``: descriptor -> worker, which the loop reads).
Calls that wait for a worker (the pool's cap, ``mesh.agent.pool``; each keeps the slot
the dispatcher gave it) are started by ``pump``, which the loop calls at the end of each
turn in which some wait.
"""

from __future__ import annotations

import logging
import time

import zmq

from mesh.agent.actions import Actions
from mesh.agent.faults import Faults
from mesh.agent.objects import ObjectService
from mesh.agent.pool import Worker, WorkerPool
from mesh.sched import dispatch as dp
from mesh.wire.poll import Poller

log = logging.getLogger("mesh.agent")


class Slots:
    def __init__(self, pool: WorkerPool, poller: Poller, dispatcher: dp.Dispatcher,
                 objects: ObjectService, actions: Actions, faults: Faults) -> None:
        self.pool = pool
        self.poller = poller
        self.dispatcher = dispatcher
        self.objects = objects
        self.actions = actions
        self.faults = faults
        self.fds: dict[int, Worker] = {}  # the descriptors polled for workers
        self._seen = -1  # pool.generation as of the last sync
        self._results: list = []  # results read from workers, not yet given to the dispatcher
        self._settling = False  # (see _settle)
        self.sync()
        actions.handle(dp.RunLocal, self._run_local)
        actions.handle(dp.KillLocal, self._kill_local)

    def read(self, worker: Worker, now: float) -> None:
        """``worker``'s socket is readable."""
        self._settle(now, self.pool.readable(worker, now))

    def pump(self, now: float) -> None:
        """Start the calls that wait for a worker, if workers can take them (the loop, at
        the end of each turn in which calls wait: after everything that arrived in that
        turn, so that the calls a blocked call submitted just before it blocked are
        among those to choose from)."""
        self._settle(now, pump=True)

    def _settle(self, now: float, results: list = (), pump: bool = False) -> None:
        """Hand the dispatcher and the object service what the pool has for them (calls
        given back unstarted, lends, puts and gets, results), then (``pump``) let the
        pool start the calls that wait for a worker; again, until nothing is left. What the
        dispatcher does meanwhile may hand the pool more calls (``_run_local``): those
        are settled by this same loop, not by a call within a call (each result that
        frees a slot for the next call would otherwise recurse once per call)."""
        if results:
            self._results.extend(results)
        if self._settling:
            return
        self._settling = True
        pool, dispatcher, do = self.pool, self.dispatcher, self.actions.do
        try:
            while True:
                if pool.unstarted:  # given back by a worker (before the lend that made it do so)
                    calls, pool.unstarted = pool.unstarted, []
                    dispatcher.depth = pool.depth(now)
                    do(dispatcher.unstarted(calls), now)
                elif pool.lends:
                    lends, pool.lends = pool.lends, []
                    for call_id, lent in lends:
                        do(dispatcher.lend(call_id, lent), now)
                elif pool.puts or pool.gets:
                    self.objects.from_workers(now)
                elif self._results or pool.failed:
                    results = self._results + pool.failed
                    self._results, pool.failed = [], []
                    dispatcher.depth = pool.depth(now)
                    for result in results:
                        do(dispatcher.local_done(result), now)
                elif not (pump and pool.held and pool.pump(now)):
                    break
        finally:
            self._settling = False
        if pool.generation != self._seen:  # (a worker started or stopped)
            self.sync()

    def withdraw_slow(self, now: float) -> None:
        """Calls wait at workers: none may wait behind a long one (called every few ms then)."""
        if self.pool.withdraw_slow(now):
            self.dispatcher.depth = self.pool.depth(now)

    def resize(self, cpus: int) -> None:
        self.pool.resize(cpus)
        self._settle(time.monotonic())

    def sync(self) -> None:
        """Poll exactly the pool's workers' sockets (called after anything that may
        start or stop a worker; usually nothing changed, which is checked first)."""
        if self.pool.generation == self._seen:
            return
        self._seen = self.pool.generation
        current = {w.fileno(): w for w in self.pool.workers}
        old = self.fds
        for fd, w in old.items():  # (a number may now be another worker's: it is new)
            if current.get(fd) is not w:
                try:
                    self.poller.unregister(fd)
                except KeyError:
                    pass
        for fd, w in current.items():
            if old.get(fd) is not w:
                self.poller.register(fd, zmq.POLLIN)
        self.fds = current

    # ------------------------------------------------------------------ actions

    def _run_local(self, act: dp.RunLocal, now: float) -> None:
        try:
            self.pool.run(act.call, act.behind, now)
        except Exception as exc:  # (a bug: the call must still end)
            self.faults.caught("action:RunLocal", f"handing call {act.call.call_id} to a worker", exc, now)
            self.pool.failed.append(self.pool.unavailable(act.call.call_id, f"{type(exc).__name__}: {exc}"))
        self._settle(now)

    def _kill_local(self, act: dp.KillLocal, now: float) -> None:
        how = self.pool.cancel(act.call_id)
        if how == "stopped":
            log.info("stopped the worker running %s: nobody wants its result", act.call_id)
        self._settle(now)  # (the calls that waited behind it)
