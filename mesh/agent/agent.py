"""The agent process: the thin I/O shell around the protocol cores.

One thread owns every ZeroMQ socket and runs one poll loop. It turns frames,
timer ticks, mDNS callbacks (through a waker) and worker results into events,
feeds them to ``Membership`` and ``Dispatcher`` and carries out the actions they
return. Nothing clever lives here: no decision is taken in this module.

Signals: the first SIGINT/SIGTERM starts a graceful leave (no new client calls,
the backlog goes to peers, running calls finish within ``leave_grace``, then peers
get ``Leave``); a second SIGINT exits at once.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import signal
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import zmq

from mesh.agent import delay
from mesh.agent.actions import AgentActions
from mesh.agent.callbook import CallBook
from mesh.agent.cpuquota import quota_cores, slot_speed
from mesh.agent.input import AgentInput
from mesh.agent.objects import AgentObjects
from mesh.agent.pool import WorkerPool
from mesh.agent.queries import AgentQueries
from mesh.agent.transport import Transport
from mesh.agent.waker import Waker
from mesh.discovery import membership as mb
from mesh.keys import MeshKey, announcement_fields, verify
from mesh.sched import dispatch as dp
from mesh.sched.leases import PERIODS
from mesh.tree import LatencyTree, TreeConfig
from mesh.wire import localsock, loss
from mesh.wire import messages as m
from mesh.wire.localconn import FrameStream

log = logging.getLogger("mesh.agent")

SLOW_CHECK_MS = 10  # how often calls waiting at workers are checked for a long call ahead
TREE_PERIOD = {"default": 1.0, "fast": 0.25}  # seconds; the tree's own protocol period
MAX_SLEEP = 1.0  # longest poll; timers come from the cores, other threads use the waker
# beyond this many live members, calls are delegated to tree neighbours only (placement)
TREE_DELEGATION_MIN = int(os.environ.get("MESH_TREE_DELEGATION_MIN", 16))
_EVENTS, _POLLIN = zmq.EVENTS, int(zmq.POLLIN)


@dataclass
class AgentConfig:
    name: str
    interface: str = "127.0.0.1"
    comm_port: int = 46102
    rest_port: int = -1
    peers: list[str] = field(default_factory=list)
    mdns: bool = True
    cpus: int = 1
    state_file: str | None = None
    profile: str = "default"
    leave_grace: float = 10.0
    max_frame: int = m.MAX_FRAME
    key: MeshKey | None = None  # None: plaintext (--insecure, or loopback without a key)
    memory: int = 0  # bytes offered to tasks (@constraint(memory=...)); 0: not said
    labels: list[str] = field(default_factory=list)  # capabilities (@constraint(labels=...))
    rest_open: bool = False  # --rest-open: /COMPSs/* without a token (mesh.faces.rest_auth)


class Agent(AgentInput, AgentActions, AgentQueries, AgentObjects):
    """One mesh agent. ``run()`` blocks until the agent has left."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node_id = os.urandom(16).hex()  # (secrets would load OpenSSL: ~4 MB)
        self.started = time.monotonic()
        self._unfit_check = 0.0
        self.batches_in = 0  # Batch frames received (from clients), and the frames in them
        self.batched_in = 0
        self.timing = mb.Timing.profile(config.profile)
        self.transport = Transport(bytes.fromhex(self.node_id), config.interface,
                                   config.comm_port, config.key, config.max_frame,
                                   local=localsock.enabled())  # (MESH_LOCAL_SOCKET)
        self.address = self.transport.address
        self.me = m.NodeInfo(self.node_id, config.name, self.address, config.cpus, 0)
        self.members = mb.Membership(self.me, self.timing, random.Random(self.node_id))
        self.cpu_quota = quota_cores()  # cores the cgroup lets us use (None: no cap)
        self.dispatcher = dp.Dispatcher(config.name, config.cpus, self.node_id, prefetch=1,
                                        speed=slot_speed(config.cpus, self.cpu_quota),
                                        memory=config.memory, labels=frozenset(config.labels),
                                        unfit_grace=float(os.environ.get("MESH_UNFIT_GRACE", 30)),
                                        lease=PERIODS * self.timing.period)
        # (test knob: frames lost on purpose, MESH_EMULATE_LOSS; the transport itself otherwise)
        self.transport = loss.install_transport(self.transport, self._member_name_at,
                                                self._member_name_of)
        tree_period = TREE_PERIOD[config.profile]
        self.tree = LatencyTree(self.node_id, float(config.cpus), random.Random(self.node_id + "tree"),
                                TreeConfig(period=tree_period), now=self.started)
        worker_env = {"MESH_WORKER_AGENT": self.address,  # nested tasks reach us here
                      "MESH_AGENT_ID": self.node_id}  # (outputs kept here name us)
        if config.key is not None:
            worker_env["MESH_WORKER_KEY"] = config.key.text()
        self.pool = WorkerPool(config.cpus, config.name, worker_env)
        self.bytes_in = 0
        self.book = CallBook()  # calls submitted over REST, until read
        self.delays = delay.from_env()  # test knob: emulated one-way delays per peer name
        self.delay_line = delay.DelayLine()
        self.waker = Waker()
        self.transport.poller.register(self.waker.fileno(), zmq.POLLIN)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # from other threads
        self.dropped: dict[str, int] = {}
        self.leaving_since: float | None = None
        self.stopped = False
        self.mdns = None
        self.rest = None
        self._worker_fds: dict[int, object] = {}
        self._workers_seen = -1  # pool.generation as of the last _sync_worker_fds
        self._sync_worker_fds()
        self._actions_setup()  # action type -> its method (mesh.agent.actions)
        self._objects_setup()  # task outputs kept here (mesh.agent.objects)

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        """Seeds, mDNS, REST, state file. Returns quickly; ``run()`` does the rest."""
        now = time.monotonic()
        for address in self.config.peers:
            self._do(self.members.add_seed(address, now), now)
        log.info("agent %s (%s) bound comm tcp://%s", self.config.name, self.node_id[:8], self.address)
        if self.config.mdns:
            from mesh.discovery.mdns import MdnsDiscovery

            auth = ""
            if self.config.key is not None:
                auth = self.config.key.announcement_auth(announcement_fields(
                    self.node_id, self.config.name, m.PROTOCOL, self.config.interface,
                    self.transport.port, self.config.cpus))
            self.mdns = MdnsDiscovery(
                self.config.interface, self.node_id, self.config.name, self.transport.port,
                self.config.cpus, m.PROTOCOL, self._on_announcement, auth=auth,
            )
            self.mdns.start()
        else:
            log.info("mDNS off: seeds %s and gossip only", ", ".join(self.config.peers) or "(none)")
        rest_address = None
        if self.config.rest_port >= 0:
            from mesh.faces.rest import RestServer
            from mesh.faces.rest_auth import new_token

            key = self.config.key  # with a key: on the interface, the key's token; else loopback
            self.rest = RestServer(self, self.config.interface if key is not None else "127.0.0.1",
                                   self.config.rest_port,
                                   key.rest_token() if key is not None else new_token(),
                                   rest_open=self.config.rest_open)
            rest_address = self.rest.address
        if self.config.state_file:
            state = {"id": self.node_id, "name": self.config.name, "comm": self.address,
                     "rest": rest_address, "pid": os.getpid()}
            tmp = f"{self.config.state_file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.config.state_file)

    def request_leave(self) -> None:
        """Begin a graceful leave (callable from a signal handler)."""
        if self.leaving_since is None:
            self.leaving_since = -1.0  # picked up by the loop
        self.waker.wake()

    def close(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.mdns is not None:
            self.mdns.close()
        if self.rest is not None:
            self.rest.close()
        self.pool.close()
        self.transport.close()
        self.waker.close()
        if self.config.state_file:
            try:
                os.unlink(self.config.state_file)
            except OSError:
                pass

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        next_tick = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    # wake at the membership's next timer, and at least every MAX_SLEEP
                    next_tick = min(self.members.next_timer(now), self.tree.next_timer(now),
                                    now + MAX_SLEEP)
                    if self._leave_done(now):
                        break
                if self.delays and self.delay_line:  # (only used with emulated delays)
                    self._flush_delayed(time.monotonic())
                    due = self.delay_line.next_due()
                    if due is not None:
                        next_tick = min(next_tick, due)
                timeout = max(next_tick - time.monotonic(), 0) * 1000
                if self.pool.waiting:  # calls wait at workers: none may wait behind a long one
                    t = time.monotonic()
                    if self.pool.withdraw_slow(t):
                        self.dispatcher.depth = self.pool.depth(t)
                    timeout = min(timeout, SLOW_CHECK_MS)
                self._flush()  # (what the timers and delayed frames queued: before waiting)
                only_workers = True  # a worker's results move no membership or tree timer
                for sock, _ in self.transport.poller.poll(timeout):
                    now = time.monotonic()
                    if sock.__class__ is FrameStream:  # a program on this device
                        self._read_local(sock, now)
                        continue
                    worker = self._worker_fds.get(sock)
                    if worker is not None:
                        self._read_worker(worker, now)
                        continue
                    only_workers = False
                    if sock is self.transport.router:
                        self._read_router(now, sock)
                    elif sock is self.transport.local:
                        self.transport.accept_local(now)
                    elif sock is self.transport.zap:
                        self.transport.handle_zap()
                    elif sock is self.transport.monitor:
                        self.transport.handle_monitor()
                    elif sock in self.transport.monitors:
                        address = self.transport.read_dealer_monitor(sock)
                        if address is not None:  # a reset: a hint to probe that member now
                            self._do(self.members.connection_lost(address, now), now)
                    elif sock == self.waker.fileno():
                        self.waker.drain()
                        self._read_inbox(now)
                    elif not isinstance(sock, int):
                        address = self.transport.by_socket.get(sock)
                        if address is not None:
                            self._read_dealer(sock, address, now)
                if not only_workers:  # input may have set an earlier timer (a reset: probe
                    t = time.monotonic()  # that member now)
                    next_tick = min(next_tick, self.members.next_timer(t), self.tree.next_timer(t))
                if self.leaving_since == -1.0:
                    next_tick = 0.0  # a leave was requested: start it now
                self._flush()  # what this turn has for each client and member, batched
        finally:
            self.close()

    def _flush(self) -> None:
        """Send what waits for clients and members. Frames for members that could not
        go (no connection yet, or a full queue): calls we delegate are placed again
        (``forward_failed``), our results for a member whose connection to our ROUTER is
        gone go over our own connection to it (``SendTo``); the transport counted them."""
        unsent = self.transport.flush()
        if not unsent:
            return
        now = time.monotonic()
        for dest, frame in unsent:
            if isinstance(dest, bytes):  # (our ROUTER could not route it: the member's id)
                peer_id, member = dest.hex(), self.members.members.get(dest.hex())
            else:
                member = self.members.member_at(dest)
                peer_id = None if member is None else member.info.id
            msg = m.decode(frame)  # (our own frame)
            for one in (m.unbatch(msg)[0] if type(msg) is m.Batch else (msg,)):
                if isinstance(dest, str) and isinstance(one, m.Call) and peer_id is not None:
                    self._do(self.dispatcher.forward_failed(one.call_id, peer_id), now)
                elif isinstance(dest, bytes) and isinstance(one, (m.Result, m.Held)) \
                        and member is not None:
                    self._do([dp.SendTo(peer_id, one)], now)
                # (the rest, e.g. a probe before the connection is up, is lost: the
                # transport counted it in dropped_sends)

    def _tick(self, now: float) -> None:
        if self.leaving_since == -1.0:
            self.leaving_since = now
            log.info("leaving: no new calls; handing the backlog to peers")
            if self.mdns is not None:
                self.mdns.close()
                self.mdns = None
            acts = self.dispatcher.drain()
            handed = sum(1 for a in acts if isinstance(a, dp.SendTo) and isinstance(a.message, m.Handback))
            if handed:
                log.info("leaving: handed %d queued call(s) back to the agents that sent them", handed)
            self._do(acts, now)
        if self.objects.fetching:
            self._do(self.objects.tick(now), now)
        if self.transport.local is not None:
            self.transport.resume_local(now)
        if self.dispatcher.backlog and now >= self._unfit_check:  # calls whose constraints
            self._unfit_check = now + 1.0  # no known agent meets (looked at once a second:
            self._do(self.dispatcher.expire_unfit(now), now)  # it reads the whole backlog)
        self.members.set_load(self._load())
        self._do(self.dispatcher.tick(now), now)  # (leases: questions, silent clients)
        self._do(self.members.tick(now), now)
        self._do(self.tree.tick(now), now)
        if len(self.members.alive()) >= TREE_DELEGATION_MIN:  # a big mesh: delegate along the tree
            parent = self.tree.parent
            self.dispatcher.neighbours = frozenset(
                [*self.tree.children, parent] if parent is not None else self.tree.children)
        else:
            self.dispatcher.neighbours = None

    def _leave_done(self, now: float) -> bool:
        if self.leaving_since is None or self.leaving_since < 0:
            return False
        if not self.dispatcher.idle() and now - self.leaving_since < self.config.leave_grace:
            return False
        self._do(self.dispatcher.abandon("AgentLeaving", "the agent left before this call finished"), now)
        self._do(self.members.leave(), now)
        log.info("left the mesh")
        return True

    def _member_name_at(self, address: str) -> str | None:
        member = self.members.member_at(address)
        return None if member is None else member.info.name

    def _member_name_of(self, identity: bytes) -> str | None:
        member = self.members.members.get(identity.hex()) if len(identity) == 16 else None
        return None if member is None else member.info.name

    def _load(self) -> m.Load:
        d = self.dispatcher
        return m.Load(d.cpus, d.free, d.queued, d.running, d.speed, self.config.memory,
                      self.config.labels)

    # ------------------------------------------------------------------ workers

    def _read_worker(self, worker, now: float) -> None:
        pool = self.pool
        results = pool.readable(worker, now)
        if pool.unstarted:  # given back by a worker (before the lend that made it do so)
            self._unstarted(now)
        lends, pool.lends = pool.lends, []
        for call_id, lent in lends:
            self._do(self.dispatcher.lend(call_id, lent), now)
        if pool.puts or pool.gets:
            self._worker_objects(now)
        self.dispatcher.depth = pool.depth(now)
        for result in results:
            self._do(self.dispatcher.local_done(result), now)
        if pool.unstarted:  # (a worker that died: the calls that waited behind its call)
            self._unstarted(now)
        self._sync_worker_fds()

    def _unstarted(self, now: float) -> None:
        """Calls a worker gave back without starting them: placed again, first first."""
        calls, self.pool.unstarted = self.pool.unstarted, []
        self.dispatcher.depth = self.pool.depth(now)
        self._do(self.dispatcher.unstarted(calls), now)

    def _read_inbox(self, now: float) -> None:
        while True:
            try:
                kind, a, b = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "found":
                self._do(self.members.discovered(a, b, now), now)
            elif kind == "dropped":
                self.dropped[a] = self.dropped.get(a, 0) + 1
            elif kind == "ask":
                try:
                    b.set_result(self._answer(m.Query(0, a)))
                except Exception as exc:  # report to the asking thread, keep the loop
                    b.set_exception(exc)
            elif kind == "rest-call":  # a: a Call built by the REST thread
                self.book.add(a.call_id, a.function, now)
                self._do(self.dispatcher.submit(a, CallBook.identity(a.call_id), None, now), now)
                b.set_result(a.call_id)
            elif kind == "resources":  # a: a Resources request (COMPSs endpoints)
                b.set_result(self.change_resources(a, now))
            elif kind == "call-state":  # a: a call id
                entry = self.dispatcher.pending.get(a)
                where = None if entry is None else (
                    entry.where if entry.where in ("local", "backlog") else self._name_of(entry.where))
                b.set_result(self.book.view(a, where))

    def _on_announcement(self, ann) -> None:
        """mDNS thread: check the announcement's authenticator, queue it for the loop."""
        if ann.protocol != m.PROTOCOL:
            self._inbox.put(("dropped", "mdns_version", None))
        elif self.config.key is not None and not verify(
            self.config.key.announcement_auth(announcement_fields(
                ann.node_id, ann.name, ann.protocol, ann.host, ann.port, ann.cpus)), ann.auth):
            self._inbox.put(("dropped", "mdns_auth", None))
            log.warning("ignored an mDNS announcement with a wrong authenticator: %s at %s",
                        ann.name, ann.address)
        else:
            self._inbox.put(("found", ann.node_id, ann.address))
        self.waker.wake()

    def ask(self, what: str, timeout: float = 5.0, arg=None):
        """From another thread (REST): ``what`` is a query name (answered with an
        Answer), or "rest-call" (``arg``: a Call; returns its id) or "call-state"
        (``arg``: a call id; returns the call's document or None). Raises TimeoutError."""
        fut: Future = Future()
        if what in ("rest-call", "call-state", "resources"):
            self._inbox.put((what, arg, fut))
        else:
            self._inbox.put(("ask", what, fut))
        self.waker.wake()
        return fut.result(timeout)

    def _sync_worker_fds(self) -> None:
        """Poll exactly the pool's workers' sockets (called after anything that may
        start or stop a worker; usually nothing changed, which is checked first)."""
        if self.pool.generation == self._workers_seen:
            return
        self._workers_seen = self.pool.generation
        current = {w.fileno(): w for w in self.pool.workers}
        old = self._worker_fds
        for fd, w in old.items():  # (a number may now be another worker's: it is new)
            if current.get(fd) is not w:
                try:
                    self.transport.poller.unregister(fd)
                except KeyError:
                    pass
        for fd, w in current.items():
            if old.get(fd) is not w:
                self.transport.poller.register(fd, zmq.POLLIN)
        self._worker_fds = current


def install_signal_handlers(agent: Agent) -> None:
    """First SIGINT/SIGTERM: graceful leave. Second SIGINT: exit at once."""

    def on_signal(signum, frame):
        if agent.leaving_since is not None and signum == signal.SIGINT:
            os._exit(130)
        agent.request_leave()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
