"""A virtual clock and a fake network that drive ``Membership`` cores.

Theory of operation
-------------------
No socket, thread or real clock: events wait on a virtual ``Clock``
(``mesh.sim.clock``) and all randomness comes from one seeded ``random.Random``, so
one seed gives one run, action for action.

Routing mirrors the agent (``mesh/agent/agent.py``):

* ``Send(address, msg)`` from node S travels over S's connection to ``address``
  (S must have done ``Connect(address)`` and not ``Disconnect``) and arrives on
  the ROUTER of the node listening on ``address``, with ``identity`` = S's node id.
* ``Reply(identity, msg)`` from node D travels back over that same connection: it
  arrives at the node whose id is ``identity`` with ``via`` = the address that node
  used to reach D, and is lost if that connection was closed meanwhile.
* Like the agent, any message from a known member first counts as a sign of life
  (``heard_from``), then ``Ping``/``Leave`` (ROUTER) and ``Pong`` (DEALER) go to
  ``receive``.

Each direction of a connection is FIFO (as TCP is). Faults: ``loss`` and
``duplicate`` probabilities per message, a random delay in ``delay``, partitions
between pairs of nodes, and ``kill``/``revive`` (a killed node neither ticks nor
receives; messages to it are lost; reviving resumes it with its old state, like a
node that was frozen or cut off).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mesh.discovery.membership import (
    DEALER_MESSAGES,
    ROUTER_MESSAGES,
    Connect,
    DeclaredDead,
    Disconnect,
    Forgotten,
    MemberChanged,
    Membership,
    Reply,
    Send,
    Timing,
)
from mesh.sim.clock import Clock
from mesh.wire.messages import Message, NodeInfo

MAX_TICK = 0.1  # the longest wait between two ticks of a node, as the agent's MAX_SLEEP


@dataclass
class SimNode:
    """One simulated agent: its membership core and its connections."""

    name: str
    membership: Membership
    tick_every: float
    id: str = field(init=False)  # (its node id and address never change)
    address: str = field(init=False)
    alive: bool = True
    conns: set[str] = field(default_factory=set)  # addresses we have a connection to
    paths: dict[str, str] = field(default_factory=dict)  # peer id -> address it reached us on
    changes: list[tuple[float, MemberChanged]] = field(default_factory=list)
    declared_dead: list[float] = field(default_factory=list)  # when it learnt it was
    forgotten: list[tuple[float, str]] = field(default_factory=list)  # (when, node id)

    def __post_init__(self) -> None:
        self.id = self.membership.me.id
        self.address = self.membership.me.address


class SimNetwork:
    """Virtual clock plus fake network. See the module docstring."""

    def __init__(
        self,
        seed: int = 0,
        *,
        delay: tuple[float, float] = (0.0005, 0.003),
        loss: float = 0.0,
        duplicate: float = 0.0,
        record: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.delay, self.loss, self.duplicate = delay, loss, duplicate
        self.nodes: dict[str, SimNode] = {}  # by node id
        self.listeners: dict[str, str] = {}  # address -> node id
        self.blocked: set[frozenset[str]] = set()
        self.stats: Counter[str] = Counter()
        self.trace: list[tuple[float, str, str]] | None = [] if record else None
        self._fifo: dict[tuple[str, str, str, str], float] = {}

    # ------------------------------------------------------------------ setup

    def add(
        self,
        name: str,
        *,
        timing: Timing | None = None,
        cpus: int = 1,
        max_members: int = 1024,
        seeds: Iterable[str] = (),
    ) -> SimNode:
        """Start a node listening on ``<name>:1``, contacting ``seeds`` at once."""
        node_id = f"{self.rng.getrandbits(128):032x}"
        timing = timing or Timing()
        info = NodeInfo(node_id, name, f"{name}:1", cpus, 0)
        core = Membership(info, timing, random.Random(node_id), max_members)
        node = SimNode(name, core, tick_every=MAX_TICK)
        self.nodes[node_id] = node
        self.listeners[info.address] = node_id
        for address in seeds:
            self.do(node, core.add_seed(address, self.now))
        self.clock.at(self.now + self.rng.uniform(0, node.tick_every), self._tick, node)
        return node

    def alias(self, address: str, node: SimNode) -> None:
        """``node`` is also reachable at ``address`` (a second name for the same host)."""
        self.listeners[address] = node.id

    # ------------------------------------------------------------------ faults

    def kill(self, node: SimNode, reset: bool = False) -> None:
        """Stop ``node``. ``reset``: its host closes its TCP connections (a process
        killed on a live host), so every peer connected to it sees a reset."""
        node.alive = False
        if reset:
            for other in self.nodes.values():
                if other is not node and other.alive and node.address in other.conns:
                    self.do(other, other.membership.connection_lost(node.address, self.now))

    def revive(self, node: SimNode) -> None:
        if not node.alive:
            node.alive = True
            self.clock.at(self.now, self._tick, node)

    def partition(self, a: SimNode, b: SimNode) -> None:
        self.blocked.add(frozenset((a.id, b.id)))

    def heal(self, a: SimNode, b: SimNode) -> None:
        self.blocked.discard(frozenset((a.id, b.id)))

    # ------------------------------------------------------------------ clock

    @property
    def now(self) -> float:
        return self.clock.now

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at virtual time ``when``."""
        self.clock.at(when, fn)

    def run_until(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to virtual time ``until`` (or until ``stop()`` is true,
        checked after every event). Returns whether ``stop`` fired."""
        return self.clock.run_until(until, stop)

    def run_for(self, seconds: float) -> None:
        self.clock.run_for(seconds)

    # ------------------------------------------------------------------ actions

    def do(self, node: SimNode, actions: list) -> None:
        """Carry out ``node``'s actions, as the agent's ``_do`` does."""
        for act in actions:
            if self.trace is not None:
                self.trace.append((round(self.now, 9), node.name, repr(act)))
            if isinstance(act, Connect):
                node.conns.add(act.address)
            elif isinstance(act, Disconnect):
                node.conns.discard(act.address)
            elif isinstance(act, Send):
                self._send(node, act.address, act.message)
            elif isinstance(act, Reply):
                self._reply(node, act.identity.hex(), act.message)
            elif isinstance(act, MemberChanged):
                node.changes.append((self.now, act))
            elif isinstance(act, DeclaredDead):
                node.declared_dead.append(self.now)
            elif isinstance(act, Forgotten):
                node.forgotten.append((self.now, act.node_id))
            else:
                raise TypeError(f"unknown action {act!r}")

    # ------------------------------------------------------------------ internals

    def _tick(self, node: SimNode) -> None:
        if not node.alive:
            return  # revive() schedules the next tick
        self.do(node, node.membership.tick(self.now))
        # as the agent: wake at the core's next timer, and at least every tick_every
        when = min(node.membership.next_timer(self.now), self.now + node.tick_every)
        self.clock.at(max(when, self.now + 1e-4), self._tick, node)

    def _send(self, src: SimNode, address: str, msg: Message) -> None:
        if address not in src.conns:
            self.stats["no_connection"] += 1
            return
        dst_id = self.listeners.get(address)
        if dst_id is None:
            self.stats["no_listener"] += 1
            return
        dst = self.nodes[dst_id]
        self._transmit(src, dst, (src.id, dst.id, address, "out"), self._router_in, src.id, address, msg)

    def _reply(self, src: SimNode, dst_id: str, msg: Message) -> None:
        dst = self.nodes.get(dst_id)
        address = src.paths.get(dst_id)
        if dst is None or address is None:
            self.stats["no_route"] += 1
            return
        self._transmit(src, dst, (dst.id, src.id, address, "back"), self._dealer_in, address, msg)

    def _transmit(self, src: SimNode, dst: SimNode, channel: tuple,
                  deliver: Callable[..., None], *args: object) -> None:
        """``deliver(dst, *args)`` after the link's delay, unless lost (FIFO per channel)."""
        if not src.alive:
            return
        copies = 1
        if self.rng.random() < self.loss:
            self.stats["lost"] += 1
            copies = 0
        elif self.rng.random() < self.duplicate:
            self.stats["duplicated"] += 1
            copies = 2
        for _ in range(copies):
            when = max(self.now + self.rng.uniform(*self.delay), self._fifo.get(channel, 0.0))
            self._fifo[channel] = when
            self.clock.at(when, self._arrive, src, dst, deliver, args)

    def _arrive(self, src: SimNode, dst: SimNode, deliver: Callable[..., None], args: tuple) -> None:
        if not dst.alive or frozenset((src.id, dst.id)) in self.blocked:
            self.stats["dropped"] += 1
            return
        self.stats["delivered"] += 1
        deliver(dst, *args)

    def _router_in(self, dst: SimNode, sender_id: str, address: str, msg: Message) -> None:
        core = dst.membership
        dst.paths[sender_id] = address  # the ROUTER replies over this connection
        if sender_id in core.members:
            self.do(dst, core.heard_from(sender_id, self.now))
        if isinstance(msg, ROUTER_MESSAGES):
            self.do(dst, core.receive(msg, self.now, identity=bytes.fromhex(sender_id)))

    def _dealer_in(self, dst: SimNode, address: str, msg: Message) -> None:
        if address not in dst.conns:
            self.stats["closed"] += 1  # the connection was closed while the reply travelled
            return
        core = dst.membership
        member = core.member_at(address)
        if member is not None:
            self.do(dst, core.heard_from(member.info.id, self.now))
        if isinstance(msg, DEALER_MESSAGES):
            self.do(dst, core.receive(msg, self.now, via=address))
