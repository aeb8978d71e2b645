"""The network-namespace harness (harness/, copied from the shared one): whether it can run
here, the `Netns` context that brings hosts `mt_hI` up and down, and the safety check that a
process lives in its namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.procs import ROOT

HARNESS = Path(os.environ.get("BENCH_HARNESS") or ROOT / "harness")
NETNS_PREFIX = "10.213.0"


def netns_unusable() -> str | None:
    """Why the namespace harness cannot run here, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (the harness runs `ip netns add`)"
    for tool in ("ip", "bridge", "bash"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (iproute2)"
    for script in ("netns_up.sh", "netns_down.sh", "chaos.sh"):
        if not (HARNESS / script).is_file():
            return f"harness script {HARNESS / script} not found (set BENCH_HARNESS)"
    try:
        proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns list` failed: {exc}"
    if proc.returncode != 0:
        return f"`ip netns list` failed: {proc.stderr.strip()}"
    return None


def assert_in_netns(pid: int, netns: str, what: str) -> None:
    """Network safety for a namespaced process: it must live in `netns`, whose only
    interfaces are loopback and the harness bridge (never the root namespace's)."""
    proc = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True,
                          timeout=10)
    if proc.stdout.split() != [netns]:
        raise BenchError(f"{what} (pid {pid}) is in namespace {proc.stdout.strip()!r}, "
                         f"not {netns} (network safety), stopping")


class Netns:
    """`netns_up.sh N` on entry (after `netns_down.sh`), `netns_down.sh` on exit; hosts 1..N
    are namespaces `mt_hI` with address 10.213.0.(10+I). Use as a context manager."""

    def __init__(self, hosts: int):
        self.hosts = hosts

    @staticmethod
    def ns(i: int) -> str:
        return f"mt_h{i}"

    @staticmethod
    def address(i: int) -> str:
        return f"{NETNS_PREFIX}.{10 + i}"

    def script(self, name: str, *args: Any, timeout: float = 60.0) -> str:
        try:
            proc = subprocess.run(["bash", str(HARNESS / name), *map(str, args)], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"harness {name} {' '.join(map(str, args))}: timed out") from None
        if proc.returncode != 0:
            raise BenchError(f"harness {name} {' '.join(map(str, args))} failed "
                             f"({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def chaos(self, *args: Any) -> None:
        self.script("chaos.sh", *args, timeout=20)

    def __enter__(self) -> Netns:
        self.script("netns_down.sh")
        try:
            self.script("netns_up.sh", self.hosts)
        except BenchError:
            self.script("netns_down.sh")
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.script("netns_down.sh")
