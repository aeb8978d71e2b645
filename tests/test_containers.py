"""The one container walk (mesh.program.containers): the depth rule both sides share, on
its own, in the worker's and lineage's hands, and end to end on real agents."""

from __future__ import annotations

import pickle
from collections import OrderedDict, namedtuple

import pytest

import mesh
from mesh.program import slot, taskexec
from mesh.program.api import INOUT, task, wait_on
from mesh.program.containers import MAX_DEPTH, PASS, replace
from mesh.program.lineage import Lineage
from mesh.sched.objects import Ref

pytestmark = pytest.mark.timeout(90)


class Mark:
    """A stand-in for a future: what ``visit`` replaces."""

    def __init__(self, value) -> None:
        self.value = value


def swap(node):
    return node.value if type(node) is Mark else PASS


def nest(x, depth: int):
    for i in range(depth):
        x = [x] if i % 3 == 0 else (x,) if i % 3 == 1 else {"k": x}
    return x


def test_marks_are_replaced_inside_lists_tuples_and_dict_values_at_any_depth_up_to_the_limit():
    value = (Mark(1), [2, Mark(3)], {"a": Mark(4), "b": "plain"}, "s", None)
    assert replace(value, swap) == (1, [2, 3], {"a": 4, "b": "plain"}, "s", None)
    assert replace(nest(Mark(7), MAX_DEPTH), swap) == nest(7, MAX_DEPTH)  # the deepest allowed
    untouched = ([1, [2, (3,)]], {"k": [4]})
    assert replace(untouched, swap) is untouched  # nothing to replace: no copy
    inner = [5]
    assert replace(([Mark(1)], inner), swap)[1] is inner  # only the containers on the way


def test_a_value_nested_beyond_the_limit_raises_a_clear_error():
    with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} deep"):
        replace(nest(Mark(7), MAX_DEPTH + 1), swap)
    with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} deep"):
        replace(nest(0, MAX_DEPTH + 1), swap)  # (even without a mark: it is not looked into)


@pytest.mark.parametrize("holder", [
    lambda m: {m}, lambda m: frozenset([m]), lambda m: {(m,): 1},
    lambda m: namedtuple("P", "x")(m), lambda m: OrderedDict(k=m), lambda m: [{m}],
])
def test_marks_where_they_cannot_be_replaced_are_refused_not_passed_on(holder):
    with pytest.raises(TypeError, match="pass a list"):
        replace(holder(Mark(1)), swap)


def test_sets_keys_and_subclasses_without_marks_pass_as_they_are():
    value = [{1, 2}, frozenset("ab"), {(1, 2): "k"}, namedtuple("P", "x")(3), OrderedDict(a=1)]
    assert replace(value, swap) is value


def test_the_worker_fetches_refs_at_the_depth_the_program_put_them(monkeypatch):
    """f([[[big_future]]]) reached the function as a Ref: the worker looked 3 deep into
    its arguments tuple, one level short."""
    ref = Ref("a" * 32, "holder", 10)
    fetched = []

    def get(oid, holder):
        fetched.append(oid)
        return pickle.dumps("ok")

    monkeypatch.setattr(slot, "get", get)
    assert taskexec._resolve(([[[ref]]],), {}, []) == (([[["ok"]]],), {}, [])
    fetched.clear()
    deep = nest(ref, MAX_DEPTH)
    args, kwargs, outs = taskexec._resolve(([[[ref]]], deep), {"k": {"x": (ref,)}}, [[ref]])
    assert args == ([[["ok"]]], nest("ok", MAX_DEPTH)) and kwargs == {"k": {"x": ("ok",)}}
    assert outs == [["ok"]] and args[0][0][0][0] is kwargs["k"]["x"][0]  # one object per id
    assert fetched == [ref.oid]


def test_lineage_replaces_lost_inputs_at_any_depth_the_program_allows():
    lin = Lineage()
    a = Ref("a" * 32, "holder", 10)
    lin.record("ta", "r", "c", ("f", (), {}, [], [], 1, None), [("va", a)])
    lin.record("tb", "r", "c", ("g", (nest(a, 7),), {}, [], [], 1, [a]), [("vb", Ref("b" * 32, "h", 1))])
    lin.recover(a.oid, ("rerun", "tb"))
    a2 = Ref("c" * 32, "other", 10)
    lin.rerun_done("ta", [("va", a2)])
    _, args, *_ = lin.payload("tb")
    assert args == (nest(a2, 7),)


# ---------------------------------------------------------------- on real agents

BIG = 300_000  # bytes: kept at the agent that made it (a Ref), not sent back inline


@task(returns=1)
def big(seed: int):
    return bytes([seed]) * BIG


@task(returns=1)
def describe(x):
    leaf = x[0][0][0]
    return type(leaf).__name__, len(leaf), leaf[:1]


@task(returns=1)
def total(blocks):
    return [sum(b) for b in blocks]


@task(b=INOUT, returns=0)
def bump(b):
    b[0] += 10


@pytest.mark.agents
def test_a_future_deep_in_a_task_argument_reaches_the_function_as_its_value(agents):
    a = agents.start("cw0", cpus=2)
    with mesh.connect(a.comm):
        assert wait_on(describe([[[big(7)]]])) == ("bytes", BIG, b"\x07")
        # an object a task writes, passed inside a list, is read at its latest version
        blocks = [[1, 2], [3, 4]]
        bump(blocks[0])
        assert wait_on(total([blocks[0], blocks[1]])) == [13, 7]
        # beyond the rule: an error at the call, not a future handed on
        with pytest.raises(ValueError, match="deep"):
            describe(nest(big(1), MAX_DEPTH + 1))
        with pytest.raises(TypeError, match="pass a list"):
            describe({big(2)})
        with pytest.raises(TypeError, match="pass a list"):
            wait_on([frozenset([big(3)])])
        assert wait_on(describe([[[big(9)]]]))[1] == BIG  # (still usable after the refusals)
