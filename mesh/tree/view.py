"""The whole tree as plain data: the shape ``mesh tree --format json`` prints.

Each node knows only its own place (``LatencyTree.record``); whoever gathers the
records (the agent, or a test) builds the document with ``tree_json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.tree.core import LatencyTree


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def node_view(tree: LatencyTree) -> dict:
    """One node's place in the tree and its neighbours, as plain data."""
    parent = tree.peers.get(tree.parent) if tree.parent else None
    return {
        "id": tree.me, "state": tree.state, "root": tree.root, "term": tree.term,
        "parent": tree.parent, "rank_ms": _ms(tree.rank), "depth": tree.depth,
        "rtt_ms": _ms(parent.rtt) if parent else None, "seq": tree.advert().seq,
        "children": tree.children,
        "candidates": [{"id": c, "rtt_ms": _ms(tree.peers[c].rtt),
                        "path_ms": _ms(tree._via(tree.peers[c]))} for c in tree.candidates()],
        "counters": dict(tree.counters),
    }


def node_record(tree: LatencyTree, name: str) -> dict:
    """One node's entry of ``tree_json``: ``rtt_ms`` is the round trip to its parent,
    ``rank_ms`` its path latency to the root, ``depth`` its hops to the root (None
    without a route)."""
    parent = tree.peers.get(tree.parent) if tree.parent else None
    return {"id": tree.me, "name": name, "parent": tree.parent,
            "rtt_ms": _ms(parent.rtt) if parent else None, "depth": tree.depth,
            "rank_ms": _ms(tree.rank)}


def tree_json(records: Iterable[dict], root: str | None = None) -> dict:
    """``{"root": id, "nodes": [{"id", "name", "parent", "rtt_ms", "depth", ...}]}``.

    ``records`` are ``LatencyTree.record(name)`` dicts (``rtt_ms``: round trip to the
    parent; ``rank_ms``: path latency to the root). ``root`` defaults to the one
    record without a parent and with depth 0. Nodes are sorted by depth, then name;
    nodes without a route (depth None) come last."""
    nodes = sorted(records, key=lambda r: (r.get("depth") is None, r.get("depth") or 0,
                                           r.get("name", ""), r["id"]))
    if root is None:
        roots = [r["id"] for r in nodes if r.get("parent") is None and r.get("depth") == 0]
        root = roots[0] if len(roots) == 1 else None
    return {"root": root, "nodes": nodes}
