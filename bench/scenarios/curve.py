"""Cost of CURVE (encryption + authentication): raw pyzmq echo and mesh calls, plaintext vs CURVE.

Two parts, each measured side by side in the same run, ratios are curve / plaintext:

(a) raw pyzmq over tcp://127.0.0.1. A separate echo-server process holds two
    `mesh.agent.transport.Transport` ROUTERs, one plaintext and one with the mesh key (CURVE server,
    ZAP handler in the server's loop, exactly as an agent does it), and echoes every frame back.
    The client (this process) uses plain DEALERs, made CURVE clients by
    `mesh.agent.transport.curve_client` for the CURVE side. Figures per side:
    - round trip of 1 KiB messages, sequential (2,000; 300 with --quick): median / p99 / mean;
    - throughput of pipelined 1 KiB and 64 KiB messages (a bounded window in flight, 1 s per
      run; 0.3 s with --quick): echoed messages/s and payload MB/s each way, plus CPU time
      (client + server process, all threads) per message; 5 rounds in alternating order, the
      median round is reported with every round's figure (1 round with --quick);
    - handshake: a fresh DEALER, `connect` to the first reply of a 1 KiB message (median/min).
    Sequential samples are taken in blocks that alternate between the two sides, so drift of
    the machine (CPU frequency, other load) hits both alike.
(b) the mesh: one agent with a mesh key and one `--insecure` agent (1 slot each, mDNS and REST
    off), `Client.submit(abs, -1)` sequential round trips (500; 100 with --quick) through each
    over TCP (`local=False`: as from another device), and through the secure agent's local
    socket (`mesh.wire.localsock`: a program on the agent's device, no CURVE, Unix socket),
    rotating in blocks: median / p99 / mean and ratios (curve / plain, local / curve).

On a small machine other load skews these figures (CPU per message least): `env` records the
1-minute load average at the start and the end of the run.

Sanity checks make sure the CURVE side really is CURVE: a plaintext DEALER gets no answer from
the CURVE echo ROUTER, and a key-less client cannot reach the secure agent.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import zmq

from bench.common import (
    BenchError,
    assert_loopback,
    bench_key,
    log,
    pct,
    ratio,
    read_json,
    spawn,
    start_agent,
    stop,
    wait_until,
)

KIB = 1024
RECV_TIMEOUT_MS = 10_000  # no single reply may take longer: a hang becomes an error
SERVER_LIFETIME_S = 600
BLOCK = 100  # sequential samples per block before switching sides (raw)
MESH_BLOCK = 50




# -- the echo server (a separate process) ------------------------------------------------------

def serve(state_path: str, key_file: str, lifetime: float) -> None:
    """Echo every frame on a plaintext and on a CURVE `Transport` ROUTER until SIGTERM."""
    from mesh import keys
    from mesh.agent.transport import Transport

    key = keys.load(key_file, env={})
    plain = Transport(b"echo-plain", "127.0.0.1", 0, key=None)
    curve = Transport(b"echo-curve", "127.0.0.1", 0, key=key)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    poller = zmq.Poller()
    roles: dict[zmq.Socket, tuple[Transport, str]] = {}
    for t in (plain, curve):
        for sock, role in ((t.router, "router"), (t.monitor, "monitor"), (t.zap, "zap")):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
                roles[sock] = (t, role)
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "plain": plain.address, "curve": curve.address}, f)
    os.replace(tmp, state_path)
    deadline = time.monotonic() + lifetime
    try:
        while not stopping and time.monotonic() < deadline:
            for sock, _ in poller.poll(200):
                t, role = roles[sock]
                if role == "zap":
                    t.handle_zap()
                elif role == "monitor":
                    t.handle_monitor()
                else:
                    for _ in range(256):
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            sock.send_multipart(msg, zmq.NOBLOCK, copy=False)
                        except zmq.ZMQError:
                            t.dropped_sends += 1
    finally:
        plain.close()
        curve.close()


def start_echo_server(workdir: Path, key_file: Path, timeout: float = 30.0):
    state = Path(workdir) / "echo.state.json"
    child = spawn("echo-server", [sys.executable, "-m", "bench.scenarios.curve", "--serve",
                                  str(state), str(key_file), str(SERVER_LIFETIME_S)], workdir)
    try:
        info = wait_until(lambda: read_json(state, ("pid", "plain", "curve")), timeout,
                          "the echo server", child)
        assert_loopback(child.pid, "the echo server")
    except BaseException:
        stop(child)
        raise
    return child, info


# -- raw pyzmq client side ----------------------------------------------------------------------

class Side:
    """One DEALER to one echo ROUTER (plaintext or CURVE)."""

    def __init__(self, ctx: zmq.Context, name: str, address: str, key) -> None:
        self.ctx, self.name, self.address, self.key = ctx, name, address, key
        self.sock = self.dealer()

    def dealer(self) -> zmq.Socket:
        from mesh.agent.transport import curve_client

        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        sock.setsockopt(zmq.SNDTIMEO, RECV_TIMEOUT_MS)
        curve_client(sock, self.key)
        return sock

    def connect(self) -> None:
        self.sock.connect(f"tcp://{self.address}")

    def recv(self, sock: zmq.Socket | None = None) -> bytes:
        try:
            return (sock or self.sock).recv()
        except zmq.Again:
            raise BenchError(f"no echo from the {self.name} server within "
                             f"{RECV_TIMEOUT_MS / 1000:.0f} s") from None

    def round_trips(self, payload: bytes, n: int) -> list[float]:
        out = []
        sock = self.sock
        for _ in range(n):
            t0 = time.perf_counter()
            sock.send(payload)
            self.recv()
            out.append(time.perf_counter() - t0)
        return out

    def pipelined(self, payload: bytes, duration: float, window: int,
                  server: psutil.Process) -> dict:
        """Keep `window` messages in flight for `duration` seconds, then drain them."""
        sock = self.sock
        sent = received = 0
        cpu0, srv0 = time.process_time(), sum(server.cpu_times()[:2])
        t0 = time.perf_counter()
        end = t0 + duration
        while True:
            if sent - received < window:
                if time.perf_counter() >= end:
                    break
                for _ in range(window - (sent - received)):
                    sock.send(payload)
                sent = received + window
            self.recv()
            received += 1
        while received < sent:
            self.recv()
            received += 1
        n = received
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0 + sum(server.cpu_times()[:2]) - srv0
        return {"msgs_s": n / wall, "mb_s": n * len(payload) / wall / 1e6,
                "cpu_us_per_msg": cpu / n * 1e6, "messages": n, "wall_s": wall}

    def handshake(self, payload: bytes) -> float:
        sock = self.dealer()  # key set-up happens before the clock starts
        try:
            t0 = time.perf_counter()
            sock.connect(f"tcp://{self.address}")
            sock.send(payload)
            self.recv(sock)
            return time.perf_counter() - t0
        finally:
            sock.close(0)


def _raw(tmp: Path, key_file: Path, key, quick: bool, res: dict[str, Any]) -> None:
    n_rtt = 300 if quick else 2000
    rounds = 1 if quick else 5
    n_hs = 10 if quick else 40
    duration = 0.3 if quick else 1.0  # per throughput run
    tput = {"1k": (KIB, 200), "64k": (64 * KIB, 32)}  # size, messages in flight
    with ExitStack() as stack:
        server, info = start_echo_server(tmp, key_file)
        stack.callback(stop, server)
        proc = psutil.Process(server.pid)
        ctx = zmq.Context()
        stack.callback(ctx.term)
        sides = {"plain": Side(ctx, "plain", info["plain"], None),
                 "curve": Side(ctx, "curve", info["curve"], key)}
        for side in sides.values():
            stack.callback(side.sock.close, 0)
            side.connect()

        # sanity: the CURVE ROUTER must not answer a plaintext client
        probe = Side(ctx, "curve-probe", info["curve"], None)
        probe.sock.setsockopt(zmq.RCVTIMEO, 500)
        try:
            probe.connect()
            probe.sock.send(b"hello")
            try:
                probe.sock.recv()
                raise BenchError("the CURVE echo ROUTER answered a plaintext client")
            except zmq.Again:
                res["raw_curve_enforced"] = True
        finally:
            probe.sock.close(0)

        small = os.urandom(KIB)
        for side in sides.values():  # warm up: connections, handshakes, code paths
            side.sock.send(small)
            if side.recv() != small:
                raise BenchError(f"{side.name} echo returned different bytes")
            side.round_trips(small, 200)

        log(f"raw pyzmq: {n_rtt} sequential 1 KiB round trips per side, in alternating blocks")
        rtt: dict[str, list[float]] = {"plain": [], "curve": []}
        for i in range(math.ceil(n_rtt / BLOCK)):
            order = ("plain", "curve") if i % 2 == 0 else ("curve", "plain")
            for name in order:
                rtt[name] += sides[name].round_trips(small, min(BLOCK, n_rtt - len(rtt[name])))
        for name, samples in rtt.items():
            us = [s * 1e6 for s in samples]
            res[f"raw_rtt_1k_{name}_median_us"] = round(statistics.median(us), 1)
            res[f"raw_rtt_1k_{name}_p99_us"] = round(pct(us, 99), 1)
            res[f"raw_rtt_1k_{name}_mean_us"] = round(statistics.fmean(us), 1)
        res["raw_rtt_samples"] = n_rtt
        for stat in ("median", "p99"):
            res[f"ratio_raw_rtt_1k_{stat}"] = ratio(res[f"raw_rtt_1k_curve_{stat}_us"],
                                                     res[f"raw_rtt_1k_plain_{stat}_us"])

        for label, (size, window) in tput.items():
            payload = os.urandom(size)
            log(f"raw pyzmq: throughput, pipelined {label} messages ({window} in flight) for "
                f"{duration} s x {rounds} round(s) per side")
            runs: dict[str, list[dict]] = {"plain": [], "curve": []}
            for r in range(rounds):
                for name in (("plain", "curve") if r % 2 == 0 else ("curve", "plain")):
                    runs[name].append(sides[name].pipelined(payload, duration, window, proc))
            for name, rs in runs.items():
                mid = sorted(rs, key=lambda x: x["msgs_s"])[len(rs) // 2]  # the median round
                res[f"raw_tput_{label}_{name}_msgs_s"] = round(mid["msgs_s"])
                res[f"raw_tput_{label}_{name}_mb_s"] = round(mid["mb_s"], 1)
                res[f"raw_tput_{label}_{name}_cpu_us_per_msg"] = round(
                    statistics.median(x["cpu_us_per_msg"] for x in rs), 1)
                res[f"raw_tput_{label}_{name}_messages"] = sum(x["messages"] for x in rs)
                res[f"raw_tput_{label}_{name}_msgs_s_runs"] = [round(x["msgs_s"]) for x in rs]
            res[f"raw_tput_{label}_window"] = window
            res[f"ratio_raw_tput_{label}"] = ratio(res[f"raw_tput_{label}_curve_msgs_s"],
                                                    res[f"raw_tput_{label}_plain_msgs_s"])
            res[f"ratio_raw_cpu_per_msg_{label}"] = ratio(
                res[f"raw_tput_{label}_curve_cpu_us_per_msg"],
                res[f"raw_tput_{label}_plain_cpu_us_per_msg"])
        res["raw_tput_rounds"] = rounds
        res["raw_tput_run_s"] = duration

        log(f"raw pyzmq: {n_hs} handshakes per side (fresh DEALER: connect -> first reply)")
        hs: dict[str, list[float]] = {"plain": [], "curve": []}
        for i in range(n_hs):
            for name in (("plain", "curve") if i % 2 == 0 else ("curve", "plain")):
                hs[name].append(sides[name].handshake(small) * 1e3)
        for name, ms in hs.items():
            res[f"raw_handshake_{name}_median_ms"] = round(statistics.median(ms), 3)
            res[f"raw_handshake_{name}_min_ms"] = round(min(ms), 3)
        res["raw_handshake_samples"] = n_hs
        res["ratio_raw_handshake"] = ratio(res["raw_handshake_curve_median_ms"],
                                            res["raw_handshake_plain_median_ms"])
        assert_loopback(server.pid, "the echo server")
        stopped = stop(server)
        if stopped["how"] != "graceful":
            log(f"echo server did not stop cleanly: {stopped}")


# -- the mesh -----------------------------------------------------------------------------------

def _mesh(tmp: Path, quick: bool, res: dict[str, Any]) -> None:
    from mesh.client.client import Client
    from mesh.errors import AgentUnreachable

    n = 100 if quick else 500
    with ExitStack() as stack:
        agents = {}
        for name, secure in (("curve", True), ("plain", False)):
            log(f"starting the {'secure' if secure else '--insecure'} agent (1 slot)")
            agent = start_agent(tmp, name=f"bench-{name}", cpus=1, secure=secure)
            stack.callback(stop, agent.child)
            if agent.issues:
                res[f"mesh_{name}_contract_issues"] = agent.issues
            agents[name] = agent
        try:  # sanity: a key-less client must not get through to the secure agent
            Client(agents["curve"].comm, timeout=1.0, key=None).close()
            raise BenchError("a plaintext client reached the secure agent")
        except AgentUnreachable:
            res["mesh_curve_enforced"] = True
        clients = {}
        for name, agent in agents.items():  # over TCP: the way of a program on another device
            clients[name] = Client(agent.comm, timeout=10.0, key=agent.key, local=False)
            stack.callback(clients[name].close)
        # and the secure agent's local socket (mesh.wire.localsock): a program on its device
        near = Client(agents["curve"].comm, timeout=10.0, key=agents["curve"].key)
        stack.callback(near.close)
        if near.local_path is not None:
            clients["local"] = near
        res["mesh_local_socket"] = near.local_path is not None
        for name, client in clients.items():  # warm up: worker start, imports, connections
            for _ in range(20):
                if client.submit(abs, -1).result(timeout=60) != 1:
                    raise BenchError(f"abs(-1) through the {name} agent did not return 1")

        log(f"mesh: {n} sequential submit(abs, -1) per agent, in alternating blocks")
        samples: dict[str, list[float]] = {name: [] for name in clients}
        names = list(clients)
        for i in range(math.ceil(n / MESH_BLOCK)):
            for name in names[i % len(names):] + names[:i % len(names)]:  # (rotating order)
                client = clients[name]
                for _ in range(min(MESH_BLOCK, n - len(samples[name]))):
                    t0 = time.perf_counter()
                    client.submit(abs, -1).result(timeout=30)
                    samples[name].append((time.perf_counter() - t0) * 1e3)
        for name, ms in samples.items():
            res[f"mesh_rtt_{name}_median_ms"] = round(statistics.median(ms), 3)
            res[f"mesh_rtt_{name}_p99_ms"] = round(pct(ms, 99), 3)
            res[f"mesh_rtt_{name}_mean_ms"] = round(statistics.fmean(ms), 3)
        res["mesh_rtt_samples"] = n
        for stat in ("median", "p99"):
            res[f"ratio_mesh_rtt_{stat}"] = ratio(res[f"mesh_rtt_curve_{stat}_ms"],
                                                   res[f"mesh_rtt_plain_{stat}_ms"])
            if "local" in samples:  # the local socket vs TCP with CURVE, same agent
                res[f"ratio_mesh_rtt_local_{stat}"] = ratio(res[f"mesh_rtt_local_{stat}_ms"],
                                                            res[f"mesh_rtt_curve_{stat}_ms"])
        for name, agent in agents.items():
            assert_loopback(agent.pid, f"the {name} agent")
            res[f"mesh_{name}_agent_stop"] = stop(agent.child)["how"]


# -- scenario -----------------------------------------------------------------------------------

def run(quick: bool = False) -> dict[str, Any]:
    res: dict[str, Any] = {"scenario": "curve"}
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmpdir:
        tmp = Path(tmpdir)
        key_file, key = bench_key(tmp)
        _raw(tmp, key_file, key, quick, res)
        _mesh(tmp, quick, res)
    res["env"] = {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
                  "libzmq": zmq.zmq_version(), "zmq_has_curve": bool(zmq.has("curve")),
                  "cpu_count": psutil.cpu_count(), "platform": sys.platform,
                  "loadavg_1m_start": load_start, "loadavg_1m_end": round(os.getloadavg()[0], 2)}
    res["summary"] = _summary(res, quick)
    return res


def _summary(r: dict[str, Any], quick: bool) -> list[str]:
    def f(key: str, unit: str = "") -> str:
        v = r.get(key)
        return "n/a" if v is None else f"{v}{unit}"

    lines = [f"curve ({'quick' if quick else 'full'}): CURVE vs plaintext, ratio = curve / plain"]
    for stat in ("median", "p99"):
        lines.append(f"  raw 1 KiB round trip {stat:<6}: plain {f(f'raw_rtt_1k_plain_{stat}_us', ' us')}"
                     f", curve {f(f'raw_rtt_1k_curve_{stat}_us', ' us')}, "
                     f"ratio {f(f'ratio_raw_rtt_1k_{stat}')}")
    for label in ("1k", "64k"):
        lines.append(
            f"  raw {label:>3} pipelined      : plain {f(f'raw_tput_{label}_plain_msgs_s', ' msg/s')} "
            f"({f(f'raw_tput_{label}_plain_mb_s', ' MB/s')}), curve "
            f"{f(f'raw_tput_{label}_curve_msgs_s', ' msg/s')} ({f(f'raw_tput_{label}_curve_mb_s', ' MB/s')})"
            f", ratio {f(f'ratio_raw_tput_{label}')}; CPU/msg plain "
            f"{f(f'raw_tput_{label}_plain_cpu_us_per_msg', ' us')}, curve "
            f"{f(f'raw_tput_{label}_curve_cpu_us_per_msg', ' us')}")
    lines.append(f"  raw handshake (median)   : plain {f('raw_handshake_plain_median_ms', ' ms')}, "
                 f"curve {f('raw_handshake_curve_median_ms', ' ms')}, "
                 f"ratio {f('ratio_raw_handshake')}")
    for stat in ("median", "p99"):
        lines.append(f"  mesh submit(abs) {stat:<6}  : plain {f(f'mesh_rtt_plain_{stat}_ms', ' ms')}, "
                     f"curve {f(f'mesh_rtt_curve_{stat}_ms', ' ms')}, "
                     f"ratio {f(f'ratio_mesh_rtt_{stat}')}; "
                     f"local socket {f(f'mesh_rtt_local_{stat}_ms', ' ms')}, "
                     f"ratio to curve {f(f'ratio_mesh_rtt_local_{stat}')}")
    return lines


if __name__ == "__main__":  # the echo server: python -m bench.scenarios.curve --serve STATE KEY S
    if len(sys.argv) != 5 or sys.argv[1] != "--serve":
        sys.exit("usage: python -m bench.scenarios.curve --serve STATE_FILE KEY_FILE LIFETIME_S")
    serve(sys.argv[2], sys.argv[3], float(sys.argv[4]))
