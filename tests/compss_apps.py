"""Functions COMPSs' REST tests ask agents to run (importable by every worker): COMPSs
passes every argument of a PYTHON method as a string."""

from __future__ import annotations

import time


def slow_echo(text: str, seconds: str) -> str:
    time.sleep(float(seconds))
    return text
