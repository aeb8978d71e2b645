"""``GET /metrics``: the agent's state in the Prometheus text exposition format.

A pure function of the agent's status and peer views, so a test can parse it with a
maintained parser (prometheus_client) and compare with ``mesh status --json``.
"""

from __future__ import annotations

from collections import Counter


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(status: dict, peers: list[dict]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {float(value)!r}" if text else f"{name} {float(value)!r}")

    agent = {"agent": status["name"]}
    metric("mesh_uptime_seconds", "gauge", "Seconds since the agent started.",
           [(agent, status["uptime_s"])])
    metric("mesh_slots", "gauge", "Worker slots by state.",
           [(dict(agent, state="total"), status["cpus"]["total"]),
            (dict(agent, state="free"), status["cpus"]["free"])])
    metric("mesh_tasks", "gauge", "Calls held by this agent now, by state.",
           [(dict(agent, state="running"), status["running"]), (dict(agent, state="queued"), status["queued"])])
    metric("mesh_tasks_total", "counter", "Calls finished or delegated by this agent, by outcome.",
           [(dict(agent, state=s), status[s]) for s in ("done", "failed", "forwarded")])
    states = Counter(dict.fromkeys(("alive", "suspect", "dead", "left"), 0))
    states.update(p["state"] for p in peers)
    metric("mesh_peers", "gauge", "Known members by state.",
           [(dict(agent, state=s), n) for s, n in sorted(states.items())])
    metric("mesh_peer_rtt_seconds", "gauge", "Smoothed round-trip time to each live member.",
           [(dict(agent, peer=p["name"]), p["rtt_ms"] / 1000.0) for p in peers
            if p["rtt_ms"] is not None and p["state"] in ("alive", "suspect")])
    metric("mesh_bytes_total", "counter", "Bytes of frames received and sent.",
           [(dict(agent, direction="in"), status["bytes"]["in"]),
            (dict(agent, direction="out"), status["bytes"]["out"])])
    metric("mesh_dropped_frames_total", "counter", "Frames dropped, by reason.",
           [(dict(agent, reason=r), n) for r, n in sorted(status["dropped"].items())])
    metric("mesh_auth_failures_total", "counter", "Refused or failed handshakes.",
           [(dict(agent, kind="rejected"), status["auth"]["rejected"]),
            (dict(agent, kind="handshake"), status["auth"]["handshake_failures"])])
    if status.get("rest"):
        metric("mesh_rest_refused_total", "counter", "REST requests refused, by reason.",
               [(dict(agent, reason=r), n) for r, n in sorted(status["rest"]["refused"].items())])
    counters = status["membership"]
    metric("mesh_membership_events_total", "counter", "Failure detector events.",
           [(dict(agent, event=k), v) for k, v in sorted(counters.items())
            if k not in ("local_health", "incarnation")])
    metric("mesh_local_health", "gauge", "Lifeguard local health score (0 is healthy).",
           [(agent, counters["local_health"])])
    return "\n".join(lines) + "\n"
