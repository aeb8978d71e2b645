"""The agent process: the thin I/O shell around the protocol cores.

One thread owns every ZeroMQ socket and runs one poll loop. It turns frames,
timer ticks, mDNS callbacks (through a waker) and worker results into events,
feeds them to ``Membership``, ``Dispatcher``, ``LatencyTree`` and ``Objects`` and
carries out the actions they return. Nothing clever lives here: no decision is taken
in this package.

``Agent`` builds the cores and holds the parts that do the shell's work, each owning its
state and given what it needs:

- ``Transport`` (``mesh.agent.transport``): the sockets; what a turn sends goes at its end;
- ``Actions`` (``mesh.agent.actions``): action type -> the part that carries it out;
- ``Input`` (``mesh.agent.input``): frames in, decoded, to the handler of their type;
- ``Outbox`` (``mesh.agent.outbox``): frames out, and what becomes of those that cannot go;
- ``ObjectService`` (``mesh.agent.objects``): the agent's side of the object store;
- ``Slots`` (``mesh.agent.slots``): the worker pool (``mesh.agent.pool``) seen from the loop;
- ``Peers`` (``mesh.agent.peers``): what membership and the tree mean for the other cores;
- ``Queries`` (``mesh.agent.queries``): status and the other answers, resource changes;
- ``Inbox`` (``mesh.agent.inbox``): what other threads (mDNS, REST) hand the loop;
- ``Faults`` (``mesh.agent.faults``): what escaped a core or a handler, counted and logged
  with its event; the loop goes on (or leaves, when the same fault repeats in a loop).

Faces (REST) are not the agent's: whoever composes them (``mesh join``) gives a face the
agent's ``handle()`` and ``attach``es it, so that the agent reports its status, names its
address in the state file and closes it when it stops.

The loop itself (``run``) polls, hands what is readable to the part it belongs to, ticks
the cores' timers and, at the end of each turn, sends what the turn produced.

Signals: the first SIGINT/SIGTERM starts a graceful leave (no new client calls,
the backlog goes to peers, running calls finish within ``leave_grace``, then peers
get ``Leave``); a second SIGINT exits at once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import zmq

from mesh.agent.actions import Actions
from mesh.agent.callbook import CallBook
from mesh.agent.cpuquota import quota_cores, slot_speed
from mesh.agent.faults import Faults
from mesh.agent.inbox import AgentHandle, Inbox
from mesh.agent.input import Input
from mesh.agent.objects import ObjectService
from mesh.agent.outbox import Outbox
from mesh.agent.peers import Peers
from mesh.agent.pool import WorkerPool
from mesh.agent.queries import Queries
from mesh.agent.slots import Slots
from mesh.agent.transport import Transport
from mesh.agent.waker import Waker
from mesh.discovery import membership as mb
from mesh.keys import MeshKey, announcement_fields
from mesh.sched import dispatch as dp
from mesh.sched.leases import PERIODS
from mesh.tree import LatencyTree, TreeConfig
from mesh.wire import localsock
from mesh.wire import messages as m
from mesh.wire.framing import FrameStream

log = logging.getLogger("mesh.agent")

SLOW_CHECK_MS = 10  # how often calls waiting at workers are checked for a long call ahead
TREE_PERIOD = {"default": 1.0, "fast": 0.25}  # seconds; the tree's own protocol period
MAX_SLEEP = 1.0  # longest poll; timers come from the cores, other threads use the waker
FAULT_PAUSE = 0.05  # after a turn of the loop failed, the loop waits this long (no spinning)


@dataclass
class AgentConfig:
    name: str
    interface: str = "127.0.0.1"
    comm_port: int = 46102
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


class Agent:
    """One mesh agent. ``run()`` blocks until the agent has left."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node_id = os.urandom(16).hex()  # (secrets would load OpenSSL: ~4 MB)
        self.started = time.monotonic()
        self.transport = Transport(bytes.fromhex(self.node_id), config.interface,
                                   config.comm_port, config.key, config.max_frame,
                                   local=localsock.enabled())  # (MESH_LOCAL_SOCKET)
        self.address = self.transport.address
        # the cores
        me = m.NodeInfo(self.node_id, config.name, self.address, config.cpus, 0)
        timing = mb.Timing.profile(config.profile)
        self.members = mb.Membership(me, timing, random.Random(self.node_id))
        cpu_quota = quota_cores()  # cores the cgroup lets us use (None: no cap)
        self.dispatcher = dp.Dispatcher(config.name, config.cpus, self.node_id, prefetch=1,
                                        speed=slot_speed(config.cpus, cpu_quota),
                                        memory=config.memory, labels=frozenset(config.labels),
                                        unfit_grace=float(os.environ.get("MESH_UNFIT_GRACE", 30)),
                                        lease=PERIODS * timing.period)
        self.tree = LatencyTree(self.node_id, float(config.cpus), random.Random(self.node_id + "tree"),
                                TreeConfig(period=TREE_PERIOD[config.profile]), now=self.started)
        self.members.set_load(self._load())  # (our first Pings, to seeds in start, say it too)
        # the shell's state
        worker_env = {"MESH_WORKER_AGENT": self.address,  # nested tasks reach us here
                      "MESH_AGENT_ID": self.node_id}  # (outputs kept here name us)
        if config.key is not None:
            worker_env["MESH_WORKER_KEY"] = config.key.text()
        self.pool = WorkerPool(config.cpus, config.name, worker_env)
        self.book = CallBook()  # calls submitted over REST, until read
        self.waker = Waker()  # (other threads wake the loop)
        self.transport.poller.register(self.waker.fileno(), zmq.POLLIN)
        if os.environ.get("MESH_EMULATE_DELAY"):  # a test knob: emulated one-way delays
            from mesh.agent import delay

            self.transport = delay.install(self.transport, self.members, self.waker)
        if os.environ.get("MESH_EMULATE_LOSS"):  # a test knob: frames lost on purpose
            from mesh.wire import loss

            self.transport = loss.install_transport(self.transport, self.members)
        self.dropped: Counter = Counter()  # frames and messages dropped, by reason
        self.faces: dict = {}  # name -> a face attached to this agent (REST): see attach
        self.leaving_since: float | None = None  # -1: asked to leave; then when it began
        self.stopped = False
        self.mdns = None
        self._unfit_check = 0.0  # when the backlog is next checked for calls nobody can run
        # the parts (each registers the actions and messages it handles)
        self.faults = Faults(self._on_storm)  # what escaped a core or a handler, by where
        self.actions = Actions(self.faults)
        self.input = Input(config.max_frame, self.members, self.dispatcher, self.transport,
                           self.actions, self.dropped, self.faults)
        self.outbox = Outbox(self.node_id, self.transport, self.members, self.dispatcher,
                             self.book, self.actions, self.dropped)
        self.objects = ObjectService(self.node_id, config.max_frame, self.members, self.dispatcher,
                                     self.pool, self.transport, self.input, self.actions)
        self.slots = Slots(self.pool, self.transport.poller, self.dispatcher, self.objects,
                           self.actions, self.faults)
        self.peers = Peers(self.members, self.dispatcher, self.tree, self.objects, self.input,
                           self.actions, self.dropped)
        self.queries = Queries(config, self.started, cpu_quota, self.members, self.dispatcher,
                               self.tree, self.transport, self.slots, self.objects, self.input,
                               self.actions, self.dropped, self.faults, self.faces,
                               lambda: self.leaving_since is not None)
        self.inbox = Inbox(self.waker, config.key, self.members, self.dispatcher, self.book,
                           self.queries, self.peers, self.actions, self.dropped, self.faults)

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        """Seeds, mDNS, state file. Returns quickly; ``run()`` does the rest."""
        now = time.monotonic()
        for address in self.config.peers:
            self.actions.do(self.members.add_seed(address, now), now)
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
                self.config.cpus, m.PROTOCOL, self.inbox.on_announcement, auth=auth,
            )
            self.mdns.start()
        else:
            log.info("mDNS off: seeds %s and gossip only", ", ".join(self.config.peers) or "(none)")
        if self.config.state_file:
            rest = self.faces.get("rest")
            state = {"id": self.node_id, "name": self.config.name, "comm": self.address,
                     "rest": None if rest is None else rest.address, "pid": os.getpid()}
            tmp = f"{self.config.state_file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.config.state_file)

    def handle(self) -> AgentHandle:
        """What a face (REST) may use of this agent, from its own threads."""
        return AgentHandle(self.config.name, self.config.interface, self.address,
                           self.config.key, self.inbox.ask, self.request_leave)

    def attach(self, name: str, face) -> None:
        """A face serving this agent (before ``start``): ``face.address`` goes to the state
        file (under ``name``: "rest"), ``face.status()`` to the status, and ``face.close()``
        is called when the agent stops."""
        self.faces[name] = face

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
        for face in self.faces.values():
            face.close()
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
        """The loop, until the agent has left. Nothing that goes wrong in a turn ends it
        (``mesh.agent.faults``): an exception costs the event that caused it."""
        transport, slots, outbox, inp = self.transport, self.slots, self.outbox, self.input
        router, poller, waker_fd = transport.router, transport.poller, self.waker.fileno()
        next_tick = time.monotonic()
        try:
            while True:
                try:
                    now = time.monotonic()
                    if now >= next_tick:
                        next_tick = now + MAX_SLEEP  # (whatever fails below: no spinning)
                        self._tick(now)
                        # wake at the membership's next timer, and at least every MAX_SLEEP
                        next_tick = min(self.members.next_timer(now), self.tree.next_timer(now),
                                        now + MAX_SLEEP)
                        if self._leave_done(now):
                            break
                    timeout = max(next_tick - time.monotonic(), 0) * 1000
                    if self.pool.waiting:  # calls wait at workers: none may wait behind a long one
                        slots.withdraw_slow(time.monotonic())
                        timeout = min(timeout, SLOW_CHECK_MS)
                    elif self.pool.held:  # calls wait for a worker: pump (below) looks again
                        timeout = min(timeout, SLOW_CHECK_MS)
                    outbox.flush()  # (what the timers queued: before waiting)
                    only_workers = True  # a worker's results move no membership or tree timer
                    for sock, _ in poller.poll(timeout):
                        now = time.monotonic()
                        try:
                            if sock.__class__ is FrameStream:  # a program on this device
                                inp.read_local(sock, now)
                                continue
                            worker = slots.fds.get(sock)
                            if worker is not None:
                                slots.read(worker, now)
                                continue
                            only_workers = False
                            if sock is router:
                                inp.read_router(sock, now)
                            elif sock is transport.local:
                                transport.accept_local(now)
                            elif sock is transport.zap:
                                transport.handle_zap()
                            elif sock is transport.monitor:
                                transport.handle_monitor()
                            elif sock in transport.monitors:
                                address = transport.read_dealer_monitor(sock)
                                if address is not None:  # a reset: a hint to probe that member now
                                    self.actions.do(self.members.connection_lost(address, now), now)
                            elif sock == waker_fd:
                                self.waker.drain()
                                self.inbox.drain(now)
                            elif not isinstance(sock, int):
                                address = transport.by_socket.get(sock)
                                if address is not None:
                                    inp.read_dealer(sock, address, now)
                        except Exception as exc:  # (that socket's event only)
                            self._fault_at(sock, exc, now)
                    if not only_workers:  # input may have set an earlier timer (a reset: probe
                        t = time.monotonic()  # that member now)
                        next_tick = min(next_tick, self.members.next_timer(t), self.tree.next_timer(t))
                    if self.leaving_since == -1.0:
                        next_tick = 0.0  # a leave was requested: start it now
                    if self.pool.held:  # calls wait for a worker: start those that can
                        slots.pump(time.monotonic())
                    outbox.flush()  # what this turn has for each client and member, batched
                except Exception as exc:  # the last resort: this turn only
                    now = time.monotonic()
                    self.faults.caught("loop", "a turn of the loop", exc, now)
                    # the turn failed before it could wait: wait here, or a fault that comes
                    # back at once would spin, and the timers (a leave among them) never run
                    time.sleep(FAULT_PAUSE)
                    next_tick = 0.0 if self.leaving_since == -1.0 else next_tick
        finally:
            self.close()

    def _fault_at(self, sock, exc: Exception, now: float) -> None:
        """Handling what the poll said of ``sock`` raised: say which event it was."""
        worker = self.slots.fds.get(sock)
        if worker is not None:
            where, event = "worker", f"a frame from worker {worker.proc.pid}"
        elif sock.__class__ is FrameStream:
            where, event = "local", "a frame from a program on the local socket"
        elif sock is self.transport.router:
            where, event = "router", "a frame on the ROUTER"
        elif sock == self.waker.fileno():
            where, event = "inbox", "what another thread handed the loop"
        elif sock in self.transport.by_socket:
            where, event = "dealer", f"a frame from {self.transport.by_socket[sock]}"
        else:
            where, event = "transport", "an event of the transport"
        self.faults.caught(where, event, exc, now)

    def _on_storm(self) -> None:
        """The same fault repeats in a tight loop: leave, gracefully if we still can."""
        self.request_leave()

    def _tick(self, now: float) -> None:
        """The cores' timers, each on its own: one that fails does not stop the others."""
        if self.leaving_since == -1.0:
            self.leaving_since = now
            log.info("leaving: no new calls; handing the backlog to peers")
            self._guarded("tick:leave", "handing the backlog to peers", self._start_leaving, now)
        self._guarded("tick:objects", "the object store's timers", self.objects.tick, now)
        if self.transport.local is not None:
            self.transport.resume_local(now)
        if self.dispatcher.backlog and now >= self._unfit_check:  # calls whose constraints
            self._unfit_check = now + 1.0  # no known agent meets (looked at once a second:
            self._guarded("tick:unfit", "expiring calls nobody can run",  # it reads the backlog)
                          lambda t: self.actions.do(self.dispatcher.expire_unfit(t), t), now)
        self._guarded("tick:leases", "the ledger's leases (questions, silent clients)",
                      lambda t: self.actions.do(self.dispatcher.tick(t), t), now)
        self._guarded("tick:membership", "membership's timers", self._tick_members, now)
        self._guarded("tick:tree", "the tree's timers",
                      lambda t: self.actions.do(self.tree.tick(t), t), now)
        self.peers.choose_delegates()

    def _guarded(self, where: str, event: str, step, now: float) -> None:
        try:
            step(now)
        except Exception as exc:
            self.faults.caught(where, event, exc, now)

    def _start_leaving(self, now: float) -> None:
        if self.mdns is not None:
            mdns, self.mdns = self.mdns, None
            mdns.close()
        acts = self.dispatcher.drain()
        handed = sum(1 for a in acts if isinstance(a, dp.SendTo) and isinstance(a.message, m.Handback))
        if handed:
            log.info("leaving: handed %d queued call(s) back to the agents that sent them", handed)
        self.actions.do(acts, now)

    def _tick_members(self, now: float) -> None:
        self.members.set_load(self._load())
        self.actions.do(self.members.tick(now), now)

    def _leave_done(self, now: float) -> bool:
        """Whether the agent has left: its calls finished, or the grace is over (then
        what remains fails for its callers)."""
        if self.leaving_since is None or self.leaving_since < 0:
            return False
        if now - self.leaving_since < self.config.leave_grace and not self.dispatcher.idle():
            return False
        self._guarded("leave", "leaving the mesh", self._leave, now)
        log.info("left the mesh")
        return True

    def _leave(self, now: float) -> None:
        self.actions.do(self.dispatcher.abandon("AgentLeaving", "the agent left before this call finished"), now)
        self.actions.do(self.members.leave(), now)

    def _load(self) -> m.Load:
        d = self.dispatcher
        return m.Load(d.cpus, d.free, d.queued, d.running, d.speed, self.config.memory,
                      self.config.labels)


def install_signal_handlers(agent: Agent) -> None:
    """First SIGINT/SIGTERM: graceful leave. Second SIGINT: exit at once."""

    def on_signal(signum, frame):
        if agent.leaving_since is not None and signum == signal.SIGINT:
            os._exit(130)
        agent.request_leave()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
