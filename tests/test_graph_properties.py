"""Tests for mesh.sched.graph: hypothesis properties over random programs run by a random
scheduler (the graph is a pure state machine; these tests play the shell themselves).

Builders: ``tests/graph_helpers.py``.
"""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.sched.graph import (
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    IN,
    INOUT,
    OUT,
    Cancelled,
    DataVersion,
    Finished,
    GraphFailed,
    Kill,
    OnFailure,
    Param,
    Ready,
    Release,
    Snapshot,
    TaskGraph,
    TaskSpec,
    TaskState,
    return_id,
)
from tests.graph_helpers import (
    OK,
    fail,
    ref,
)

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------- properties

POOL = ["a", "b", "c"]
FILES = ["f1", "f2"]
# FAIL (and RETRY run out) end the whole run: drawn less often, so runs go on long enough
POLICIES = [OnFailure.RETRY, OnFailure.CANCEL_SUCCESSORS, OnFailure.CANCEL_SUCCESSORS,
            OnFailure.IGNORE, OnFailure.IGNORE, OnFailure.FAIL]


@st.composite
def programs(draw, with_failures: bool = True):
    n = draw(st.integers(1, 25))
    tasks = []
    for i in range(n):
        params = []
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["lit", "obj", "file", "ret"]))
            if kind == "lit":
                params.append(Param.literal())
            elif kind == "obj" or (kind == "ret" and not any(t.returns for t in tasks)):
                params.append(ref(draw(st.sampled_from(POOL)), draw(st.sampled_from([IN, OUT, INOUT]))))
            elif kind == "file":
                params.append(ref(draw(st.sampled_from(FILES)),
                                  draw(st.sampled_from([FILE_IN, FILE_OUT, FILE_INOUT]))))
            else:
                src = draw(st.sampled_from([t for t in tasks if t.returns]))
                params.append(ref(return_id(src.task_id, draw(st.integers(0, src.returns - 1))),
                                  draw(st.sampled_from([IN, IN, INOUT]))))
        seen: set[str] = set()  # a datum written twice by one task is refused: keep the first
        kept = []
        for p in params:
            if p.direction.writes:
                if p.data_id in seen:
                    continue
                seen.add(p.data_id)
            kept.append(p)
        tasks.append(TaskSpec(
            f"t{i}", "fn", kept, draw(st.integers(0, 2)),
            priority=draw(st.booleans()),
            on_failure=draw(st.sampled_from(POLICIES)) if with_failures else OnFailure.RETRY,
            time_out=draw(st.sampled_from([None, 1.0, 5.0])) if with_failures else None,
            max_attempts=draw(st.integers(1, 3))))
    return tasks, draw(st.integers(0, 2**32 - 1))


class Checker:
    """The shell with invariant checks on every action."""

    def __init__(self) -> None:
        self.g = TaskGraph()
        self.live: dict[tuple[str, int], Ready] = {}  # emitted, not yet over
        self.seen_ready: set[tuple[str, int]] = set()
        self.terminal: dict[str, str] = {}
        self.available: set[DataVersion] = set()
        self.failed_values: set[DataVersion] = set()
        self.released: set[DataVersion] = set()
        self.last_attempt: dict[str, Ready] = {}
        self.graph_failed = 0
        self.now = 0.0

    def take(self, acts) -> None:
        for a in acts:
            if isinstance(a, Ready):
                key = (a.task_id, a.attempt)
                assert key not in self.seen_ready, f"Ready twice for {key}"
                assert a.task_id not in self.terminal
                self.seen_ready.add(key)
                if a.attempt > 1:
                    assert (a.task_id, a.attempt - 1) in self.seen_ready
                for p in a.params:
                    if p.read is not None:
                        assert p.read not in self.released, f"{a.task_id} reads released {p.read}"
                        if p.read_failed:
                            assert p.read in self.failed_values
                        else:
                            assert p.read in self.available, f"{a.task_id} runs before {p.read} exists"
                self.live[key] = a
                self.last_attempt[a.task_id] = a
            elif isinstance(a, Kill):
                assert (a.task_id, a.attempt) in self.live
                del self.live[(a.task_id, a.attempt)]
            elif isinstance(a, (Finished, Cancelled)):
                assert a.task_id not in self.terminal, f"{a.task_id} ends twice"
                self.terminal[a.task_id] = a.state.value if isinstance(a, Finished) else "cancelled"
                r = self.last_attempt.get(a.task_id)
                if isinstance(a, Finished):
                    assert r is not None and r.attempt == a.attempt
                    self.live.pop((a.task_id, a.attempt), None)
                    outs = [p.write for p in r.params if p.write is not None] + list(r.returns)
                    if a.state is TaskState.DONE:
                        self.available.update(outs)
                    elif r.spec.on_failure is OnFailure.IGNORE:
                        self.failed_values.update(outs)
                else:
                    assert not any(k[0] == a.task_id for k in self.live), "cancelled without Kill"
            elif isinstance(a, Snapshot):
                assert a.version not in self.available
                self.available.add(a.version)
            elif isinstance(a, Release):
                assert a.version in self.available and a.version not in self.released
                self.released.add(a.version)
                for r in self.live.values():  # nobody running reads it
                    assert all(p.read != a.version for p in r.params)
            elif isinstance(a, GraphFailed):
                self.graph_failed += 1
                assert self.graph_failed == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_with_failures_keep_the_invariants(program):
    specs, seed = program
    rng = random.Random(seed)
    c = Checker()
    todo = deque(specs)
    dead: list[tuple[str, int]] = []  # attempts over: their late reports must be ignored
    steps = 0
    while todo or c.live:
        steps += 1
        assert steps < 10_000
        c.now += rng.random()
        if todo and (not c.live or rng.random() < 0.3):
            c.take(c.g.submit(todo.popleft(), c.now))
            continue
        key = rng.choice(sorted(c.live))
        task_id, attempt = key
        r = c.live[key]
        roll = rng.random()
        if roll < 0.03 and dead:
            stale = rng.choice(dead)
            before = c.g.counters["stale_results"] + c.g.counters["unknown_results"]
            assert c.g.done(*stale, OK, c.now) == []
            assert c.g.counters["stale_results"] + c.g.counters["unknown_results"] == before + 1
            continue
        if roll < 0.08 and r.spec.time_out is not None:
            if c.g.task_state(task_id) is TaskState.READY:
                c.take(c.g.started(task_id, attempt, c.now))
            c.now += r.spec.time_out
            c.take(c.g.tick(c.now))
            assert key not in c.live
        elif roll < 0.1:
            c.take(c.g.timed_out(task_id, attempt, c.now))
            assert key not in c.live
        else:
            if roll < 0.4 and c.g.task_state(task_id) is TaskState.READY:
                c.take(c.g.started(task_id, attempt, c.now))
            c.take(c.g.done(task_id, attempt, fail("x") if roll > 0.88 else OK, c.now))
        c.live.pop(key, None)
        dead.append(key)
    assert c.g.barrier()
    assert set(c.terminal) == {s.task_id for s in specs}  # each ended, once (checked in take)
    assert (c.graph_failed == 1) == (c.g.failure is not None)
    if c.g.failure is None:  # cancelled exactly when a predecessor was lost (program order)
        policy = {s.task_id: s.on_failure for s in specs}
        writer: dict[str, str] = {}
        for s in specs:
            preds = {writer[p.data_id] for p in s.params
                     if p.data_id in writer and p.direction.reads}
            lost = any(c.terminal[w] == "cancelled" or (
                c.terminal[w] == "failed" and policy[w] is OnFailure.CANCEL_SUCCESSORS) for w in preds)
            assert (c.terminal[s.task_id] == "cancelled") == lost, s.task_id
            writer.update((p.data_id, s.task_id) for p in s.params if p.direction.writes)
            writer.update((return_id(s.task_id, i), s.task_id) for i in range(s.returns))
    # the program drops every name: the graph empties and every value is freed once
    names = POOL + FILES + [return_id(s.task_id, i) for s in specs for i in range(s.returns)]
    c.take(c.g.forget(names))
    assert c.g.task_count == 0 and c.g.data_count == 0 and c.g.version_count == 0
    assert c.released == c.available


def _value(task_id: str, what, reads: tuple) -> int:
    return hash((task_id, what, reads))


def _sequential(specs) -> dict[str, int]:
    """The values of every datum after running the program one task at a time."""
    state: dict[str, int] = {}
    for s in specs:
        reads = tuple(state.setdefault(p.data_id, hash(("init", p.data_id)))
                      if p.data_id is not None and p.direction.reads else None for p in s.params)
        for k, p in enumerate(s.params):
            if p.direction.writes:
                state[p.data_id] = _value(s.task_id, k, reads)
        for i in range(s.returns):
            state[return_id(s.task_id, i)] = _value(s.task_id, f"r{i}", reads)
    return state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(with_failures=False))
def test_random_schedules_compute_what_a_sequential_run_computes(program):
    specs, seed = program
    rng = random.Random(seed)
    g = TaskGraph()
    store: dict[DataVersion, int] = {}
    ready: dict[str, Ready] = {}

    def take(acts):
        for a in acts:
            if isinstance(a, Snapshot):
                store[a.version] = hash(("init", a.version.data_id))
            elif isinstance(a, Ready):
                ready[a.task_id] = a
            elif isinstance(a, Release):
                del store[a.version]  # a premature release shows as a KeyError below

    todo = deque(specs)
    while todo or ready:
        if todo and (not ready or rng.random() < 0.4):
            take(g.submit(todo.popleft(), 0.0))
            continue
        a = ready.pop(rng.choice(sorted(ready)))
        reads = tuple(store[p.read] if p.read is not None else None for p in a.params)
        for k, p in enumerate(a.params):
            if p.write is not None:
                store[p.write] = _value(a.task_id, k, reads)
        for i, v in enumerate(a.returns):
            store[v] = _value(a.task_id, f"r{i}", reads)
        take(g.done(a.task_id, a.attempt, OK, 0.0))
    assert g.barrier()
    expected = _sequential(specs)
    for data_id, value in expected.items():
        (res,) = g.wait_on(data_id)
        assert res.ok and store[res.version] == value, data_id
    assert len(store) == len(expected)  # every superseded version was released
