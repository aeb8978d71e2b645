"""What one membership message costs the core: work that grows with its gossip, not
with the mesh.

Work is counted, not timed: the Python lines and calls the core runs for one message
(``sys.settrace``), in a mesh of 100 members and in one of 2,000. Each message carries
``gossip_fanout`` digests in and out; a pass over the table or over the gossip buffer
(up to two updates a member) would cost at least one step per member, so twenty times
more in the larger mesh. What is allowed is the same work give or take the random picks
(``MemberTable.pick_alive`` draws again when it draws a member it has already).
"""

from __future__ import annotations

import sys

import pytest

from mesh.discovery.membership import Membership, Reply, Timing
from mesh.wire.messages import Digest, Ping, Pong
from tests.membership_helpers import LOAD, about, ident, info, join

pytestmark = pytest.mark.timeout(60)

SMALL, LARGE = 100, 2000


def steps(fn) -> tuple[int, object]:
    """(Python lines and calls run by ``fn()``, its result)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        count += 1
        return tracer

    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn()
    finally:
        sys.settrace(before)
    return count, result


def mesh_of(n: int, capacity: int) -> tuple[Membership, float]:
    """A core that ``n`` members joined (each pinged it), with news of every one of them
    waiting in its gossip buffer (as after a burst of changes that came faster than
    messages spread them)."""
    core = Membership(info(0), Timing(), max_members=capacity)
    now = 0.0
    for k in range(1, n + 1):
        now += 0.001
        join(core, k, now)
    for member in core.table:
        core.gossip.add(member.digest())
    assert len(core.table) == n and len(core.gossip) == n
    core.tick(now + 1.5)  # a slow tick: the members' connections are no longer silent
    return core, now + 1.5


def ping_from(core: Membership, k: int, gossip: list[Digest], now: float) -> int:
    """Steps for member ``k``'s Ping (with ``gossip``) and the core's Pong."""
    ping = Ping(10_000 + k, info(k), LOAD, gossip)
    work, acts = steps(lambda: core.receive(ping, now, identity=ident(k)))
    pong = next(a.message for a in acts if isinstance(a, Reply))
    assert isinstance(pong, Pong) and len(pong.gossip) == core.timing.gossip_fanout
    return work


def test_a_message_about_known_members_costs_the_same_in_a_mesh_twenty_times_larger():
    fanout = Timing().gossip_fanout
    work = {}
    for n in (SMALL, LARGE):
        core, now = mesh_of(n, capacity=4096)
        news = [about(k, "alive") for k in range(2, 2 + fanout)]
        work[n] = ping_from(core, 1, news, now)
    print(f"\nsteps for one Ping and its Pong: {work}")
    assert work[LARGE] <= 1.5 * work[SMALL], work


def test_news_of_nodes_a_full_table_has_no_room_for_costs_no_pass_over_the_table():
    """A mesh larger than our table: every message names nodes we cannot take."""
    fanout = Timing().gossip_fanout
    work = {}
    for n in (SMALL, LARGE):
        core, now = mesh_of(n, capacity=n)
        strangers = [about(k, "alive") for k in range(n + 1, n + 1 + fanout)]
        work[n] = ping_from(core, 1, strangers, now)
        assert not any(about(k, "alive").id in core.table for k in range(n + 1, n + 1 + fanout))
    print(f"\nsteps for one Ping naming {fanout} strangers and its Pong: {work}")
    assert work[LARGE] <= 1.5 * work[SMALL], work
