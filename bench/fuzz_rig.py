"""The `fuzz` scenario's test rig: one agent under test and the connections that feed it.

- the agent: `python -m mesh join` with the run's mesh key, REST on, mDNS off, 1 slot, its
  runtime directory (local socket, REST token file) inside the run directory;
- a puppet member (`Puppet`, a thread): a CURVE ROUTER with the mesh key, as an agent has
  (`mesh.agent.transport.Transport`). It joins the agent's mesh with a Ping, answers the
  agent's probes (Pong), calls (a failed Result), fetches (Object "gone"), and sends what
  the fuzzer queues for the agent's own connection to it (channel `reply`);
- DEALERs with the mesh key to the agent's ROUTER: `member` (its identity is the puppet's
  node id: the agent takes what it sends as the member's), `client` (no identity, as a
  program), `tagged` (an identity starting with the local socket's tag, which the agent
  refuses); and `local`, a connection to the agent's local socket.

`sync` sends a Query on each of member, client and local and waits for the answers (every
frame sent before on those was handled: each connection is read in order), then asks for
the agent's status. The `reply` channel is not ordered with them: the puppet's frames are
waited for into the agent's socket (`Puppet.wait_idle`), which it reads in the same turns,
but a frame still unread then is counted at the next sync. `LogScanner` reads the agent's
log as it grows and returns the errors in it (tracebacks, also those of REST threads
interleaved with other output, logging errors with their call stack, ERROR lines).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from bench.agents import Agent, start_agent
from bench.errors import BenchError
from bench.fuzz_oracle import Outcome
from bench.procs import stop
from mesh.agent.transport import Transport, curve_client
from mesh.errors import DecodeError
from mesh.wire import localsock
from mesh.wire import messages as m

SYNC_TIMEOUT_S = 30.0
_HEADER = struct.Struct(">I")


# --------------------------------------------------------------------------- the puppet


class Puppet(threading.Thread):
    """A member of the agent's mesh played by the fuzzer (see the module docstring)."""

    def __init__(self, key, name: str = "fuzz-member", node_id: str | None = None) -> None:
        super().__init__(name="fuzz-puppet", daemon=True)
        self.node_id = node_id or os.urandom(16).hex()
        self.name = name
        self.transport = Transport(bytes.fromhex(self.node_id), "127.0.0.1", 0, key)
        self.address = self.transport.address
        self.incarnation = 1
        self.agent_identity: bytes | None = None  # the agent's DEALER (its node id)
        self.outbox: queue.Queue = queue.Queue(maxsize=2000)  # (frame, Outcome) for the agent's DEALER
        self.sent = 0
        self.unsent = 0  # queued frames the ROUTER could not send (not connected, or full)
        self._lock = threading.Lock()
        self._sent_expect = Outcome()  # what the frames that went should do (bench.fuzz_oracle)
        self.answered = 0
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def info(self) -> m.NodeInfo:
        return m.NodeInfo(self.node_id, self.name, self.address, 1, self.incarnation)

    def load(self) -> m.Load:
        return m.Load(1, 0, 1000, 1)  # (busy: the agent should not delegate to it)

    def run(self) -> None:
        t = self.transport
        poller = zmq.Poller()
        for sock in (t.router, t.monitor, t.zap):
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                for sock, _ in poller.poll(10):
                    if sock is t.zap:
                        t.handle_zap()
                    elif sock is t.monitor:
                        t.handle_monitor()
                    else:
                        self._read()
                self._send_outbox()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc
        finally:
            t.close()

    def _read(self) -> None:
        router = self.transport.router
        for _ in range(256):
            try:
                identity, frame = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # (not two parts: not from an agent)
                continue
            self.agent_identity = identity
            try:
                msg = m.decode(frame)
            except DecodeError:
                continue
            for one in (m.unbatch(msg)[0] if type(msg) is m.Batch else [msg]):
                reply = self._answer(one)
                if reply is not None:
                    try:
                        router.send_multipart([identity, m.encode(reply)], zmq.NOBLOCK)
                        self.answered += 1
                    except zmq.ZMQError:
                        pass

    def _answer(self, msg: m.Message) -> m.Message | None:
        if isinstance(msg, m.Ping):
            return m.Pong(msg.seq, self.info(), self.load(), [])
        if isinstance(msg, m.Call):
            return m.Result(msg.call_id, False, b"", self.name, "PuppetError", "the fuzz puppet runs nothing")
        if isinstance(msg, m.Fetch):
            return m.Object(msg.oid, False, b"", "the fuzz puppet holds nothing")
        return None

    def _send_outbox(self) -> None:
        router = self.transport.router
        for _ in range(512):
            try:
                frame, outcome = self.outbox.get_nowait()
            except queue.Empty:
                return
            try:
                if self.agent_identity is None:
                    self.unsent += 1
                    continue
                try:
                    router.send_multipart([self.agent_identity, frame], zmq.NOBLOCK)
                except zmq.ZMQError:
                    self.unsent += 1
                    continue
                with self._lock:
                    self.sent += 1
                    if outcome is not None:
                        self._sent_expect.add(outcome)
            finally:
                self.outbox.task_done()

    def take_sent(self) -> Outcome:
        """What the reply frames sent since the last call should do (and forget it)."""
        with self._lock:
            out, self._sent_expect = self._sent_expect, Outcome()
        return out

    def idle(self) -> bool:
        """Every queued frame was sent (or counted as unsent)."""
        return self.outbox.unfinished_tasks == 0

    def wait_idle(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)


# --------------------------------------------------------------------------- the agent's log


@dataclass
class LogError:
    kind: str  # traceback | logging_error | rest_thread | thread | error_line | fatal
    signature: str  # Type@mesh/file.py:line (or the normalised line)
    text: str


_ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (ERROR|CRITICAL) (\S+): (.*)$")
_FILE_LINE = re.compile(r'^\s+File "([^"]+)", line (\d+), in (.*)$')
_INTERLEAVED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ |-{20,}$|Exception occurred during "
                          r"processing of request|Traceback \(most recent call last\):$)")
_REST_MARKS = ("socketserver.py", "http/server.py", "/mesh/faces/rest.py")  # a REST request's thread
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def _normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{8,}\b", "H", text)
    return re.sub(r"\d+", "N", text)[:120]


def _where(lines: list[str]) -> str:
    """`mesh/file.py:line` of the innermost frame in mesh/ (else the innermost at all)."""
    where, ours = "?", False
    for line in lines:
        match = _FILE_LINE.match(line)
        if match and "/mesh/" in match.group(1):
            where, ours = f"mesh/{match.group(1).rsplit('/mesh/', 1)[1]}:{match.group(2)}", True
        elif match and not ours:
            where = f"{match.group(1).rsplit('/', 1)[-1]}:{match.group(2)}"
    return where


class LogScanner:
    """The errors in an agent's log (stdout and stderr of the agent and its workers), read
    incrementally: `scan()` returns the ones complete since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self._block: list[str] | None = None
        self._context = "traceback"
        self._recent: list[str] = []
        self._logging: LogError | None = None  # a logging error, until its "Call stack:" is read
        self._stack: list[str] | None = None
        self._held: LogError | None = None  # a traceback, until we know it is not a chain's cause
        self._cause = ""  # the text of the cause(s) of the traceback being read

    def scan(self, final: bool = False) -> list[LogError]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        out: list[LogError] = []
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"), out)
        if final and self._block is not None:
            self._held = self._close_block("")
        if final and self._held is not None:
            out.append(self._held)
            self._held = None
        if final and self._stack is not None:
            out.append(self._close_stack())
        if final and self._logging is not None:
            out.append(self._logging)
            self._logging = None
        return out

    def _close_stack(self) -> LogError:
        """The logging error, named after the innermost mesh/ frame of its call stack."""
        error, stack = self._logging, self._stack
        self._logging = self._stack = None
        where = _where(stack)
        name = error.signature.split("@", 1)[0]
        return LogError(error.kind, f"{name}@{where}" if where != "?" else error.signature,
                        (error.text + "\nCall stack:\n" + "\n".join(stack))[-8000:])

    def _line(self, line: str, out: list[LogError]) -> None:
        if self._held is not None and line:
            if line.startswith(_CHAINED):  # the next traceback is the one that escaped: the
                self._cause += self._held.text + "\n\n" + line + "\n"  # held one is its cause
                self._held = None
                return
            out.append(self._held)
            self._held = None
        if self._stack is not None:  # a logging error's "Call stack:": where the log call was
            if line.startswith(" ") or _INTERLEAVED.match(line):
                self._stack.append(line)
                return
            out.append(self._close_stack())
        if self._logging is not None:
            if line == "Call stack:":
                self._stack = []
                return
            out.append(self._logging)
            self._logging = None
        if self._block is not None:
            if line.startswith(" ") or line.startswith("\t") or not line:
                self._block.append(line)
                return
            if _EXC_LINE.match(line) and not _INTERLEAVED.match(line):  # (else: a piece of
                error = self._close_block(line)  # another thread's output inside the block)
                if error.kind == "logging_error":
                    self._logging = error
                else:
                    self._held = error
                return
        elif line.startswith("Traceback (most recent call last):"):
            recent = " ".join(self._recent)
            self._context = ("logging_error" if "--- Logging error ---" in recent else
                             "rest_thread" if "Exception occurred during processing of request" in recent else
                             "thread" if "Exception in thread" in recent else "traceback")
            self._block = [line]
            return
        match = _ERROR_LINE.match(line)
        if match:
            out.append(LogError("error_line", f"{match.group(1)} {match.group(2)}: {_normalise(match.group(3))}",
                                line[:2000]))
        elif line.startswith("Fatal Python error") or "Segmentation fault" in line:
            out.append(LogError("fatal", _normalise(line), line[:2000]))
        self._recent = (self._recent + [line])[-3:]

    def _close_block(self, last: str) -> LogError:
        block, self._block = self._block + [last], None
        where = _where(block)
        exc = _EXC_LINE.match(last)
        name = exc.group(1).rsplit(".", 1)[-1] if exc else "?"
        self._recent = [last]
        kind = self._context
        if kind == "traceback" and any(mark in line for line in block + [self._cause] for mark in _REST_MARKS):
            kind = "rest_thread"  # (its "Exception occurred..." line went elsewhere: interleaved)
        text, self._cause = (self._cause + "\n".join(block))[-8000:], ""
        return LogError(kind, f"{name}@{where}", text)


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    """One agent under test, the puppet and the fuzzer's connections (see the module docstring)."""

    run_dir: Path
    key: Any
    life: int | str = 1
    member_id: str | None = None  # the puppet's node id (None: a new one)
    agent: Agent = field(init=False)
    puppet: Puppet = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = self.run_dir / "runtime"
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        name = "fuzz-target" if self.life == 1 else f"fuzz-target-{self.life}"
        (self.run_dir / f"{name}.state.json").unlink(missing_ok=True)  # (an agent that was killed)
        self.agent = start_agent(self.run_dir, name=name, cpus=1, rest=True,
                                 env={"MESH_RUNTIME_DIR": str(self.runtime)})
        self.log = LogScanner(self.agent.child.log_path)
        self.proc = psutil.Process(self.agent.pid)
        self.ctx = zmq.Context()
        self.puppet = Puppet(self.key, node_id=self.member_id)
        self.puppet.start()
        self.comm = self.agent.comm
        self.rest = self.agent.state["rest"]
        self.agent_id = self.agent.state["id"]
        self.agent_name = self.agent.state["name"]
        self.dealers: dict[str, zmq.Socket] = {}
        self.dealers["member"] = self._dealer(bytes.fromhex(self.puppet.node_id))
        self.dealers["client"] = self._dealer(None)
        self.dealers["tagged"] = self._dealer(b"\xff" + os.urandom(4))
        self.local: socket.socket | None = None
        self._local_in = bytearray()
        self.local_path = localsock.runtime_path(self.comm, ".sock", {"MESH_RUNTIME_DIR": str(self.runtime)})
        self._connect_local()
        self.replies: dict[str, int] = {}  # message type -> count, of what came back
        self._answers: dict[int, m.Answer] = {}
        self._qid = 1 << 40
        self.status0: dict | None = None

    # ------------------------------------------------------------------ connections

    def _dealer(self, identity: bytes | None) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(SYNC_TIMEOUT_S * 1000))
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        curve_client(sock, self.key)
        sock.connect(f"tcp://{self.comm}")
        return sock

    def _connect_local(self) -> None:
        if self.local is not None:
            self.local.close()
        self._local_in = bytearray()
        self.local = None
        if self.local_path is None or not os.path.exists(self.local_path):
            raise BenchError(f"the agent has no local socket at {self.local_path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SYNC_TIMEOUT_S)
        sock.connect(self.local_path)
        self.local = sock

    def join(self, timeout: float = 20.0) -> None:
        """The puppet joins: its Ping over the member DEALER, until the agent counts it alive
        and has connected back to it."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            status = self.query("peers", timeout=5.0)
            me = [p for p in (status or []) if p.get("id") == self.puppet.node_id]
            if me and me[0].get("state") == "alive" and self.puppet.agent_identity is not None:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the puppet member did not join the agent within {timeout:.0f} s: {me}")
            time.sleep(0.05)

    def refresh(self) -> None:
        """The puppet says it is alive, with a newer incarnation (refutes what garbage said)."""
        self.puppet.incarnation += 1
        self.dealers["member"].send(m.encode(m.Ping(self.puppet.incarnation, self.puppet.info(),
                                                    self.puppet.load(), [])))

    # ------------------------------------------------------------------ sending

    def send(self, channel: str, parts: list[bytes], outcomes: list | None = None) -> None:
        """Raises BenchError if a frame cannot go within SYNC_TIMEOUT_S (the agent stalls).
        `outcomes` (reply only): what each part should do, counted when the puppet sent it."""
        if channel == "reply":
            for i, part in enumerate(parts):
                try:
                    self.puppet.outbox.put((part, None if outcomes is None else outcomes[i]),
                                           timeout=SYNC_TIMEOUT_S)
                except queue.Full:
                    raise BenchError("the puppet could not send to the agent for 30 s") from None
            return
        if channel == "local":
            data = b"".join(_HEADER.pack(len(p)) + p for p in parts)
            try:
                self.local.sendall(data)
            except OSError as exc:
                raise BenchError(f"the local socket broke: {exc}") from None
            return
        try:
            self.dealers[channel].send_multipart(parts)
        except zmq.Again:
            raise BenchError(f"the agent took nothing on {channel} for {SYNC_TIMEOUT_S:.0f} s") from None

    def local_raw(self, data: bytes) -> None:
        """Bytes on the local connection that break its framing; then a fresh connection."""
        try:
            self.local.sendall(data)
        except OSError:
            pass
        self._connect_local()

    def drain(self) -> None:
        """Read what came back on every connection (answers, pongs, results)."""
        for sock in self.dealers.values():
            for _ in range(10_000):
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._reply(frame)
        if self.local is not None:
            self.local.setblocking(False)
            try:
                while True:
                    chunk = self.local.recv(1 << 20)
                    if not chunk:
                        break
                    self._local_in += chunk
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass
            finally:
                self.local.settimeout(SYNC_TIMEOUT_S)
            buf = self._local_in
            while len(buf) >= 4:
                (size,) = _HEADER.unpack_from(buf)
                if len(buf) < 4 + size:
                    break
                self._reply(bytes(buf[4: 4 + size]))
                del buf[: 4 + size]

    def _reply(self, frame: bytes) -> None:
        try:
            msg = m.decode(frame)
        except DecodeError:
            self.replies["undecodable"] = self.replies.get("undecodable", 0) + 1
            return
        for one in (m.unbatch(msg)[0] if type(msg) is m.Batch else [msg]):
            self.replies[one.TAG] = self.replies.get(one.TAG, 0) + 1
            if type(one) is m.Answer and one.qid >= 1 << 40:
                self._answers[one.qid] = one

    def _wait(self, qids: list[int], timeout: float) -> dict[int, m.Answer] | None:
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if all(q in self._answers for q in qids):
                return {q: self._answers.pop(q) for q in qids}
            if time.monotonic() > deadline or not self.alive():
                for q in qids:
                    self._answers.pop(q, None)
                return None
            time.sleep(0.002)

    def query(self, what: str = "status", channel: str = "client", timeout: float = SYNC_TIMEOUT_S):
        """The answer's body (None: no answer in time)."""
        self._qid += 1
        qid = self._qid
        frame = m.encode(m.Query(qid, what))
        try:
            self.send(channel, [frame])
        except BenchError:
            return None
        answers = self._wait([qid], timeout)
        return None if answers is None else answers[qid].body

    def sync(self, timeout: float = SYNC_TIMEOUT_S) -> dict | None:
        """A Query on member, local and client, each answered (everything sent before on
        those three was handled: each connection is read in order), then the agent's status
        (asked after those answers, so it counts all of that). None if an answer did not
        come in time."""
        qids = []
        for channel in ("member", "local", "client"):
            self._qid += 1
            try:
                self.send(channel, [m.encode(m.Query(self._qid, "peers"))])
            except BenchError:
                return None
            qids.append(self._qid)
        if self._wait(qids, timeout) is None:
            return None
        return self.query("status", timeout=timeout)

    # ------------------------------------------------------------------ the agent

    def alive(self) -> bool:
        return self.agent.child.popen.poll() is None

    def gone(self, timeout: float = 5.0) -> bool:
        """After a query went unanswered: has the agent exited (waiting up to `timeout` for
        it to finish dying)?"""
        try:
            self.agent.child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def wait_threads(self, at_most: int, timeout: float = 1.0) -> bool:
        """Wait until the agent runs at most `at_most` threads (its REST server's request
        threads ended: what they print is in the log), for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (self.threads() or 0) > at_most:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def rss_mb(self) -> float | None:
        try:
            return round(self.proc.memory_info().rss / 2**20, 2)
        except psutil.Error:
            return None

    def threads(self) -> int | None:
        try:
            return self.proc.num_threads()
        except psutil.Error:
            return None

    def close(self, graceful: bool = True) -> dict:
        """Stop the agent: SIGTERM (a graceful leave), or SIGKILL (a triage agent)."""
        for sock in self.dealers.values():
            sock.close(0)
        if self.local is not None:
            self.local.close()
        self.puppet.close()
        self.ctx.term()
        return stop(self.agent.child, timeout=15, sig=signal.SIGTERM if graceful else signal.SIGKILL)
