"""Tests for mesh.discovery.detector: Lifeguard's pieces, each pure."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.discovery.detector import GossipBuffer, LocalHealth, suspicion_bounds, suspicion_timeout
from mesh.wire.messages import Digest

pytestmark = pytest.mark.timeout(60)


def digest(n: int, state: str = "alive", incarnation: int = 0) -> Digest:
    return Digest(f"{n:032x}", f"n{n}", f"n{n}:1", state, incarnation, 1)


# ----------------------------------------------------------------------------- LocalHealth


def test_local_health_starts_healthy_and_scales_by_one_plus_score():
    health = LocalHealth()
    assert health.score == 0 and health.scale(0.5) == 0.5
    health.up()
    health.up()
    assert health.score == 2 and health.scale(0.5) == pytest.approx(1.5)


def test_local_health_saturates_at_maximum_and_at_zero():
    health = LocalHealth(maximum=3)
    for _ in range(10):
        health.up()
    assert health.score == 3 and health.scale(1.0) == 4.0
    for _ in range(10):
        health.down()
    assert health.score == 0 and health.scale(1.0) == 1.0


@given(st.lists(st.booleans(), max_size=50), st.integers(1, 10))
def test_local_health_stays_within_bounds(steps, maximum):
    health = LocalHealth(maximum=maximum)
    for up in steps:
        before = health.score
        health.up() if up else health.down()
        assert 0 <= health.score <= maximum
        assert abs(health.score - before) <= 1
        assert health.scale(0.2) >= 0.2


# ----------------------------------------------------------------------------- suspicion


def test_suspicion_bounds_follow_the_log_of_the_mesh_size():
    # small meshes: log10 n < 1, so min = alpha * period
    assert suspicion_bounds(1, 0.5, 2.0, 3.0) == (1.0, 3.0)
    assert suspicion_bounds(6, 0.5, 2.0, 3.0) == (1.0, 3.0)
    low, high = suspicion_bounds(100, 0.5, 2.0, 3.0)
    assert low == pytest.approx(2.0) and high == pytest.approx(6.0)
    low, high = suspicion_bounds(1000, 0.1, 2.0, 3.0)
    assert low == pytest.approx(0.6) and high == pytest.approx(1.8)
    assert suspicion_bounds(0, 0.5, 2.0, 3.0) == (1.0, 3.0)  # never below one member


@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_suspicion_bounds_grow_with_the_mesh(a, b):
    small, large = sorted((a, b))
    assert suspicion_bounds(small, 0.5, 2.0, 3.0)[0] <= suspicion_bounds(large, 0.5, 2.0, 3.0)[0]


def test_suspicion_timeout_starts_at_max_and_reaches_min_at_expected():
    assert suspicion_timeout(1.0, 3.0, 0, 3) == 3.0
    assert suspicion_timeout(1.0, 3.0, 3, 3) == pytest.approx(1.0)
    assert suspicion_timeout(1.0, 3.0, 10, 3) == 1.0  # more than expected: still min
    # logarithmic: the first confirmation buys the most
    one, two = suspicion_timeout(1.0, 3.0, 1, 3), suspicion_timeout(1.0, 3.0, 2, 3)
    assert 3.0 - one > one - two > two - 1.0 > 0
    assert one == pytest.approx(3.0 - 2.0 * math.log(2) / math.log(4))


def test_suspicion_timeout_is_min_when_no_confirmation_is_expected():
    assert suspicion_timeout(1.0, 3.0, 0, 0) == 1.0
    assert suspicion_timeout(1.0, 3.0, 5, 0) == 1.0
    assert suspicion_timeout(2.0, 2.0, 0, 3) == 2.0  # max <= min: min


@given(
    st.floats(0.01, 10.0),
    st.floats(1.0, 6.0),
    st.integers(0, 8),
    st.integers(0, 30),
)
def test_suspicion_timeout_never_grows_with_confirmations_and_stays_in_bounds(low, mult, expected, c):
    high = low * mult
    now, more = suspicion_timeout(low, high, c, expected), suspicion_timeout(low, high, c + 1, expected)
    assert low <= more <= now <= high
    if c >= expected:
        assert now == pytest.approx(low)


# ----------------------------------------------------------------------------- GossipBuffer


def test_gossip_buffer_sends_the_least_sent_updates_first():
    buf = GossipBuffer(retransmit_mult=10)
    for n in (1, 2, 3):
        buf.add(digest(n))
    assert [d.name for d in buf.take(2, 10)] == ["n1", "n2"]
    buf.add(digest(4))
    # n3 and n4 were never sent: they go before n1 and n2
    assert [d.name for d in buf.take(2, 10)] == ["n3", "n4"]
    assert sorted(d.name for d in buf.take(4, 10)) == ["n1", "n2", "n3", "n4"]
    assert {u.sent for u in buf.updates.values()} == {2}


def test_gossip_buffer_holds_at_most_max_updates_and_drops_the_most_sent_first():
    buf = GossipBuffer(retransmit_mult=10, max_updates=3)
    for n in (1, 2, 3):
        buf.add(digest(n))
    buf.take(2, 10)  # n1 and n2 sent once
    buf.take(1, 10)  # n3 sent once
    buf.take(1, 10)  # n1 sent twice: the most sent
    buf.add(digest(4))
    assert sorted(d.name for d in (u.digest for u in buf.updates.values())) == ["n2", "n3", "n4"]
    buf.add(digest(5))  # n2 and n3 sent once each: n2 has waited longer
    assert sorted(d.name for d in (u.digest for u in buf.updates.values())) == ["n3", "n4", "n5"]
    # least sent first; among as many sends, the one waiting longest
    assert [d.name for d in buf.take(3, 10)] == ["n4", "n5", "n3"]


def test_gossip_buffer_replaces_older_news_about_the_same_node():
    buf = GossipBuffer(retransmit_mult=10)
    buf.add(digest(1, "alive", 0))
    buf.add(digest(2))
    buf.take(8, 10)
    buf.take(8, 10)
    buf.add(digest(1, "suspect", 0))  # newer news: replaces, and counts as never sent
    assert len(buf) == 2
    out = buf.take(1, 10)
    assert out == [digest(1, "suspect", 0)]
    assert [d for d in buf.take(8, 10) if d.id == digest(1).id] == [digest(1, "suspect", 0)]


@pytest.mark.parametrize("n_members, per_mult", [(1, 1), (9, 1), (10, 2), (99, 2), (100, 3), (999, 3)])
def test_gossip_buffer_retransmits_each_update_mult_times_log10_n(n_members, per_mult):
    mult = 3
    cap = mult * max(1, math.ceil(math.log10(n_members + 1)))
    assert cap == mult * per_mult
    buf = GossipBuffer(retransmit_mult=mult)
    buf.add(digest(1))
    sends = 0
    for _ in range(cap + 5):
        sends += len(buf.take(8, n_members))
    assert sends == cap
    assert len(buf) == 0


def test_gossip_buffer_first_goes_in_front_and_is_not_duplicated():
    buf = GossipBuffer(retransmit_mult=10)
    for n in (1, 2, 3):
        buf.add(digest(n))
    first = digest(2, "suspect", 0)  # the receiver's own bad news
    out = buf.take(3, 10, first)
    assert out[0] == first
    assert [d.id for d in out].count(first.id) == 1
    assert len(out) == 3 and {d.name for d in out} == {"n1", "n2", "n3"}
    # the buffered update about n2 was not sent by this take
    assert buf.updates[digest(2).id].sent == 0
    assert buf.updates[digest(1).id].sent == 1 and buf.updates[digest(3).id].sent == 1


def test_gossip_buffer_respects_the_limit_with_first():
    buf = GossipBuffer()
    for n in range(10):
        buf.add(digest(n))
    first = digest(99, "dead")
    assert buf.take(1, 10, first) == [first]
    assert all(u.sent == 0 for u in buf.updates.values())
    assert len(buf.take(4, 10, first)) == 4
