"""Summaries of measured samples: nearest-rank percentiles, ratios, spreads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pct(samples: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio(a: float | None, b: float | None, nd: int = 3) -> float | None:
    """a / b rounded, or None when either is missing (or b is 0)."""
    return round(a / b, nd) if a is not None and b else None


def spread(samples: Sequence[float], nd: int = 3) -> dict[str, Any]:
    """n, p50, p95, max and mean of `samples`, rounded."""
    if not samples:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {"n": len(samples), "p50": round(pct(samples, 50), nd), "p95": round(pct(samples, 95), nd),
            "max": round(max(samples), nd), "mean": round(sum(samples) / len(samples), nd)}
