"""``mesh tree`` and REST's ``/v1/tree``: every agent's place in the latency tree,
gathered into one document and drawn.

Theory of operation
-------------------
Each agent knows only its own place: the ``tree-node`` query answers the tree core's
summary (``LatencyTree.view``) with the agent's name. ``gather`` asks our agent for its
place and its members, then every live member for its place, at most ``DIALS`` at a
time and all within one time-out: a member that has not answered by then is listed
under ``unreachable``, so a gather ends within its time-out whatever the mesh does.
``document`` keeps the fields the document shows (``NODE_FIELDS``, plus ``load`` from
the members' list) and sorts the nodes; ``render`` draws it as text, Graphviz DOT or
JSON. The CLI prints the rendering; REST serves the JSON, the same document.

A gather opens a connection to every live member. REST must not do that for every
request (a client polling ``/v1/tree`` would make the agent dial the whole mesh at its
own pace), so the REST server holds a ``TreeCache``: a document at most ``FRESH``
seconds old is served as it is, and one gather runs at a time: requests that come
while it runs wait for it and get its document. A burst of requests costs one gather,
and gathers come at most once every ``FRESH`` seconds whatever the rate of requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

NODE_FIELDS = ("id", "name", "parent", "rtt_ms", "depth", "rank_ms")
DIALS = 8  # members asked at once
FRESH = 2.0  # seconds a REST document is served before the next request gathers again
FORMATS = ("text", "dot", "json")


def node(place: dict) -> dict:
    """An agent's entry in the document, from its ``tree-node`` answer: ``rtt_ms`` is the
    round trip to its parent, ``rank_ms`` its path latency to the root, ``depth`` its
    hops to the root (None without a route)."""
    return {k: place.get(k) for k in NODE_FIELDS}


def document(places: Iterable[dict], load: dict | None = None,
             unreachable: Iterable[str] = ()) -> dict:
    """``{"root": id, "nodes": [...], "unreachable": [names]}`` from the agents'
    ``tree-node`` answers; ``load`` by node id (the members' list); ``unreachable`` only
    when some did not answer. Nodes are sorted by depth, then name; those without a
    route (depth None) come last. ``root``: the one node with no parent at depth 0
    (None while there is not exactly one)."""
    load = load or {}
    nodes = sorted((dict(node(p), load=load.get(p.get("id"))) for p in places),
                   key=lambda n: (n["depth"] is None, n["depth"] or 0, n["name"] or "", n["id"]))
    roots = [n["id"] for n in nodes if n["parent"] is None and n["depth"] == 0]
    doc: dict = {"root": roots[0] if len(roots) == 1 else None, "nodes": nodes}
    unreachable = sorted(unreachable)
    if unreachable:
        doc["unreachable"] = unreachable
    return doc


def gather(own, dial: Callable[[str, float], object], timeout: float = 5.0,
           dials: int = DIALS) -> dict:
    """The document, within ``timeout`` seconds. ``own``: our agent (a ``Client``, or a
    face's ``AgentHandle``: ``query(what, timeout)``); ``dial(address, timeout)``: a
    ``Client`` for another agent (a context manager). Raises what ``own.query`` raises
    (our agent did not answer); a member that does not answer in time is listed under
    ``unreachable``."""
    end = time.monotonic() + timeout
    places = [own.query("tree-node", timeout)]
    members = own.query("peers", max(end - time.monotonic(), 0.001))
    load = {p["id"]: p.get("load") for p in members}
    alive = [p for p in members if p["state"] == "alive"]
    unreachable: list[str] = []

    def ask(address: str) -> dict:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        with dial(address, left) as client:
            return client.query("tree-node", left)

    if alive:
        pool = ThreadPoolExecutor(max_workers=min(dials, len(alive)), thread_name_prefix="mesh-tree")
        try:
            asked = {pool.submit(ask, p["address"]): p["name"] for p in alive}
            pending = set(asked)
            while pending:
                done, pending = wait(pending, max(end - time.monotonic(), 0), FIRST_COMPLETED)
                if not done:
                    break
                for fut in done:
                    try:
                        places.append(fut.result())
                    except Exception:  # a member that does not answer is shown as such
                        unreachable.append(asked[fut])
            unreachable += [asked[fut] for fut in pending]
        finally:  # what still runs ends within its own time-out; nobody waits for it
            pool.shutdown(wait=False, cancel_futures=True)
    return document(places, load, unreachable)


class TreeCache:
    """REST's tree document: at most ``fresh`` seconds old, one gather at a time (module
    docstring). ``gather()``: a new document (it must end within ``bound`` seconds);
    ``clock``: seconds, monotonic."""

    def __init__(self, gather: Callable[[], dict], fresh: float = FRESH, bound: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._gather = gather
        self._fresh = fresh
        self._bound = bound
        self._clock = clock
        self._lock = threading.Lock()  # held by the one gather that runs
        self._doc: dict | None = None
        self._at = 0.0
        self.gathers = 0  # gathers run so far

    def get(self) -> dict:
        """The document; raises what the gather raises, or TimeoutError when another
        request's gather outlived its bound."""
        doc = self._current()
        if doc is not None:
            return doc
        if not self._lock.acquire(timeout=self._bound):
            raise TimeoutError("the tree is being gathered for too long")
        try:
            doc = self._current()  # (gathered while we waited)
            if doc is None:
                self.gathers += 1
                doc = self._gather()
                self._doc, self._at = doc, self._clock()
            return doc
        finally:
            self._lock.release()

    def _current(self) -> dict | None:
        doc = self._doc
        return doc if doc is not None and self._clock() - self._at < self._fresh else None


# ----------------------------------------------------------------------------- drawing


def render(doc: dict, fmt: str = "text") -> str:
    """The document as ``text`` (indented, root first), ``dot`` (Graphviz, edges child
    -> parent) or ``json``."""
    if fmt == "json":
        return json.dumps(doc)
    if fmt == "dot":
        return _dot(doc)
    if fmt == "text":
        return _text(doc)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _text(doc: dict) -> str:
    nodes = {n["id"]: n for n in doc["nodes"]}
    children: dict[str | None, list[dict]] = {}
    for n in doc["nodes"]:
        parent = n["parent"] if n["parent"] in nodes else None
        if n["id"] == doc["root"]:
            parent = "<root>"
        children.setdefault(parent, []).append(n)
    lines: list[str] = []

    def walk(node: dict, indent: int) -> None:
        rtt = "" if node.get("rtt_ms") is None else f"  rtt {node['rtt_ms']:.1f} ms"
        path = "" if node.get("rank_ms") is None else f"  path {node['rank_ms']:.1f} ms"
        load = "" if node.get("load") is None else f"  load {node['load']}"
        lines.append("  " * indent + f"{node['name']}{rtt}{path}{load}" + ("  (root)" if indent == 0 else ""))
        for child in sorted(children.get(node["id"], []), key=lambda c: c["name"]):
            walk(child, indent + 1)

    for root in children.get("<root>", []):
        walk(root, 0)
    orphans = [n for n in children.get(None, []) if n["id"] != doc["root"]]
    if orphans:
        lines.append("not attached: " + ", ".join(sorted(n["name"] for n in orphans)))
    if doc.get("unreachable"):
        lines.append("did not answer: " + ", ".join(doc["unreachable"]))
    return "\n".join(lines) if lines else "(no tree yet)"


def _dot(doc: dict) -> str:
    out = ["digraph mesh {", "  rankdir=BT;", '  node [shape=box, style=rounded, fontname="Helvetica"];']
    for n in doc["nodes"]:
        shape = ", penwidth=2" if n["id"] == doc["root"] else ""
        out.append(f'  "{n["id"]}" [label="{_esc(n["name"])}"{shape}];')
    for n in doc["nodes"]:
        if n["parent"]:
            label = "" if n.get("rtt_ms") is None else f' [label="{n["rtt_ms"]:.1f} ms"]'
            out.append(f'  "{n["id"]}" -> "{n["parent"]}"{label};')
    out.append("}")
    return "\n".join(out)


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
