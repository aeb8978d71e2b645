"""The one error a benchmark scenario raises."""

from __future__ import annotations


class BenchError(RuntimeError):
    """A scenario cannot produce honest figures (missing agent, broken contract, timeout)."""
