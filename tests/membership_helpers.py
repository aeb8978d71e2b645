"""Shared drivers for the membership tests (``tests/test_membership_*.py``).

Tests of ``mesh.discovery.membership`` (SWIM with Lifeguard's refinements) drive
cores either directly (one core, messages fed by hand, actions checked) or through
``mesh.sim.SimNetwork``: a virtual clock and a fake network that route
``Send``/``Reply`` as the agent does (a Send arrives on the peer's ROUTER with our
node id as identity; the peer's Reply comes back on our connection to the address
we sent to). No sockets, no sleeps: virtual seconds cost microseconds.

Timing bounds are derived from ``Timing`` and ``suspicion_bounds``, never guessed.
"""

from __future__ import annotations

from mesh.discovery.detector import suspicion_bounds
from mesh.discovery.membership import MemberChanged, Membership, Send, Timing
from mesh.sim import SimNetwork, SimNode
from mesh.wire.messages import Digest, IndirectAck, Load, Nack, NodeInfo, Ping, PingReq, Pong

LOAD = Load(1, 1, 0, 0)


def state(of: SimNode, about: SimNode) -> str | None:
    member = of.membership.members.get(about.id)
    return None if member is None else member.state


def converged(nodes: list[SimNode]) -> bool:
    """Everyone has everyone else alive in its table."""
    return all(
        state(a, b) == "alive" for a in nodes for b in nodes if a is not b and a.alive and b.alive
    )


def transitions(node: SimNode, about: SimNode) -> list[tuple[float, str, str]]:
    return [(t, c.old, c.new) for t, c in node.changes if c.node_id == about.id]


def info(n: int, cpus: int = 1, incarnation: int = 0) -> NodeInfo:
    return NodeInfo(f"{n:032x}", f"n{n}", f"n{n}:1", cpus, incarnation)


def ident(n: int) -> bytes:
    """The ROUTER identity of node ``n``'s connection (its node id, as the agent sets it)."""
    return bytes.fromhex(info(n).id)


def about(n: int, state: str, incarnation: int = 0) -> Digest:
    i = info(n)
    return Digest(i.id, i.name, i.address, state, incarnation, i.cpus)


def number(address: str) -> int:
    return int(address.split(":")[0][1:])  # "n7:1" -> 7


def join(core: Membership, n: int, now: float, incarnation: int = 0) -> list:
    """Node ``n`` pings ``core``: it becomes a member and ``core`` connects back."""
    return core.receive(Ping(1000 + n, info(n, incarnation=incarnation), LOAD), now, identity=ident(n))


def bounds(timing: Timing, n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout in a mesh of ``n`` nodes."""
    return suspicion_bounds(n, timing.period, timing.suspicion_alpha, timing.suspicion_beta)


def run_core(core: Membership, start: float, end: float, *, silent=(), step: float = 0.01,
             stop=None) -> list[tuple[float, object]]:
    """Tick ``core`` every ``step`` from ``start`` to ``end`` (or until ``stop()``); the
    members answer its pings and indirect-probe requests at once, except the node
    numbers in ``silent``. Returns every (time, action)."""
    log: list[tuple[float, object]] = []
    k = 0
    while (t := start + k * step) <= end + 1e-9:
        pending = core.tick(t)
        while pending:
            act = pending.pop(0)
            log.append((t, act))
            if not isinstance(act, Send) or number(act.address) in silent:
                continue
            n, msg = number(act.address), act.message
            if isinstance(msg, Ping):
                pending += core.heard_from(info(n).id, t)
                pending += core.receive(Pong(msg.seq, info(n), LOAD), t, via=act.address)
            elif isinstance(msg, PingReq):
                answer = (Nack(msg.seq, msg.target) if number(msg.address) in silent
                          else IndirectAck(msg.seq, msg.target))
                pending += core.receive(answer, t, via=act.address)
        if stop is not None and stop():
            break
        k += 1
    return log


def changes(log) -> list[MemberChanged]:
    return [a for _, a in log if isinstance(a, MemberChanged)]


def mesh(seed: int, n: int, timing: Timing | None = None, settle: float = 2.0, **net_options):
    """``n`` nodes that all seeded the first, converged and settled."""
    net = SimNetwork(seed, **net_options)
    nodes = [net.add("n0", timing=timing)]
    for i in range(1, n):
        nodes.append(net.add(f"n{i}", timing=timing, seeds=[nodes[0].address]))
    assert net.run_until(10.0, stop=lambda: converged(nodes))
    net.run_for(settle)
    return net, nodes
