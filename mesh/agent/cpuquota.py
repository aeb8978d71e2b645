"""How much CPU this process may really use: the cgroup CPU quota, if any.

A device such as a Raspberry Pi, or a container capped at a quarter of a core, runs
each task slower than an uncapped machine with the same number of slots. The agent
reports its *speed* (effective cores per slot, at most 1) with its load, so that a
peer choosing where a task finishes first can tell a fast slot from a slow one.

Linux only: cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)
of the process's own cgroup, every level up to the root (the tightest quota wins).
Anything unreadable means "no quota".
"""

from __future__ import annotations

import os
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(root: Path, rel: str) -> float | None:
    best = None
    here = root / rel.lstrip("/")
    while True:
        text = _read(here / "cpu.max")
        if text:
            parts = text.split()
            if len(parts) == 2 and parts[0] != "max":
                try:
                    cores = int(parts[0]) / int(parts[1])
                    best = cores if best is None else min(best, cores)
                except (ValueError, ZeroDivisionError):
                    pass
        if here == root or root not in here.parents:
            return best
        here = here.parent


def _v1_quota(mount: Path, rel: str) -> float | None:
    best = None
    here = mount / rel.lstrip("/")
    while True:
        quota, period = _read(here / "cpu.cfs_quota_us"), _read(here / "cpu.cfs_period_us")
        if quota and period:
            try:
                q, p = int(quota), int(period)
                if q > 0 and p > 0:
                    best = q / p if best is None else min(best, q / p)
            except ValueError:
                pass
        if here == mount or mount not in here.parents:
            return best
        here = here.parent


def quota_cores(proc_cgroup: str = "/proc/self/cgroup", fs: str = "/sys/fs/cgroup") -> float | None:
    """Cores this process may use by its cgroup quota, or None when there is none."""
    text = _read(Path(proc_cgroup))
    if not text:
        return None
    root = Path(fs)
    found: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2 (unified)
            q = _v2_quota(root, rel)
        elif "cpu" in controllers.split(","):
            mount = next((root / name for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu")
                          if (root / name).is_dir()), None)
            q = _v1_quota(mount, rel) if mount is not None else None
        else:
            continue
        if q is not None:
            found.append(q)
    return min(found) if found else None


def slot_speed(slots: int, quota: float | None = None, cores: int | None = None) -> float:
    """Effective cores per slot, at most 1.0: 0.25 for one slot capped at a quarter of a
    core; 1.0 without a quota and with no more slots than cores."""
    if slots <= 0:
        return 1.0
    cores = cores if cores is not None else (os.cpu_count() or 1)
    usable = min(float(cores), quota) if quota is not None else float(cores)
    return round(max(min(usable / slots, 1.0), 0.01), 3)
