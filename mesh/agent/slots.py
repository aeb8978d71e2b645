"""The agent's slots as its loop sees them: the worker pool (``mesh.agent.pool``) between
the dispatcher and the poller.

``Slots`` carries out the dispatcher's ``RunLocal`` (hand a call to a worker) and
``KillLocal`` (nobody wants that call's result), reads what workers send when the poll
says so (results, lends of slots, puts and gets of objects, calls given back unstarted)
and turns it into events of the dispatcher and the object service, and keeps the poller
watching exactly the pool's workers (``fds``: descriptor -> worker, which the loop reads).
"""

from __future__ import annotations

import logging

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
        self.sync()
        actions.handle(dp.RunLocal, self._run_local)
        actions.handle(dp.KillLocal, self._kill_local)

    def read(self, worker: Worker, now: float) -> None:
        """``worker``'s socket is readable."""
        pool, do = self.pool, self.actions.do
        results = pool.readable(worker, now)
        if pool.unstarted:  # given back by a worker (before the lend that made it do so)
            self.unstarted(now)
        lends, pool.lends = pool.lends, []
        for call_id, lent in lends:
            do(self.dispatcher.lend(call_id, lent), now)
        if pool.puts or pool.gets:
            self.objects.from_workers(now)
        self.dispatcher.depth = pool.depth(now)
        for result in results:
            do(self.dispatcher.local_done(result), now)
        if pool.unstarted:  # (a worker that died: the calls that waited behind its call)
            self.unstarted(now)
        self.sync()

    def unstarted(self, now: float) -> None:
        """Calls a worker gave back without starting them: placed again, first first."""
        calls, self.pool.unstarted = self.pool.unstarted, []
        self.dispatcher.depth = self.pool.depth(now)
        self.actions.do(self.dispatcher.unstarted(calls), now)

    def withdraw_slow(self, now: float) -> None:
        """Calls wait at workers: none may wait behind a long one (called every few ms then)."""
        if self.pool.withdraw_slow(now):
            self.dispatcher.depth = self.pool.depth(now)

    def resize(self, cpus: int) -> None:
        self.pool.resize(cpus)
        self.sync()

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
            failed = self.pool.run(act.call, act.behind, now)
        except Exception as exc:  # (a bug: the call must still end)
            self.faults.caught("action:RunLocal", f"handing call {act.call.call_id} to a worker", exc, now)
            failed = self.pool.unavailable(act.call.call_id, f"{type(exc).__name__}: {exc}")
        self.sync()
        if failed is not None:
            self.actions.do(self.dispatcher.local_done(failed), now)
        if self.pool.unstarted:
            self.unstarted(now)

    def _kill_local(self, act: dp.KillLocal, now: float) -> None:
        how = self.pool.cancel(act.call_id)
        if how == "stopped":
            log.info("stopped the worker running %s: nobody wants its result", act.call_id)
        self.sync()
        if self.pool.unstarted:  # the calls that waited behind it
            self.unstarted(now)
