"""Functions used by ``mesh demo`` (importable by every agent's workers)."""

from __future__ import annotations

import os
import time


def where(x: int, seconds: float = 0.3) -> dict:
    """Square ``x`` after ``seconds`` of work; say which agent and process did it."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return {"x": x, "square": x * x, "agent": os.environ.get("MESH_AGENT_NAME", "?"), "pid": os.getpid()}
