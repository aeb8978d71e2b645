"""Processes a benchmark starts: spawn, wait for their files, measure their trees (memory,
CPU), check their sockets stay on loopback, and stop them.

Everything here is bounded in time: every wait has a deadline, every child gets SIGTERM
when the benchmark process dies (Linux), and stopping escalates to SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
POLL_S = 0.005


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A fresh directory for one run's state files, keys and agent logs, removed afterwards;
    kept (and named on stderr) when BENCH_KEEP is set: a directory to make it in, or 1."""
    keep = os.environ.get("BENCH_KEEP")
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=None if keep == "1" else keep))
        log(f"keeping the agents' logs in {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for children: repo root importable, no inherited MESH_* configuration
    (MESH_PEERS in the caller's shell must never make a benchmark agent reach off-host)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MESH_") or k in ("MESH_RUNTIME_DIR", "MESH_LOCAL_SOCKET")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    """A process this benchmark started, with its output going to a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    started: float  # time.perf_counter() just before Popen
    stopped: dict[str, Any] | None = None
    descendants: list[psutil.Process] = field(default_factory=list)  # seen before an abrupt signal

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def spawn(name: str, cmd: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> Child:
    log_path = Path(workdir) / f"{name}.log"
    logf = open(log_path, "wb")
    try:
        t0 = time.perf_counter()
        popen = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=env if env is not None else bench_env(),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        logf.close()
    return Child(name, popen, log_path, t0)


def read_json(path: Path, keys: Iterable[str] = ()) -> dict | None:
    """The JSON object in `path` if it exists, parses and has all `keys`; else None."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        return None
    return data


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               child: Child | None = None, interval: float = POLL_S) -> Any:
    """Poll `check` until it returns something truthy; fail if `child` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if child is not None and child.popen.poll() is not None:
            raise BenchError(f"{child.name} exited with code {child.popen.returncode} before {what}; "
                             f"command: {' '.join(child.popen.args)}\n--- last output ---\n{child.tail()}")
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}"
                             + (f"\n--- last output of {child.name} ---\n{child.tail()}" if child else ""))
        time.sleep(interval)

# -- measuring --------------------------------------------------------------------------------

def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that are alive now (root first)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def memory(proc: psutil.Process) -> dict[str, float]:
    """RSS and, where the OS allows, USS (pages only this process has) and PSS (shared pages
    split between their users; sums of PSS over a tree do not double-count forked pages), in MB."""
    out: dict[str, float] = {"pid": proc.pid}
    try:
        try:
            full = proc.memory_full_info()
            out["uss_mb"] = round(full.uss / MB, 2)
            if hasattr(full, "pss"):
                out["pss_mb"] = round(full.pss / MB, 2)
        except (psutil.AccessDenied, AttributeError):
            full = proc.memory_info()
        out["rss_mb"] = round(full.rss / MB, 2)
    except psutil.NoSuchProcess:
        pass
    return out


def tree_memory(pid: int) -> dict[str, Any]:
    procs = [memory(p) for p in tree(pid)]
    procs = [p for p in procs if "rss_mb" in p]
    if not procs:
        raise BenchError(f"process {pid} is gone")
    out: dict[str, Any] = {"root": procs[0], "children": procs[1:],
                           "total_rss_mb": round(sum(p["rss_mb"] for p in procs), 2)}
    for key in ("uss_mb", "pss_mb"):
        if all(key in p for p in procs):
            out[f"total_{key}"] = round(sum(p[key] for p in procs), 2)
    return out


def _cpu_snapshot(pids: Iterable[int]) -> dict[tuple[int, float], float]:
    snap = {}
    for pid in pids:
        for p in tree(pid):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    snap[(p.pid, p.create_time())] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return snap


class CpuWindow:
    """CPU used by several pid trees over the same wall-clock window, as % of one core.

    Processes born inside the window count fully; processes that die inside it are lost
    (their time cannot be read any more), so keep the trees idle and stable.
    """

    def __init__(self, roots: dict[str, int]):
        self.roots = roots
        self.before = {k: _cpu_snapshot([pid]) for k, pid in roots.items()}
        self.t0 = time.monotonic()

    def finish(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {}
        for key, pid in self.roots.items():
            after = _cpu_snapshot([pid])
            used = sum(v - self.before[key].get(k, 0.0) for k, v in after.items())
            out[key] = round(100.0 * used / wall, 3)
        out["window_s"] = round(wall, 2)
        return out


class MachineCpu:
    """CPU of the whole machine and of this process's tree (it, the agents it started, their
    workers) over one window, in cores: `others_cores` is what everything else used (other
    work on a shared machine), the honest caveat next to a throughput or capacity figure."""

    def __init__(self) -> None:
        self.roots = [os.getpid()]
        self.t0 = time.monotonic()
        self.sys0 = psutil.cpu_times()
        self.own0 = _cpu_snapshot(self.roots)

    @staticmethod
    def _busy(t: Any) -> float:
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def finish(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        busy = self._busy(psutil.cpu_times()) - self._busy(self.sys0)
        own1 = _cpu_snapshot(self.roots)
        ours = sum(v - self.own0.get(k, 0.0) for k, v in own1.items())
        wall = max(wall, 1e-9)
        return {"machine_busy_cores": round(busy / wall, 3), "ours_cores": round(ours / wall, 3),
                "others_cores": round(max(busy - ours, 0.0) / wall, 3)}



MDNS_PORT = 5353


def non_loopback_sockets(pid: int, allow_mdns: bool = False) -> list[str]:
    """Sockets of the tree bound or connected to anything but loopback (safety check).

    `allow_mdns`: tolerate unconnected UDP sockets bound to *:5353. python-zeroconf always
    listens for multicast on the wildcard address (that is how multicast reception works);
    with `--interface 127.0.0.1` it joins the mDNS group and sends only on 127.0.0.1."""
    bad = []
    for p in tree(pid):
        try:
            conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") \
                else p.connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if (allow_mdns and c.type == socket.SOCK_DGRAM and not c.raddr and c.laddr
                    and c.laddr.port == MDNS_PORT and c.laddr.ip in ("0.0.0.0", "::", "")):
                continue
            for addr in (c.laddr, c.raddr):
                if addr and not (addr.ip.startswith("127.") or addr.ip == "::1"):
                    bad.append(f"pid {p.pid}: {c.laddr} -> {c.raddr or '-'} ({c.status})")
    return bad


def assert_loopback(pid: int, what: str, allow_mdns: bool = False) -> None:
    bad = non_loopback_sockets(pid, allow_mdns)
    if bad:
        raise BenchError(f"{what} has non-loopback sockets (network safety), stopping: {bad}")


# -- stopping ---------------------------------------------------------------------------------

def _kill_leftovers(procs: list[psutil.Process], grace: float) -> int:
    alive = [p for p in procs if p.is_running()]
    if not alive:
        return 0
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        try:
            p.kill()  # psutil refuses if the pid was reused by another process
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=2)
    return len(alive)


def stop(child: Child, timeout: float = 10.0, sig: int | None = signal.SIGTERM) -> dict[str, Any]:
    """Send `sig` (SIGTERM: graceful; None: it was sent already), wait at most `timeout`,
    then SIGKILL. Idempotent.

    Descendants still alive 2 s after the root is gone are killed and counted as
    `orphans` (a clean agent takes its workers down with it)."""
    if child.stopped is not None:
        return child.stopped
    descendants = tree(child.pid)[1:] if child.popen.poll() is None else []
    seen = {(p.pid, _create_time(p)) for p in descendants}
    descendants += [p for p in child.descendants if (p.pid, _create_time(p)) not in seen]
    t0 = time.monotonic()
    how = "already-exited"
    if sig is None or child.popen.poll() is None:
        if sig is not None:
            child.popen.send_signal(sig)
        try:
            child.popen.wait(timeout)
            how = "graceful"
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait(5)
            how = "killed"
    stop_s = time.monotonic() - t0
    orphans = _kill_leftovers(descendants, grace=2.0)
    child.stopped = {"how": how, "stop_s": round(stop_s, 3), "returncode": child.popen.returncode,
                     "orphans": orphans}
    return child.stopped


def _create_time(proc: psutil.Process) -> float | None:
    try:
        return proc.create_time()  # psutil caches it: also known once the process is gone
    except psutil.Error:
        return None


def signal_abruptly(child: Child, sig: int = signal.SIGKILL) -> float:
    """Send `sig` (SIGKILL: abrupt departure; SIGSTOP: a hung process) to the root only, and
    return the wall-clock time (`time.time()`, the clock of the agents' log timestamps) taken
    just before sending. The root's descendants are noted first, so that `stop` still finds
    and ends them after the root is gone."""
    known = {p.pid for p in child.descendants}
    child.descendants += [p for p in tree(child.pid)[1:] if p.pid not in known]
    t = time.time()
    os.kill(child.pid, sig)
    return t


def stop_all(children: Iterable[Child], timeout: float = 10.0) -> None:
    """SIGTERM every child still running at once, then `stop` each (graceful leaves overlap;
    once: an agent takes a second SIGTERM as "exit at once")."""
    children = [c for c in children if c.stopped is None]
    signalled = set()
    for c in children:
        if c.popen.poll() is None:
            try:
                c.popen.send_signal(signal.SIGCONT)  # a frozen one could not leave
                c.popen.send_signal(signal.SIGTERM)
                signalled.add(c.pid)
            except ProcessLookupError:
                pass
    for c in children:
        stop(c, timeout, sig=None if c.pid in signalled else signal.SIGTERM)
