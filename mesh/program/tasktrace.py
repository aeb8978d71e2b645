"""The task graph of a run as a picture: Graphviz DOT, nodes coloured by the agent
where each task ran (as ``runcompss --graph``).

Bounded: the first ``limit`` tasks are recorded; later ones are counted, not drawn.
"""

from __future__ import annotations

PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
           "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f"]


class TaskTrace:
    def __init__(self, limit: int = 5_000) -> None:
        self.limit = limit
        self.names: dict[str, str] = {}
        self.agents: dict[str, str] = {}
        self.edges: list[tuple[str, str]] = []
        self.dropped = 0

    def task(self, task_id: str, name: str, depends_on: set[str]) -> None:
        if len(self.names) >= self.limit:
            self.dropped += 1
            return
        self.names[task_id] = name
        self.edges.extend((d, task_id) for d in sorted(depends_on) if d in self.names)

    def ran(self, task_id: str, agent: str) -> None:
        if task_id in self.names:
            self.agents[task_id] = agent

    def dot(self) -> str:
        colours: dict[str, str] = {}
        for agent in sorted(set(self.agents.values())):
            colours[agent] = PALETTE[len(colours) % len(PALETTE)]
        out = ["digraph tasks {", "  rankdir=TB;",
               '  node [shape=circle, style=filled, fontname="Helvetica", fontsize=10];']
        for task_id, name in self.names.items():
            agent = self.agents.get(task_id)
            fill = colours.get(agent, "#ffffff")
            label = task_id.rsplit("-", 1)[-1]
            out.append(f'  "{task_id}" [label="{label}", fillcolor="{fill}", tooltip="{name} on {agent}"];')
        out += [f'  "{a}" -> "{b}";' for a, b in self.edges]
        out.append('  subgraph cluster_legend { label="agents"; fontname="Helvetica";')
        for agent, colour in colours.items():
            out.append(f'    "agent:{agent}" [label="{agent}", shape=box, fillcolor="{colour}"];')
        out.append("  }")
        if self.dropped:
            out.append(f'  "more" [label="+{self.dropped} tasks not drawn", shape=plaintext];')
        out.append("}")
        return "\n".join(out) + "\n"
