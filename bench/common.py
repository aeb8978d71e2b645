"""Shared benchmark helpers: start processes, wait for state files, measure and stop pid trees.

Everything here is loopback-only and bounded in time: every wait has a deadline, every child
gets SIGTERM when the benchmark process dies (Linux), and stopping escalates to SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
POLL_S = 0.005
STATE_KEYS = ("id", "name", "comm", "rest", "pid")


class BenchError(RuntimeError):
    """A scenario cannot produce honest figures (missing agent, broken contract, timeout)."""


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
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


@dataclass
class Agent:
    child: Child
    state: dict
    ready_s: float
    issues: list[str] = field(default_factory=list)
    key: Any = None  # the mesh.keys.MeshKey clients need (None: the agent runs --insecure)
    mdns: bool = False

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def comm(self) -> str:
        return self.state["comm"]


KEY_FILE = "mesh.key"


def bench_key(workdir: Path) -> tuple[Path, Any]:
    """The mesh key of this benchmark run: `workdir/mesh.key`, made (mode 0600) on first use,
    so every secure agent started in one workdir belongs to the same mesh."""
    from mesh import keys

    path = Path(workdir) / KEY_FILE
    if not path.exists():
        keys.write(str(path), keys.MeshKey.generate())
    return path, keys.load(str(path), env={})


def agent_command(state_file: Path, name: str = "bench", cpus: int = 2,
                  extra: Sequence[str] = (), key_file: Path | None = None,
                  mdns: bool = False, rest: bool = False, interface: str = "127.0.0.1",
                  netns: str | None = None) -> list[str]:
    """`python -m mesh join` on 127.0.0.1 with an ephemeral comm port. `key_file` None means
    `--insecure` (plaintext); `mdns` announces/browses on 127.0.0.1 only (pinned by
    --interface); `rest` opens REST on an ephemeral port (else `--rest-port -1`).
    `netns` runs it inside that harness namespace (`ip netns exec`, which execs: the pid is the
    agent's) bound to `interface`, that namespace's address."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    cmd = [*prefix, sys.executable, "-m", "mesh", "join", "--name", name, "--interface", interface,
           "--comm-port", "0", "--rest-port", "0" if rest else "-1", "--cpus", str(cpus),
           "--state-file", str(state_file)]
    if not mdns:
        cmd.append("--no-mdns")
    cmd += ["--key-file", str(key_file)] if key_file is not None else ["--insecure"]
    return [*cmd, *extra]


def start_agent(workdir: Path, name: str = "bench", cpus: int = 2, extra: Sequence[str] = (),
                timeout: float = 30.0, secure: bool = True, mdns: bool = False,
                rest: bool = False, interface: str = "127.0.0.1",
                netns: str | None = None, env: dict[str, str] | None = None) -> Agent:
    """Start `python -m mesh join` on loopback and wait (polling) until its state file is ready.

    `secure` (default): the agent gets the run's mesh key (`bench_key`) with `--key-file`;
    otherwise `--insecure`. `mdns` (default off): mDNS on 127.0.0.1. `rest` (default off):
    REST on an ephemeral loopback port. The agent never sees the caller's MESH_* variables.
    `ready_s` is from just before Popen to the moment the state file first parsed with all keys.
    Contract deviations that do not prevent measuring are returned in `issues`.
    `netns` (a harness namespace `mt_hN`) with `interface` its address: the agent runs in that
    namespace, and the safety check is that it really lives there (not in the root namespace).
    Without `netns` only a loopback `interface` is allowed. `env`: extra environment
    variables of the agent (e.g. MESH_INLINE_MAX).
    """
    if netns is None and not interface.startswith("127."):
        raise BenchError(f"network safety: interface {interface} outside a harness namespace")
    if netns is not None and not re.fullmatch(r"mt_h\d+", netns):
        raise BenchError(f"network safety: {netns!r} is not a harness host namespace (mt_hN)")
    key_file, key = bench_key(workdir) if secure else (None, None)
    state_file = Path(workdir) / f"{name}.state.json"
    child = spawn(f"agent-{name}", agent_command(state_file, name, cpus, extra, key_file, mdns, rest,
                                                 interface, netns), workdir, env=bench_env(env))
    try:
        state = wait_until(lambda: read_json(state_file, STATE_KEYS), timeout,
                           f"the agent's state file {state_file}", child)
        ready_s = time.perf_counter() - child.started
        if netns is None:
            assert_loopback(child.pid, "the mesh agent", allow_mdns=mdns)
        else:
            assert_in_netns(child.pid, netns, "the mesh agent")
    except BenchError as exc:
        stop(child)
        hint = ""
        if "No module named" in str(exc) or "No such command" in str(exc):
            hint = "mesh agent not available yet (`python -m mesh join` failed to start). "
        raise BenchError(hint + str(exc)) from None
    issues = []
    if state.get("pid") != child.pid:
        issues.append(f"state pid {state.get('pid')!r} != process pid {child.pid}")
    if state.get("name") != name:
        issues.append(f"state name {state.get('name')!r} != {name!r}")
    if not rest and state.get("rest") is not None:
        issues.append(f"rest is {state.get('rest')!r} although --rest-port -1")
    if rest and not str(state.get("rest") or "").startswith("127.0.0.1:"):
        issues.append(f"rest is {state.get('rest')!r}, expected 127.0.0.1:PORT (--rest-port 0)")
    if not str(state.get("comm", "")).startswith(f"{interface}:"):
        issues.append(f"comm {state.get('comm')!r} is not on {interface}")
    if key is not None:  # the start-up line names the key's fingerprint: it really runs secure
        fingerprint, deadline = key.fingerprint(), time.monotonic() + 5.0
        while fingerprint not in child.tail(50) and time.monotonic() < deadline:
            time.sleep(0.02)
        if fingerprint not in child.tail(50):
            issues.append(f"agent log does not name key {fingerprint} (secure mode not confirmed)")
    return Agent(child, state, ready_s, issues, key, mdns)


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


def stop(child: Child, timeout: float = 10.0, sig: int = signal.SIGTERM) -> dict[str, Any]:
    """Send `sig` (SIGTERM: graceful), wait at most `timeout`, then SIGKILL. Idempotent.

    Descendants still alive 2 s after the root is gone are killed and counted as
    `orphans` (a clean agent takes its workers down with it)."""
    if child.stopped is not None:
        return child.stopped
    descendants = tree(child.pid)[1:] if child.popen.poll() is None else []
    seen = {(p.pid, _create_time(p)) for p in descendants}
    descendants += [p for p in child.descendants if (p.pid, _create_time(p)) not in seen]
    t0 = time.monotonic()
    how = "already-exited"
    if child.popen.poll() is None:
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
    """SIGTERM every child still running at once, then `stop` each (graceful leaves overlap)."""
    children = [c for c in children if c.stopped is None]
    for c in children:
        if c.popen.poll() is None:
            try:
                c.popen.send_signal(signal.SIGCONT)  # a frozen one could not leave
                c.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    for c in children:
        stop(c, timeout)


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


# -- agents' membership log lines -------------------------------------------------------------

# `%(asctime)s ... peer NAME (ID8) joined` and `... peer NAME (ID8): OLD -> NEW (incarnation N)`
_CHANGE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?\bpeer (?P<name>.+?) \((?P<id>[0-9a-f]{4,})\)"
    r"(?:: (?P<old>\w+) -> (?P<new>\w+) \(incarnation (?P<inc>\d+)\)| (?P<joined>joined))\s*$")


@dataclass(frozen=True)
class MemberChange:
    """One member change as an agent logged it. `t` is wall-clock seconds (log timestamps have
    millisecond resolution, truncated); a join is old "new" -> new "alive"."""

    t: float
    name: str
    id8: str
    old: str
    new: str
    incarnation: int | None


def parse_change(line: str) -> MemberChange | None:
    """The member change logged on `line`, or None if the line is something else."""
    mt = _CHANGE.match(line)
    if mt is None:
        return None
    t = datetime.strptime(mt["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like asctime
    if mt["joined"]:
        return MemberChange(t, mt["name"], mt["id"][:8], "new", "alive", None)
    return MemberChange(t, mt["name"], mt["id"][:8], mt["old"], mt["new"], int(mt["inc"]))


def member_changes(log_path: Path) -> list[MemberChange]:
    """Every member change in an agent's log, in order (a missing log has none)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return []
    return [c for c in map(parse_change, text.splitlines()) if c is not None]


def member_view(changes: Iterable[MemberChange]) -> dict[str, str]:
    """id8 -> the last state the log gives for that member."""
    view: dict[str, str] = {}
    for c in changes:
        view[c.id8] = c.new
    return view


def first_change(changes: Iterable[MemberChange], id8: str, new: str, since: float = 0.0,
                 old: str | None = None) -> MemberChange | None:
    """The first logged change of member `id8` to state `new` (from `old`, if given) at or after
    `since` (wall clock; the log's millisecond truncation is allowed for)."""
    for c in changes:
        if c.id8 == id8 and c.new == new and c.t >= since - 0.001 and (old is None or c.old == old):
            return c
    return None


# -- the network-namespace harness (harness/, copied from the shared one) ---------------------------------------

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


# -- CPU-bound task bodies, calibrated (hetero, scale) ----------------------------------------

def spin(n: int) -> dict[str, Any]:
    """`n` iterations of a pure-Python loop (busy work that holds one core and the GIL), as a
    task body: returns where it ran (the worker's MESH_AGENT_NAME) and its own wall and CPU
    seconds, so a scenario sees each agent's real per-slot speed."""
    t0, c0 = time.perf_counter(), time.process_time()
    x = 0
    for i in range(n):
        x = (x + i * i) % 1_000_003
    return {"agent": os.environ.get("MESH_AGENT_NAME", "?"), "wall": time.perf_counter() - t0,
            "cpu": time.process_time() - c0, "x": x}


def where() -> str:
    """A no-op task body that says where it ran (the worker's MESH_AGENT_NAME)."""
    return os.environ.get("MESH_AGENT_NAME", "?")


def calibrate_spin(target_s: float, tries: int = 5) -> tuple[int, float]:
    """Iterations of `spin` that take `target_s` on one core of this machine, in this process,
    and the measured seconds for that many (best of `tries`: other load only ever slows it)."""
    n = 10_000
    while True:  # grow until one measurement is long enough to scale from
        t = spin(n)["cpu"]
        if t >= 0.02:
            break
        n *= 4
    per_iter = min(spin(n)["cpu"] / n for _ in range(tries))
    n = max(1, round(target_s / per_iter))
    return n, min(spin(n)["cpu"] for _ in range(tries))


def wait_members(clients: Sequence[Any], n: int, timeout: float, what: str = "the mesh") -> None:
    """Poll each client's agent (`status`) until every one counts `n - 1` live peers."""
    def full() -> bool:
        return all(c.query("status", timeout=5.0)["peers_alive"] >= n - 1 for c in clients)

    wait_until(full, timeout, f"{what} to form ({n} agents each seeing {n - 1} live peers)",
               interval=0.05)


# -- CPU-capped agents (cgroup v1, harness cg_limit.sh) ----------------------------------------

CG_ROOT = Path("/sys/fs/cgroup")


def cgroups_unusable() -> str | None:
    """Why `cg_limit.sh` cannot cap an agent here, or None if it can (a probe group is made,
    run and removed)."""
    if not sys.platform.startswith("linux"):
        return f"cgroups need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "cgroups need root (cg_limit.sh writes /sys/fs/cgroup)"
    script = HARNESS / "cg_limit.sh"
    if not script.is_file():
        return f"harness script {script} not found (set BENCH_HARNESS)"
    if not (CG_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return "no cgroup v1 cpu controller at /sys/fs/cgroup/cpu (cfs quota)"
    probe = CpuCap(f"probe{os.getpid()}", 25, 0)
    try:
        proc = subprocess.run(probe.prefix() + ["true"], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            return f"cg_limit.sh run failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cg_limit.sh run failed: {exc}"
    finally:
        probe.remove()
    return None


@dataclass
class CpuCap:
    """A cgroup `mt_NAME` made by the harness's `cg_limit.sh run NAME PCT MEM_MB -- CMD`:
    PCT % of one core (CFS quota over a 100 ms period) for the whole process tree, and a
    MEM_MB memory limit (0: none)."""

    name: str
    pct: int
    mem_mb: int = 0

    @property
    def group(self) -> str:
        return f"mt_{self.name}"

    def prefix(self) -> list[str]:
        return ["bash", str(HARNESS / "cg_limit.sh"), "run", self.name, str(self.pct),
                str(self.mem_mb), "--"]

    def holds(self, pid: int) -> bool:
        """Whether `pid` is in this group's cpu cgroup."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(",") and path.rstrip("/").endswith("/" + self.group):
                return True
        return False

    def stat(self) -> dict[str, Any]:
        """Quota, period and throttling counters of the cpu group (empty if gone)."""
        d = CG_ROOT / "cpu" / self.group
        try:
            out: dict[str, Any] = {"quota_us": int((d / "cpu.cfs_quota_us").read_text()),
                                   "period_us": int((d / "cpu.cfs_period_us").read_text())}
            for line in (d / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                out[k] = int(v)
        except (OSError, ValueError):
            return {}
        return out

    def remove(self) -> None:
        """`cg_limit.sh rm NAME` (its processes must have exited); errors are ignored."""
        try:
            subprocess.run(["bash", str(HARNESS / "cg_limit.sh"), "rm", self.name],
                           capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass


def start_capped_agent(workdir: Path, cap: CpuCap, name: str, cpus: int,
                       extra: Sequence[str] = (), timeout: float = 30.0) -> Agent:
    """Like `start_agent` (secure, 127.0.0.1, no mDNS, no REST), but the agent is exec'ed by
    `cg_limit.sh` inside `cap`'s cgroup (its workers inherit it): the pid is the agent's.
    Checks loopback-only sockets and that the agent really sits in the group."""
    key_file, key = bench_key(workdir)
    state_file = Path(workdir) / f"{name}.state.json"
    cmd = cap.prefix() + agent_command(state_file, name, cpus, extra, key_file)
    child = spawn(f"agent-{name}", cmd, workdir)
    try:
        state = wait_until(lambda: read_json(state_file, STATE_KEYS), timeout,
                           f"the agent's state file {state_file}", child)
        ready_s = time.perf_counter() - child.started
        assert_loopback(child.pid, f"the mesh agent {name}")
        if not cap.holds(child.pid):
            raise BenchError(f"agent {name} (pid {child.pid}) is not in cgroup {cap.group}")
    except BaseException:
        stop(child)
        raise
    issues = []
    if state.get("pid") != child.pid:
        issues.append(f"state pid {state.get('pid')!r} != process pid {child.pid}")
    return Agent(child, state, ready_s, issues, key, False)


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
