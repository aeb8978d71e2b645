"""``mesh tree`` and ``/v1/tree`` (``mesh.faces.treeview``): the document from the
agents' places, its renderings, a gather that ends within its time-out whatever the
members do, and REST's cache (a burst of requests costs one gather).

No agent runs here: the agents are played by objects that answer ``query`` as a
``Client`` or an ``AgentHandle`` does (the real ones: ``tests/test_tree_agents.py``,
``tests/test_rest.py``)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from mesh.faces import treeview
from mesh.faces.treeview import TreeCache, document, gather, render
from mesh.tree import TreeConfig
from tests.test_tree import MS, attached, node

pytestmark = pytest.mark.timeout(30)


def place(i: str, parent: str | None, depth: int | None, rtt: float | None = None,
          rank: float | None = None) -> dict:
    """A ``tree-node`` answer (what ``LatencyTree.view`` says, and the agent's name)."""
    return {"id": i, "name": f"host-{i}", "parent": parent, "depth": depth, "rtt_ms": rtt,
            "rank_ms": rank, "state": "attached", "term": 0, "children": [], "candidates": [],
            "counters": {}}


class Agent:
    """An agent as a client sees it: its place, its members; a context manager."""

    def __init__(self, place: dict, members: list[dict] = (), hang: threading.Event | None = None):
        self.place, self.members, self.hang = place, list(members), hang
        self.asked: list[str] = []

    def query(self, what: str, timeout: float = 5.0):
        self.asked.append(what)
        if self.hang is not None:  # a member that never answers: its client times out
            self.hang.wait(timeout)
            raise TimeoutError(f"no answer within {timeout} s")
        return {"tree-node": self.place, "peers": self.members}[what]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def member(a: Agent, state: str = "alive", load: int = 0) -> dict:
    return {"id": a.place["id"], "name": a.place["name"], "address": f"{a.place['id']}:1",
            "state": state, "load": load}


# ----------------------------------------------------------------------------- the document


def test_the_document_is_the_cores_views_with_names_and_loads():
    r = node("R", score=10.0)
    r.tick(TreeConfig().join_wait * TreeConfig().period)
    x = attached("X", via="R", rank=0.0, rtt=4 * MS)
    views = [dict(x.view(), name="x-host"), dict(r.view(), name="r-host")]
    doc = document(views, load={"X": 2})
    assert doc == {"root": "R", "nodes": [
        {"id": "R", "name": "r-host", "parent": None, "rtt_ms": None, "depth": 0, "rank_ms": 0.0,
         "load": None},
        {"id": "X", "name": "x-host", "parent": "R", "rtt_ms": 4.0, "depth": 1, "rank_ms": 4.0,
         "load": 2}]}
    assert json.loads(render(doc, "json")) == doc
    text = render(doc)
    assert text.splitlines() == ["r-host  path 0.0 ms  (root)", "  x-host  rtt 4.0 ms  path 4.0 ms  load 2"]
    dot = render(doc, "dot")
    assert dot.startswith("digraph") and '"X" -> "R" [label="4.0 ms"];' in dot
    with pytest.raises(ValueError, match="unknown format"):
        render(doc, "svg")


def test_no_single_root_and_nodes_without_a_route():
    doc = document([place("a", None, 0, rank=0.0), place("b", None, 0, rank=0.0),
                    place("c", None, None)], unreachable=["z", "y"])
    assert doc["root"] is None and [n["id"] for n in doc["nodes"]] == ["a", "b", "c"]
    assert doc["unreachable"] == ["y", "z"]
    assert "did not answer: y, z" in render(doc)


# ----------------------------------------------------------------------------- gathering


def test_a_gather_asks_every_live_member_once():
    root = Agent(place("r", None, 0, rank=0.0))
    kids = [Agent(place(f"k{i}", "r", 1, rtt=1.0, rank=1.0)) for i in range(20)]
    gone = Agent(place("g", "r", 1))
    own = Agent(place("o", "r", 1, rtt=2.0, rank=2.0),
                [member(root), *map(member, kids), member(gone, "dead")])
    by_address = {f"{a.place['id']}:1": a for a in (root, *kids, gone)}
    doc = gather(own, lambda address, timeout: by_address[address], timeout=5.0)
    assert doc["root"] == "r" and "unreachable" not in doc
    assert sorted(n["id"] for n in doc["nodes"]) == sorted(["r", "o", *(f"k{i}" for i in range(20))])
    assert own.asked == ["tree-node", "peers"] and gone.asked == []
    assert all(a.asked == ["tree-node"] for a in (root, *kids))


def test_a_gather_ends_within_its_time_out_when_members_do_not_answer():
    hang = threading.Event()
    try:
        silent = [Agent(place(f"s{i}", "r", 1), hang=hang) for i in range(16)]
        root = Agent(place("r", None, 0, rank=0.0))
        own = Agent(place("o", "r", 1), [member(root), *map(member, silent)])
        by_address = {f"{a.place['id']}:1": a for a in (root, *silent)}
        start = time.monotonic()
        doc = gather(own, lambda address, timeout: by_address[address], timeout=0.5, dials=2)
        took = time.monotonic() - start
        assert doc["unreachable"] == sorted(a.place["name"] for a in silent)
        assert [n["id"] for n in doc["nodes"]] == ["r", "o"]
        # the bound is the behaviour here: one time-out (0.5 s), not one per member in
        # turn (8 s), nor one per round of ``dials`` (4 s)
        assert took < 2.0, took
        assert sum(len(a.asked) for a in silent) <= 2 + 2  # 2 at a time; the rest never started
    finally:
        hang.set()


def test_our_own_agent_not_answering_is_an_error():
    own = Agent(place("o", None, None), hang=threading.Event())
    with pytest.raises(TimeoutError):
        gather(own, lambda address, timeout: None, timeout=0.05)


# ----------------------------------------------------------------------------- REST's cache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_serves_a_fresh_document_and_gathers_again_after():
    clock, docs = Clock(), iter(range(100))
    cache = TreeCache(lambda: {"n": next(docs)}, fresh=2.0, clock=clock)
    assert cache.get() == {"n": 0}
    clock.now = 1.9
    assert cache.get() == {"n": 0}
    clock.now = 2.0
    assert cache.get() == {"n": 1} and cache.gathers == 2


def test_requests_that_come_while_a_gather_runs_wait_for_it_and_share_its_document():
    started, release = threading.Event(), threading.Event()

    def slow_gather() -> dict:
        started.set()
        assert release.wait(10)
        return {"nodes": []}

    cache = TreeCache(slow_gather, fresh=60.0)
    got: list[dict] = []
    first = threading.Thread(target=lambda: got.append(cache.get()))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=lambda: got.append(cache.get())) for _ in range(10)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert len(got) == 11 and all(d is got[0] for d in got)
    assert cache.gathers == 1


def test_a_gather_that_fails_is_not_kept_and_a_waiter_gives_up_at_its_bound():
    calls = []

    def failing() -> dict:
        calls.append(1)
        raise TimeoutError("our agent did not answer")

    cache = TreeCache(failing, fresh=60.0)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            cache.get()
    assert len(calls) == 2
    started, release = threading.Event(), threading.Event()

    def stuck_gather() -> dict:
        started.set()
        assert release.wait(10)
        return {}

    stuck = TreeCache(stuck_gather, fresh=60.0, bound=0.1)
    holder = threading.Thread(target=stuck.get)
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(TimeoutError, match="too long"):
            stuck.get()
    finally:
        release.set()
        holder.join(10)


def test_a_burst_of_v1_tree_requests_costs_one_gather(monkeypatch):
    """What the HTTP fuzzer found: every /v1/tree request made the agent ask every member
    (a connection to each), so a client polling it had the agent dial the mesh at its
    pace. A REST server over a stand-in agent: 12 requests at once, one gather."""
    from mesh.faces import rest_auth
    from mesh.faces.rest import RestServer

    monkeypatch.setattr(treeview, "FRESH", 600.0)  # (no gather goes stale during the test)

    class Handle(Agent):
        name, interface, address, key = "solo", "127.0.0.1", "127.0.0.1:9", None

        def request_leave(self) -> None:
            pass

    handle = Handle(place("o", None, 0, rank=0.0), [])
    token = rest_auth.new_token()
    server = RestServer(handle, "127.0.0.1", 0, token)
    codes: list[int] = []

    def get() -> None:
        host, port = server.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v1/tree", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        codes.append(resp.status)
        assert json.loads(resp.read())["root"] == "o"
        conn.close()

    try:
        threads = [threading.Thread(target=get) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    finally:
        server.close()
    assert codes == [200] * 12
    assert handle.asked.count("tree-node") == 1 and handle.asked.count("peers") == 1
