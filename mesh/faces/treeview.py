"""``mesh tree``: gather every agent's place in the latency tree, assemble the document,
and draw it.

Each agent knows only its own place (``LatencyTree.record``: parent, round trip to it,
depth); the client asks one agent for the members, asks every live one for its record,
and assembles the document (``tree_json``, the shape ``mesh tree --format json``
prints). Rendering is text (indented), Graphviz DOT, or JSON.
"""

from __future__ import annotations

from collections.abc import Iterable


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


def gather(client_factory, first) -> dict:
    """``first``: a connected Client; ``client_factory(address)``: a Client for another
    agent. Returns the ``tree_json`` document plus a ``load`` per node, and the names
    of agents that did not answer under ``unreachable``."""
    records, unreachable = [], []
    me = first.query("tree-node")
    records.append(me)
    peers = first.query("peers")
    load = {p["id"]: p.get("load") for p in peers}
    for p in peers:
        if p["state"] != "alive":
            continue
        try:
            with client_factory(p["address"]) as c:
                records.append(c.query("tree-node"))
        except Exception:  # a peer that does not answer is shown as such, not fatal
            unreachable.append(p["name"])
    for r in records:
        r.pop("view", None)
        r.pop("address", None)
        r["load"] = load.get(r["id"])
    doc = tree_json(records)
    if unreachable:
        doc["unreachable"] = unreachable
    return doc


def render_text(doc: dict) -> str:
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


def render_dot(doc: dict) -> str:
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
