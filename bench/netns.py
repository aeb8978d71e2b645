"""The network-namespace harness (harness/, copied from the shared one): whether it can run
here, the `Netns` context that brings hosts `mt_hI` up and down, and the safety check that a
process lives in its namespace.

The harness's names are machine-wide (mt_hub, mt_h1, ...): two runs at once would tear down
each other's hosts. `Netns` therefore holds `LOCK_PATH` (an exclusive `flock`) from before it
brings the hosts up until after it took them down; whoever else uses the harness takes the
same lock (`flock /tmp/mesh-netns.lock CMD` from a shell). It waits for it at most
`lock_wait` seconds, then fails with a clear error. A process that inherited the lock (a
test suite run under `flock`, which passes the descriptor on to what it starts) already holds
it: `netns_lock` finds the inherited descriptor and goes on, without releasing it after."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.procs import ROOT

HARNESS = Path(os.environ.get("BENCH_HARNESS") or ROOT / "harness")
NETNS_PREFIX = "10.213.0"
LOCK_PATH = "/tmp/mesh-netns.lock"
LOCK_WAIT_S = 900.0


def inherited_lock_fd(path: str = LOCK_PATH) -> int | None:
    """A descriptor of `path` this process inherited that holds the lock (or could take it
    at once), or None."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") != path:
                continue
            fcntl.flock(int(name), fcntl.LOCK_EX | fcntl.LOCK_NB)  # (ours already: a no-op)
            return int(name)
        except OSError:
            continue
    return None


@contextmanager
def netns_lock(wait_s: float = LOCK_WAIT_S, path: str = LOCK_PATH) -> Iterator[None]:
    """Hold the harness's lock (exclusive `flock` on `path`), waiting at most `wait_s`
    (see the module docstring for an inherited lock)."""
    if inherited_lock_fd(path) is not None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BenchError(f"the namespace harness is busy: another run holds {path} "
                                     f"(waited {wait_s:.0f} s; `flock {path} true` waits for it)") from None
                if not said:
                    print(f"[bench] the namespace harness is busy ({path} is locked): waiting "
                          f"at most {wait_s:.0f} s", file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # (releases the lock)


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
    are namespaces `mt_hI` with address 10.213.0.(10+I). Use as a context manager. The
    harness's lock (`netns_lock`) is held from entry to exit."""

    def __init__(self, hosts: int, lock_wait: float = LOCK_WAIT_S):
        self.hosts = hosts
        self.lock_wait = lock_wait
        self._lock: Any = None

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
        lock = netns_lock(self.lock_wait)
        lock.__enter__()
        try:
            self.script("netns_down.sh")
            try:
                self.script("netns_up.sh", self.hosts)
            except BenchError:
                self.script("netns_down.sh")
                raise
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self._lock = lock
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.script("netns_down.sh")  # (deleting the namespaces undoes every link fault)
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.__exit__(None, None, None)
