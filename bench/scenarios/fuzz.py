"""Hostile input at scale: mutated and random frames over authenticated connections, and random HTTP requests, at one agent that must stay alive, bounded and counting.

One agent (mesh key, 1 slot, REST on, mDNS off) on 127.0.0.1, and the fuzzer (this process)
holding the mesh key (`bench/fuzz_rig.py`). Frames (1,000,000; 20,000 with --quick; `--frames`)
go over five channels: `member` (a DEALER whose identity is the node id of a puppet member
that joined the agent's mesh, so the agent takes its frames as a member's), `client` (a
DEALER as a program), `tagged` (an identity with the local socket's tag, refused), `local`
(the agent's local socket) and `reply` (the puppet answering on the agent's own connection
to it). They are valid frames of every message type, mutated at the byte and CBOR level,
and random bytes (`bench/fuzz_frames.py`). HTTP requests (100,000; 2,000 with --quick;
`--requests`) go to REST with and without the token: methods, paths, Host, Origin,
Content-Type, Authorization and Content-Length variants, JSON, COMPSs XML (mutated),
binary, oversized, slow and partial requests (`bench/fuzz_http.py`), 8 at a time, while 16
connections sit half-sent. Last, one frame of `MAX_FRAME + 1` bytes, one over ZeroMQ's
`MAXMSGSIZE` and an oversized length on the local socket.

Every frame sent is decoded here with the agent's codec and routed as the agent routes it
(`bench/fuzz_oracle.py`): the expected `dropped` counts by reason and the messages taken.
Every `--check-every` frames (2,000; 500 with --quick), and whenever 8 MB went since the
last one, and every 400 requests: a Query on member, local and client (all three answered:
the agent is answering, and everything sent before on them was handled), then its status,
the agent's RSS and threads, and its log scanned for tracebacks (REST threads' too, grouped
by exception type: they interleave), logging errors and ERROR lines. The figures: the deltas of the agent's
`dropped` and `rest.refused` counters by reason, what the oracle expected, and the
difference (`unexplained`); HTTP answers by status, and answers that differ from what the
server's own parsing and `RestGuard` predict.

Errors: a frame whose local decode raises (not DecodeError) is sent alone between two
syncs, so if the agent dies the culprit is that frame; later frames with the same
signature are withheld (`known_crash`), and the agent is restarted. An error found in the
log at a checkpoint, or a death there, has its window (what was sent since the last
checkpoint) saved and, within `--triage-s` (60 s; 10 with --quick), replayed one item at a
time on a fresh agent (the puppet keeps its id; HTTP requests are sent to the new port) to
find the item after which it shows, then reduced (that item alone, else ddmin). Each
distinct error (signature `Type@mesh/file.py:line`) is saved under `RUN_DIR/findings/`
(the items as CBOR, the traceback, a replay command: `bench/run.py fuzz --replay DIR`).
RSS is reported per life of the agent (a restart is another process). The finale's flood
(`--flood`, 256 frames of 1 MB, sent without syncing) is reported on its own.

The run is bounded: frames stop at 50 % of `--budget-s` (600; 60 with --quick) and HTTP at
88 %, whatever was sent is reported with its rate. Frames an authenticated peer may
legitimately send but that would harm this machine or end the run are withheld and counted
(see `bench/fuzz_oracle.py`, `bench/fuzz_http.py`). Gossip can make the agent dial any
address, so the scenario runs only in a network namespace with nothing but loopback
(`unshare --net sh -c 'ip link set lo up && python bench/run.py fuzz'`).
"""

from __future__ import annotations

import random
import re
import socket
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import psutil
import zmq

from bench.agents import bench_key
from bench.errors import BenchError
from bench.fuzz_frames import KINDS, FrameFuzzer, Ids
from bench.fuzz_http import KINDS as HTTP_KINDS
from bench.fuzz_http import HttpFuzzer, Request, dry_run
from bench.fuzz_http import send as http_send
from bench.fuzz_oracle import INPUT_REASONS, Oracle, Outcome
from bench.fuzz_rig import LogError, Rig
from bench.procs import log
from mesh.agent.transport import curve_client
from mesh.faces.rest_auth import REASONS as REST_REASONS
from mesh.faces.rest_auth import RestGuard
from mesh.wire import messages as m

FRAMES, REQUESTS = 1_000_000, 100_000
QUICK_FRAMES, QUICK_REQUESTS = 20_000, 2_000
CHANNEL_WEIGHTS = {"member": 34, "client": 34, "local": 20, "reply": 10, "tagged": 2}
HTTP_THREADS = 8
HTTP_BATCH = 400
HOLD = 16  # connections kept half-sent through the HTTP phase
MAX_DEATHS = 25
FRAMES_SHARE, HTTP_SHARE = 0.5, 0.88  # frames stop at this share of --budget-s, HTTP at that
WINDOW_BYTES = 8 << 20  # sent since the last sync, past which the fuzzer syncs (the agent's
# queues hold up to ZeroMQ's high-water mark in *messages*, whatever their size)
FLOOD = (256, 1 << 20)  # the finale's flood: so many frames of so many bytes, sent without waiting
RSS_GROWTH_MB = 16.0  # flagged: RSS grew more than this (and 10 %) from early to late in the fuzzing


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="seed of everything sent (default 1)")
    parser.add_argument("--frames", type=int, help="frames to send (default 1,000,000; 20,000 with --quick)")
    parser.add_argument("--requests", type=int, help="HTTP requests (default 100,000; 2,000 with --quick)")
    parser.add_argument("--check-every", type=int, help="frames between status checks (default 2,000; 500 with --quick)")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget of the sending (default 600; 60 with --quick)")
    parser.add_argument("--triage-s", type=float, help="time for reducing errors to their frames (default 60; 10 with --quick)")
    parser.add_argument("--flood", type=int, default=FLOOD[0], help="1 MB frames of the final flood (default 256)")
    parser.add_argument("--run-dir", help="where logs and findings go (default: a new /tmp/mesh-fuzz-sSEED-*; kept)")
    parser.add_argument("--replay", help="replay a saved finding (its directory) on a fresh agent instead of fuzzing")


@dataclass
class Item:
    """One thing sent: a frame or multipart message on a channel, or an HTTP request
    (`http`: parts = [bytes, mode, the REST port it went to]), or raw bytes on the local
    socket (`local_raw`)."""

    channel: str
    kind: str
    parts: list[bytes]

    def dump(self) -> list:
        return [self.channel, self.kind, self.parts]


@dataclass
class Finding:
    signature: str
    kind: str  # the log's: traceback, logging_error, rest_thread, error_line, fatal, death, stall
    fatal: bool
    text: str
    window: list[Item]
    phase: str
    at: int  # frames (or requests) sent when it was found
    culprit: list[Item] | None = None
    member_id: str | None = None  # the puppet's node id then (frames name it)
    count: int = 1
    locations: Counter = field(default_factory=Counter)  # the errors' own signatures
    predicted: str | None = None
    directory: str | None = None
    reproduced: bool | None = None


@dataclass
class Life:
    """One run of the agent under test (a crash starts another)."""

    number: int
    status_start: dict
    status_last: dict
    expect: Outcome = field(default_factory=Outcome)
    lost: int = 0  # frames sent after its last good sync, when it died
    died: str | None = None


def finding_key(error: LogError) -> str:
    """What makes two errors the same finding: the signature, but for REST threads the
    exception type alone (the server's threads print their tracebacks at the same time,
    interleaved line by line, so the innermost frame seen is not always theirs; where each
    was seen is kept in `locations`)."""
    if error.kind == "rest_thread":
        return error.signature.split("@", 1)[0] + "@REST thread"
    return error.signature


def _isolated() -> str | None:
    """Why this is not a network namespace with loopback only (None: it is)."""
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return f"interface {name} has {a.address}"
            if a.family == socket.AF_INET6 and a.address.split("%")[0] not in ("::1",):
                return f"interface {name} has {a.address}"
    return None


def run(quick: bool = False, seed: int = 1, frames: int | None = None, requests: int | None = None,
        check_every: int | None = None, budget_s: float | None = None, triage_s: float | None = None,
        run_dir: str | None = None, replay: str | None = None, flood: int = FLOOD[0]) -> dict[str, Any]:
    why = _isolated()
    if why is not None:
        raise BenchError(f"network safety: the fuzzer makes the agent dial addresses from garbage "
                         f"(gossip, seeds); run it in a namespace with only loopback ({why}): "
                         "unshare --net sh -c 'ip link set lo up && python bench/run.py fuzz ...'")
    if replay is not None:
        return _replay(Path(replay))
    fuzz = Fuzz(quick, seed,
                frames if frames is not None else (QUICK_FRAMES if quick else FRAMES),
                requests if requests is not None else (QUICK_REQUESTS if quick else REQUESTS),
                check_every or (500 if quick else 2000),
                budget_s or (60.0 if quick else 600.0),
                triage_s if triage_s is not None else (10.0 if quick else 60.0),
                Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=f"mesh-fuzz-s{seed}-")), flood)
    return fuzz.run()


class Fuzz:
    def __init__(self, quick: bool, seed: int, frames: int, requests: int, check_every: int,
                 budget_s: float, triage_s: float, run_dir: Path, flood: int = FLOOD[0]) -> None:
        self.quick, self.seed = quick, seed
        self.n_frames, self.n_requests, self.check_every = frames, requests, max(1, check_every)
        self.budget_s, self.triage_s, self.flood = budget_s, triage_s, flood
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.key_file, self.key = bench_key(run_dir)
        self.res: dict[str, Any] = {"scenario": "fuzz", "seed": seed, "run_dir": str(run_dir)}
        self.findings: dict[str, Finding] = {}
        self.known_crashes: set[str] = set()
        self.survived_predictions: set[str] = set()
        self.lives: list[Life] = []
        self.rss: list[tuple[int, str, int, float]] = []  # (life, phase, sent, MB)
        self.threads_max = 0
        self.checks = self.check_failures = 0
        self.frames_sent = 0
        self.by_kind: Counter = Counter()
        self.by_channel: Counter = Counter()
        self.withheld: Counter = Counter()
        self.pending: list[Item] = []
        self.window_bytes = 0
        self.pending_expect = Outcome()
        self.previous: list[Item] = []
        self.rig: Rig | None = None
        self.fz: FrameFuzzer | None = None
        self.oracle: Oracle | None = None
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ lives

    def _start_life(self) -> None:
        number = len(self.lives) + 1
        log(f"starting the agent under test (life {number})")
        self.rig = Rig(self.run_dir, self.key, life=number)
        self.rig.join()
        status = self.rig.sync()
        if status is None:
            raise BenchError("the agent under test did not answer its first status query")
        self.lives.append(Life(number, status, status))
        p = self.rig.puppet
        ids = Ids(p.node_id, p.name, p.address, self.rig.agent_id, self.rig.agent_name, self.rig.comm)
        self.fz = FrameFuzzer(ids, self.rng)
        self.oracle = Oracle(p.node_id)
        self.pending, self.pending_expect, self.previous = [], Outcome(), []
        self._sample("start", 0)

    def _end_life(self, how: str) -> None:
        life, rig = self.lives[-1], self.rig
        if how != "ok":
            life.died = how
            life.lost = len(self.pending)
        stopped = rig.close()
        life_res = self.res.setdefault("lives", [])
        life_res.append({"life": life.number, "died": life.died, "lost_frames": life.lost,
                         "stop": stopped["how"], "exit": stopped["returncode"],
                         "unexplained": _unexplained(life.expect, _dropped(life)),
                         "calls_at_last_check": {k: life.status_last.get(k) for k in ("queued", "running")}})
        self.rig = None

    def _death(self, phase: str, at: int) -> None:
        """The agent died: its errors, the window, a new life (unless there were too many)."""
        rig = self.rig
        rig.agent.child.popen.wait(5)
        code = rig.agent.child.popen.returncode
        errors = rig.log.scan(final=True)
        window = self.previous + self.pending
        fatal = [e for e in errors if e.kind in ("traceback", "fatal")] or errors
        if fatal:
            for e in errors:
                self._finding(e, window, phase, at, fatal=e is fatal[-1])
        else:
            self._finding(LogError("death", f"exit {code}", rig.agent.child.tail(30)), window, phase, at,
                          fatal=True)
        log(f"the agent DIED (exit {code}) after {at} {phase}; "
            f"{fatal[-1].signature if fatal else 'no traceback'}")
        self._end_life(f"exit {code}")
        if len(self.lives) >= MAX_DEATHS:
            raise _Stop(f"the agent died {len(self.lives)} times")
        self._start_life()

    # ------------------------------------------------------------------ findings

    def _finding(self, error: LogError, window: list[Item], phase: str, at: int, fatal: bool = False,
                 culprit: list[Item] | None = None, predicted: str | None = None) -> None:
        key = finding_key(error)
        old = self.findings.get(key)
        if old is not None:
            old.locations[error.signature] += 1
            old.count += 1
            old.fatal = old.fatal or fatal
            if old.culprit is None and culprit is not None:
                old.culprit, old.window = culprit, window
            return
        log(f"FINDING {error.signature} ({error.kind}{', fatal' if fatal else ''}) after {at} {phase}")
        member = self.rig.puppet.node_id if self.rig is not None else None
        self.findings[key] = Finding(key, error.kind, fatal, error.text, list(window), phase, at, culprit,
                                     member, predicted=predicted, locations=Counter({error.signature: 1}))

    def _errors(self, errors: list[LogError], window: list[Item], phase: str, at: int) -> None:
        for e in errors:
            self._finding(e, window, phase, at)

    # ------------------------------------------------------------------ checks

    def _sample(self, phase: str, at: int) -> None:
        rss = self.rig.rss_mb()
        if rss is not None:
            self.rss.append((len(self.lives), phase, at, rss))
        self.threads_max = max(self.threads_max, self.rig.threads() or 0)

    def _checkpoint(self, phase: str = "frames") -> bool:
        """Sync, sample, scan the log. False if the agent died (a new life runs then)."""
        rig = self.rig
        window = self.previous + self.pending  # (where an error in the log comes from)
        rig.puppet.wait_idle()  # (the reply channel is not synced: what the puppet sent is in
        status = rig.sync()  # the agent's queue before the three Queries are answered)
        alive = status is not None or not rig.gone()
        if status is not None:
            self.checks += 1
            life = self.lives[-1]
            life.expect.add(self.pending_expect)
            life.expect.add(rig.puppet.take_sent())
            life.status_last = status
            self.pending_expect = Outcome()
            self.window_bytes = 0
            self.previous, self.pending = [i for i in self.pending if i.channel == "reply"], []
        elif alive:
            self.check_failures += 1
            self._finding(LogError("stall", "no status answer within 30 s", ""), window, phase,
                          self.frames_sent)
        if not alive:
            self._death(phase, self.frames_sent)
            return False
        self._errors(rig.log.scan(), window, phase, self.frames_sent)
        self._sample(phase, self.frames_sent)
        if phase == "frames":
            rig.refresh()  # (the puppet refutes what the garbage said about it)
        return True

    # ------------------------------------------------------------------ frames

    def _send_item(self, item: Item, out: Outcome, outs: list[Outcome] | None) -> None:
        self.rig.send(item.channel, item.parts, outs)
        self.window_bytes += sum(map(len, item.parts))
        self.pending.append(item)
        if item.channel != "reply":
            self.pending_expect.add(out)
        self.frames_sent += 1
        self.by_kind[item.kind] += 1
        self.by_channel[item.channel] += 1

    def _frames(self, deadline: float) -> None:
        channels, weights = list(CHANNEL_WEIGHTS), list(CHANNEL_WEIGHTS.values())
        next_check = self.check_every
        t0 = time.monotonic()
        while self.frames_sent < self.n_frames:
            if time.monotonic() > deadline:
                log(f"frames: budget spent after {self.frames_sent} frames")
                self.res["frames_budget_hit"] = True
                break
            channel = self.rng.choices(channels, weights)[0]
            kind, parts = self.fz.next(multipart=channel not in ("local", "reply"))
            item = Item(channel, kind, parts)
            outs = [self.oracle.frame("reply", p) for p in parts] if channel == "reply" else None
            if outs is not None:
                out = Outcome()
                for o in outs:
                    out.add(o)
            else:
                out = self.oracle.predict(channel, parts)
            if out.withheld:
                self.withheld[out.withheld] += 1
                continue
            if out.crash and out.crash not in self.survived_predictions:
                if out.crash in self.known_crashes:
                    self.withheld["known_crash"] += 1
                    continue
                self._alone(item, out, outs)
                next_check = self.frames_sent + self.check_every
                continue
            try:
                self._send_item(item, out, outs)
            except BenchError as exc:
                if not self.rig.gone(2.0):
                    self._finding(LogError("stall", "the agent stopped taking frames", str(exc)),
                                  self.previous + self.pending, "frames", self.frames_sent)
                    raise _Stop(str(exc)) from None
                self._death("frames", self.frames_sent)
                next_check = self.frames_sent + self.check_every
                continue
            if self.frames_sent % 64 == 0:
                self.rig.drain()
            if self.frames_sent >= next_check or self.window_bytes > WINDOW_BYTES:
                self._checkpoint()
                next_check = self.frames_sent + self.check_every
                if self.checks % 50 == 0:
                    rate = self.frames_sent / max(time.monotonic() - t0, 1e-9)
                    log(f"frames: {self.frames_sent} sent ({rate:.0f}/s), RSS {self.rss[-1][3]} MB")
        self._checkpoint()
        self.res["frames_s"] = round(time.monotonic() - t0, 2)

    def _alone(self, item: Item, out: Outcome, outs: list[Outcome] | None) -> None:
        """A frame whose local decode raised: sent alone between two syncs."""
        if not self._checkpoint():
            return
        try:
            self._send_item(item, out, outs)
        except BenchError:
            pass
        if item.channel == "reply":
            self.rig.puppet.wait_idle()
            time.sleep(0.3)  # (not ordered with the sync: give the agent's DEALER its turn)
        status = self.rig.sync(timeout=10.0)
        if status is None and self.rig.gone():
            errors = self.rig.log.scan(final=True)
            self.rig.agent.child.popen.wait(5)
            sig = next((e for e in reversed(errors) if e.kind in ("traceback", "fatal")), None)
            self._finding(sig or LogError("death", f"exit {self.rig.agent.child.popen.returncode}", ""),
                          [item], "frames", self.frames_sent, fatal=True, culprit=[item], predicted=out.crash)
            for e in errors:
                if e is not sig:
                    self._finding(e, [item], "frames", self.frames_sent, culprit=[item])
            self.known_crashes.add(out.crash)
            log(f"predicted crash {out.crash}: the agent died; such frames are withheld from now on")
            self.pending = []  # (the culprit is accounted for as the finding)
            self._end_life(f"exit {self.rig.agent.child.popen.returncode}")
            if len(self.lives) >= MAX_DEATHS:
                raise _Stop(f"the agent died {len(self.lives)} times")
            self._start_life()
            return
        self.survived_predictions.add(out.crash)
        log(f"predicted crash {out.crash}: the agent survived it")
        self._checkpoint()

    # ------------------------------------------------------------------ HTTP

    def _http(self, deadline: float) -> dict[str, Any]:
        rig = self.rig
        host, _, port = rig.rest.rpartition(":")
        address = (host, int(port))
        token = self.key.rest_token()
        hf = HttpFuzzer(self.rng, int(port), token, rig.agent_name, rig.comm, rig.puppet.name)
        guard = RestGuard(token, host, int(port))
        holders = []
        for _ in range(HOLD):
            s = socket.create_connection(address, timeout=5)
            s.sendall(f"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            holders.append(s)
        held_from = time.monotonic()
        refused0 = (rig.query("status") or {}).get("rest", {}).get("refused", {})
        sent, by_kind, answers, refused_answered = 0, Counter(), Counter(), Counter()
        expected_refused, mismatches, examples = Counter(), Counter(), []
        no_answer, no_answer_examples = Counter(), []
        t0 = time.monotonic()
        with ThreadPoolExecutor(HTTP_THREADS, thread_name_prefix="fuzz-http") as pool:
            while sent < self.n_requests:
                if time.monotonic() > deadline:
                    log(f"http: budget spent after {sent} requests")
                    self.res["http_budget_hit"] = True
                    break
                batch = [hf.next() for _ in range(min(HTTP_BATCH, self.n_requests - sent))]
                results = list(pool.map(lambda r: http_send(address, r), batch))
                window = []
                for req, ans in zip(batch, results, strict=True):
                    if not req.data:
                        continue
                    sent += 1
                    by_kind[req.kind] += 1
                    window.append(Item("http", req.kind, [req.data, req.mode.encode(), port.encode()]))
                    exp = dry_run(req.data, guard)  # (what the server makes of it, at the latest
                    if exp.refused:  # when the connection closes: a partial one too)
                        expected_refused[exp.refused] += 1
                    answers[str(ans.status) if ans.status is not None else f"none:{ans.error}"] += 1
                    if ans.status is None and req.mode != "partial" and not exp.silent \
                            and ans.error != "no status line":
                        no_answer[ans.error] += 1
                        if len(no_answer_examples) < 5:
                            no_answer_examples.append({"error": ans.error, "kind": req.kind, "mode": req.mode,
                                                       "request": req.data[:300].decode("latin-1")})
                    if ans.refused:
                        refused_answered[ans.refused] += 1
                    if req.mode != "partial" and ans.status is not None:
                        want = exp.status or ({"host": 421, "origin": 403, "token": 401,
                                               "content_type": 415}.get(exp.refused) if exp.refused else "admitted")
                        got = ans.status if (ans.refused or exp.status or exp.refused) else (
                            "admitted" if ans.status not in (401, 403, 415, 421) else ans.status)
                        if want != got:
                            mismatches[f"{want}->{got}"] += 1
                            if len(examples) < 5:
                                examples.append({"expected": want, "got": got, "kind": req.kind,
                                                 "request": req.data[:300].decode("latin-1")})
                status = rig.query("status")
                alive = status is not None or not rig.gone()
                if status is not None:
                    self.checks += 1
                else:
                    self.check_failures += 1
                if not alive:
                    self._http_death(window, sent)
                    break
                self._errors(rig.log.scan(), window, "http", sent)
                self._sample("http", sent)
        elapsed = time.monotonic() - t0
        refused1 = self._refused_settled(rig) if self.rig is rig else {}
        closed = 0  # (closing the half-sent ones makes the server refuse them: after `refused1`)
        for s in holders:
            s.setblocking(False)
            try:
                if s.recv(1024) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            s.close()
        delta = {r: refused1.get(r, 0) - refused0.get(r, 0) for r in REST_REASONS}
        return {
            "http_sent": sent, "http_s": round(elapsed, 2), "http_per_s": round(sent / max(elapsed, 1e-9)),
            "http_by_kind": {k: by_kind[k] for k in HTTP_KINDS if by_kind[k]},
            "http_answers": dict(sorted(answers.items())),
            "http_defanged": dict(hf.defanged),
            "rest_refused_delta": delta,
            "rest_refused_expected": {r: expected_refused[r] for r in REST_REASONS},
            "rest_refused_answered": {r: refused_answered[r] for r in REST_REASONS},
            "rest_refused_unexplained": {r: delta[r] - expected_refused[r] for r in REST_REASONS
                                         if delta[r] != expected_refused[r]},
            "http_no_answer": dict(no_answer),  # complete requests the server did not answer
            "http_no_answer_examples": no_answer_examples,
            "http_answer_mismatches": dict(mismatches.most_common(10)),
            "http_answer_mismatch_examples": examples,
            "rest_half_sent_connections": {"held": HOLD, "held_s": round(time.monotonic() - held_from, 1),
                                           "closed_by_agent": closed},
        }

    @staticmethod
    def _refused_settled(rig: Rig) -> dict:
        """The REST refusal counters once they stop moving (a request whose connection we
        closed is handled when the server sees the end of it), at most 3 s."""
        last, deadline = None, time.monotonic() + 3
        while True:
            now = ((rig.query("status") if rig.alive() else None) or {}).get("rest", {}).get("refused", {})
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(0.1)

    def _http_death(self, window: list[Item], sent: int) -> None:
        rig = self.rig
        rig.agent.child.popen.wait(5)
        errors = rig.log.scan(final=True)
        for e in errors or [LogError("death", f"exit {rig.agent.child.popen.returncode}", rig.agent.child.tail(30))]:
            self._finding(e, window, "http", sent, fatal=True)
        self._end_life(f"exit {rig.agent.child.popen.returncode}")
        self._start_life()

    # ------------------------------------------------------------------ the end

    def _finale(self) -> dict[str, Any]:
        """The oversized frames (not counted in the RSS figures of the fuzzing)."""
        rig = self.rig
        out: dict[str, Any] = {}
        # one byte over MAX_FRAME (within ZeroMQ's MAXMSGSIZE): refused by size, unread
        item = Item("client", "oversized", [b"\xa1" + bytes(m.MAX_FRAME)])
        outcome = Outcome()
        outcome.drops["oversized"] += 1
        self._send_item(item, outcome, None)
        item.parts = [item.parts[0][:16]]  # (a window keeps no 64 MB)
        # a length over the local socket's limit: the connection is closed, counted `oversized`
        header = (m.MAX_FRAME + 1024 + 1).to_bytes(4, "big")
        rig.local_raw(header)
        local = Outcome()
        local.drops["oversized"] += 1
        self.pending.append(Item("local_raw", "oversized", [header]))
        self.pending_expect.add(local)
        self.frames_sent += 1
        self.by_kind["oversized"] += 1
        self.by_channel["local"] += 1
        # over ZeroMQ's MAXMSGSIZE: the connection is dropped before anything is buffered;
        # the agent never sees it (no counter)
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 5000)
        curve_client(sock, self.key)
        sock.connect(f"tcp://{rig.comm}")
        sock.send(bytes(m.MAX_FRAME + 1024 + 1))
        sock.close()
        out["zmq_over_maxmsgsize_sent"] = 1
        self._checkpoint("finale")
        # a flood: big frames (not CBOR) as fast as ZeroMQ takes them, no sync in between; the
        # agent's ROUTER queues up to its high-water mark in messages, whatever their size
        count, size = self.flood, FLOOD[1]
        before, peak = rig.rss_mb(), 0.0
        junk = Outcome()
        junk.drops["cbor"] += 1
        for i in range(count):
            frame = i.to_bytes(4, "big") + b"\xff" * (size - 4)
            item = Item("member", "flood", [frame])
            self._send_item(item, junk, None)
            item.parts = [frame[:16]]  # (a window keeps no megabytes)
            if i % 16 == 0:
                peak = max(peak, rig.rss_mb() or 0.0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            peak = max(peak, rig.rss_mb() or 0.0)
            time.sleep(0.02)
        self._checkpoint("finale")
        out["flood"] = {"frames": count, "bytes_each": size, "rss_before_mb": before, "rss_peak_mb": peak,
                        "rss_after_mb": rig.rss_mb()}
        out["rss_after_oversized_mb"] = self.rig.rss_mb() if self.rig else None
        return out

    def _settle(self) -> dict | None:
        """Wait until the drop counters stop moving (the reply channel is not synced): the
        same in two syncs 0.2 s apart, at most 10 s."""
        rig = self.rig
        last, deadline = None, time.monotonic() + 10
        while time.monotonic() < deadline:
            rig.puppet.wait_idle()
            status = rig.sync(timeout=10)
            if status is None:
                return None
            now = {k: v for k, v in (status.get("dropped") or {}).items() if k in INPUT_REASONS}
            if now == last:
                return status
            last = now
            time.sleep(0.2)
        return rig.sync()

    def run(self) -> dict[str, Any]:
        res = self.res
        start = time.monotonic()
        log(f"fuzz: seed {self.seed}, {self.n_frames} frames, {self.n_requests} requests, "
            f"run directory {self.run_dir}")
        try:
            self._start_life()
            try:
                self._frames(start + self.budget_s * FRAMES_SHARE)
            except _Stop as stop:
                res["frames_stopped"] = str(stop)
            if self.rig is not None and self.rig.alive():
                log(f"http: {self.n_requests} requests")
                res.update(self._http(start + self.budget_s * HTTP_SHARE))
                self._checkpoint("http")
            if self.rig is not None and self.rig.alive():
                log("finale: oversized frames and a flood")
                res.update(self._finale())
            if self.rig is not None:
                final = self._settle()
                life = self.lives[-1]
                life.expect.add(self.pending_expect)
                life.expect.add(self.rig.puppet.take_sent())
                self.pending_expect, self.pending = Outcome(), []
                res["agent_alive"] = final is not None and self.rig.alive()
                if final is not None:
                    life.status_last = final
                    res["agent_calls_at_end"] = {k: final.get(k) for k in ("queued", "running")}
                res["agent_rss_final_mb"] = self.rig.rss_mb()
                self._errors(self.rig.log.scan(), [], "end", self.frames_sent)
                res["replies"] = dict(sorted(self.rig.replies.items()))
                res["puppet"] = {"sent": self.rig.puppet.sent, "unsent": self.rig.puppet.unsent,
                                 "answered": self.rig.puppet.answered}
                log("stopping the agent (SIGTERM: a graceful leave)")
                t = time.monotonic()
                self._end_life("ok")
                res["agent_stop"] = res["lives"][-1]["stop"]
                res["agent_stop_s"] = round(time.monotonic() - t, 2)
            else:
                res["agent_alive"] = False
        finally:
            if self.rig is not None:
                try:
                    self._errors(self.rig.log.scan(final=True), [], "end", self.frames_sent)
                finally:
                    self._end_life("aborted")
        res["wall_s"] = round(time.monotonic() - start, 1)
        self._account()
        self._triage(time.monotonic() + self.triage_s)
        self._report()
        res["summary"] = self._summary()
        return res

    # ------------------------------------------------------------------ accounting

    def _account(self) -> None:
        res = self.res
        expect, actual, extra = Outcome(), Counter(), Counter()
        for life in self.lives:
            expect.add(life.expect)
            a, b = life.status_start, life.status_last
            for k, v in (b.get("dropped") or {}).items():
                d = v - (a.get("dropped") or {}).get(k, 0)
                if d:
                    (actual if k in INPUT_REASONS else extra)[k] += d
            for k in ("worker_crashes", "done", "failed"):
                extra[k] += (b.get(k) or 0) - (a.get(k) or 0)
            for k in ("forged_leaves", "deaths", "suspicions"):
                extra[f"membership.{k}"] += (b.get("membership", {}).get(k) or 0) - (a.get("membership", {}).get(k) or 0)
        unexplained = _unexplained(expect, actual)
        taken = sum(expect.taken.values())
        res.update({
            "frames_target": self.n_frames, "frames_sent": self.frames_sent,
            "frames_per_s": round(self.frames_sent / max(res.get("frames_s", 0), 1e-9)),
            "frames_by_kind": {k: self.by_kind[k] for k in (*KINDS, "oversized") if self.by_kind[k]},
            "frames_by_channel": dict(self.by_channel),
            "frames_withheld": dict(self.withheld),
            "dropped_delta": dict(actual), "dropped_expected": dict(expect.drops),
            "dropped_maybe": {k: v for k, v in expect.maybe.items() if v},
            "taken_expected": dict(expect.taken.most_common()),
            "other_counters_delta": {k: v for k, v in extra.items() if v},
            "unexplained": unexplained,
            "unexplained_total": sum(abs(v) for v in unexplained.values()),
            "lost_in_crashes": sum(life.lost for life in self.lives),
            "taken_expected_total": taken,
            "status_checks": self.checks, "status_failures": self.check_failures,
            "agent_deaths": sum(1 for life in self.lives if life.died and life.died != "aborted"),
        })
        lives = []  # RSS per life (each life is another process), over the fuzzing phases
        for life in self.lives:
            mbs = [mb for n, phase, _, mb in self.rss if n == life.number and phase in ("start", "frames", "http")]
            if not mbs:
                continue
            tail = mbs[len(mbs) // 10:] or mbs  # (after the warm-up)
            third = max(1, len(tail) // 3)
            early, late = sorted(tail[:third])[third // 2], sorted(tail[-third:])[third // 2]
            lives.append({"life": life.number, "first": mbs[0], "max": max(mbs), "last": mbs[-1],
                          "early_median": early, "late_median": late, "samples": len(mbs),
                          "growth_flag": len(mbs) >= 6 and late - early > RSS_GROWTH_MB and late > 1.1 * early})
        longest = max(lives, key=lambda x: x["samples"], default=None)
        res["rss_mb"] = longest  # (the longest life's)
        res["rss_by_life"] = lives
        res["rss_growth_flag"] = any(x["growth_flag"] for x in lives)
        res["rss_max_mb"] = max((mb for *_, mb in self.rss), default=None)
        step = max(1, len(self.rss) // 40)
        res["rss_samples"] = [list(x) for x in self.rss[::step]]
        res["agent_threads_max"] = self.threads_max

    # ------------------------------------------------------------------ findings

    def _send_items(self, rig: Rig, items: list[Item], quick: bool = False) -> None:
        host, _, port = rig.rest.rpartition(":")
        for item in items:
            if item.channel == "http":  # (Host and Origin name the REST port it was sent to)
                data = item.parts[0].replace(b":" + item.parts[2], b":" + port.encode())
                http_send((host, int(port)), Request(item.kind, data, item.parts[1].decode()),
                          timeout=1.0 if quick else 2.0)
            elif item.channel == "local_raw":
                rig.local_raw(item.parts[0])
            else:
                rig.send(item.channel, item.parts)

    def _scan(self, items: list[Item], signatures: set[str], member_id: str | None,
              deadline: float) -> dict[str, int]:
        """Replay `items` one at a time on a fresh agent (another if it dies), each followed
        by a sync and a look at its log: the index of the item after which each of
        `signatures` first showed."""
        found: dict[str, int] = {}
        rig, i = None, 0
        try:
            while i < len(items) and time.monotonic() < deadline and set(found) != signatures:
                if rig is None:
                    self.attempts += 1
                    rig = Rig(self.run_dir, self.key, life=f"triage-{self.attempts}", member_id=member_id)
                    rig.join()
                    threads = rig.threads() or 0
                item = items[i]
                try:
                    self._send_items(rig, [item], quick=True)
                except BenchError:
                    pass
                if item.channel == "reply":
                    rig.puppet.wait_idle()
                    time.sleep(0.02)
                if item.channel == "http":  # (a request we hung up on is handled after we left)
                    rig.wait_threads(threads)
                elif rig.sync(timeout=5) is None:
                    rig.gone(5)
                dead = not rig.alive()
                seen = {finding_key(e) for e in rig.log.scan(final=dead)}
                if dead:
                    seen.add(f"exit {rig.agent.child.popen.returncode}")
                for sig in seen & signatures:
                    found.setdefault(sig, i)
                if dead:
                    rig.close(graceful=False)
                    rig = None
                i += 1
        finally:
            if rig is not None:
                rig.close(graceful=False)
        return found

    def _reproduce(self, items: list[Item], signature: str, n: int, member_id: str | None = None) -> bool:
        """Do `items`, sent in a row, bring the error `signature` back on a fresh agent?"""
        rig = Rig(self.run_dir, self.key, life=f"triage-{n}", member_id=member_id)
        try:
            rig.join()
            threads = rig.threads() or 0
            try:
                self._send_items(rig, items)
            except BenchError:
                pass
            if any(i.channel == "http" for i in items):
                rig.wait_threads(threads)
            if any(i.channel == "reply" for i in items):
                rig.puppet.wait_idle()
                time.sleep(0.3)
            rig.sync(timeout=5)
            time.sleep(0.05)
            found = {finding_key(e) for e in rig.log.scan()}
            if not rig.alive() or rig.gone(0.5):
                found |= {finding_key(e) for e in rig.log.scan(final=True)}
                found.add(f"exit {rig.agent.child.popen.returncode}")
            return signature in found
        finally:
            rig.close(graceful=False)

    def _triage(self, deadline: float) -> None:
        """Reduce each finding found in a window (not sent alone) to the items that bring its
        error back on a fresh agent, within `deadline`: the window is replayed one item at a
        time (one pass per window for all its findings); the item after which an error
        showed, alone, if that brings it back; else the window up to it, reduced by ddmin."""
        self.attempts = 0
        todo = [f for f in self.findings.values()
                if f.culprit is None and f.kind != "stall" and f.window]
        windows: dict[tuple, list[Finding]] = {}
        for f in todo:
            windows.setdefault((id(f.window[0]), len(f.window), f.member_id), []).append(f)
        for group in sorted(windows.values(), key=lambda g: not any(f.fatal for f in g)):
            if time.monotonic() > deadline:
                break
            window = group[0].window
            log(f"triage: replaying {len(window)} items one at a time for "
                f"{', '.join(f.signature for f in group)}")
            found = self._scan(window, {f.signature for f in group}, group[0].member_id, deadline)
            for f in group:
                at = found.get(f.signature)
                f.reproduced = at is not None
                if at is None:
                    continue
                items = window[: at + 1]
                if len(items) > 1 and time.monotonic() < deadline and \
                        self._attempt(items[-1:], f.signature, f.member_id):
                    items = items[-1:]
                f.culprit = self._ddmin(items, f.signature, f.member_id, deadline)
                log(f"triage: {f.signature} comes back with {len(f.culprit)} item(s)")
        self.res["triage_attempts"] = self.attempts

    def _ddmin(self, items: list[Item], signature: str, member_id: str | None, deadline: float) -> list[Item]:
        n = 2
        while len(items) > 1 and time.monotonic() < deadline:
            size = -(-len(items) // n)
            chunks = [items[i: i + size] for i in range(0, len(items), size)]
            smaller = next((c for c in chunks if time.monotonic() < deadline
                            and self._attempt(c, signature, member_id)), None)
            if smaller is not None:
                items, n = smaller, 2
                continue
            if n > 2:
                rest = next((r for r in ([x for j, c in enumerate(chunks) if j != i for x in c]
                                         for i in range(len(chunks)))
                             if time.monotonic() < deadline and self._attempt(r, signature, member_id)), None)
                if rest is not None:
                    items, n = rest, max(n - 1, 2)
                    continue
            if n >= len(items):
                break
            n = min(len(items), n * 2)
        return items

    def _attempt(self, items: list[Item], signature: str, member_id: str | None) -> bool:
        self.attempts += 1
        return self._reproduce(items, signature, self.attempts, member_id)

    def _report(self) -> None:
        out = []
        base = self.run_dir / "findings"
        for i, f in enumerate(sorted(self.findings.values(), key=lambda f: (not f.fatal, f.at)), 1):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", f.signature)[:60].strip("-")
            d = base / f"{i:02d}-{slug}"
            d.mkdir(parents=True, exist_ok=True)
            items = f.culprit or f.window
            (d / "items.cbor").write_bytes(cbor2.dumps([it.dump() for it in items]))
            (d / "error.txt").write_text(f.text)
            f.directory = str(d)
            first = items[0] if items else None
            doc = {"signature": f.signature, "kind": f.kind, "fatal": f.fatal, "count": f.count,
                   "locations": dict(f.locations.most_common()),
                   "phase": f.phase, "at": f.at, "predicted": f.predicted, "reproduced": f.reproduced,
                   "items": len(items), "reduced": f.culprit is not None, "member_id": f.member_id,
                   "channel": first.channel if first else None, "frame_kind": first.kind if first else None,
                   "first_item_hex": first.parts[0][:512].hex() if first and first.parts else None,
                   "replay": f"python bench/run.py fuzz --replay {d}"}
            (d / "finding.json").write_text(__import__("json").dumps(doc, indent=1))
            out.append({k: doc[k] for k in ("signature", "kind", "fatal", "count", "phase", "items",
                                             "reduced", "channel", "frame_kind")}
                       | {"where": f.locations.most_common(1)[0][0] if f.locations else f.signature,
                          "dir": str(d)})
        self.res["errors"] = out
        self.res["distinct_errors"] = len(out)

    def _summary(self) -> list[str]:
        r = self.res
        lines = [f"fuzz (seed {self.seed}{', quick' if self.quick else ''}): {r.get('frames_sent')} frames "
                 f"({r.get('frames_per_s')}/s), {r.get('http_sent', 0)} HTTP requests ({r.get('http_per_s')}/s)",
                 f"  agent alive at the end: {r.get('agent_alive')}; deaths {r.get('agent_deaths')}; "
                 f"status checks {r.get('status_checks')} (failed {r.get('status_failures')})",
                 f"  RSS (MB, the longest life): {r.get('rss_mb')}; growth flagged: {r.get('rss_growth_flag')}",
                 f"  dropped (delta): {r.get('dropped_delta')}",
                 f"  unexplained: {r.get('unexplained')}; REST refused (delta): {r.get('rest_refused_delta')}",
                 f"  distinct errors: {r.get('distinct_errors')}"]
        for e in r.get("errors", []):
            lines.append(f"    - {e['signature']} ({e['kind']}{', fatal' if e['fatal'] else ''}, x{e['count']}, "
                         f"at {e['where']}): {e['dir']}")
        return lines


def _dropped(life: Life) -> Counter:
    """The deltas of the input reasons of the agent's `dropped` over one life."""
    a, b = life.status_start.get("dropped") or {}, life.status_last.get("dropped") or {}
    return Counter({k: b.get(k, 0) - a.get(k, 0) for k in INPUT_REASONS if b.get(k, 0) != a.get(k, 0)})


def _unexplained(expect: Outcome, actual: Counter) -> dict[str, int]:
    """Per reason, how far the agent's count is outside [certain, certain + maybe]."""
    out = {}
    for reason in INPUT_REASONS:
        low, high = expect.drops[reason], expect.drops[reason] + expect.maybe[reason]
        got = actual[reason]
        if got < low or got > high:
            out[reason] = got - (low if got < low else high)
    return out


class _Stop(Exception):
    """Stop sending frames (the agent stalled, or died too often)."""


def _replay(path: Path) -> dict[str, Any]:
    """Send a saved finding's items to a fresh agent; did its error come back?"""
    doc = __import__("json").loads((path / "finding.json").read_text())
    items = [Item(c, k, list(p)) for c, k, p in cbor2.loads((path / "items.cbor").read_bytes())]
    run_dir = Path(tempfile.mkdtemp(prefix="mesh-fuzz-replay-"))
    fuzz = Fuzz(True, 0, 0, 0, 1, 60.0, 0.0, run_dir)
    reproduced = fuzz._reproduce(items, doc["signature"], 1, doc.get("member_id"))
    return {"scenario": "fuzz", "replay": str(path), "signature": doc["signature"], "items": len(items),
            "reproduced": reproduced, "run_dir": str(run_dir)}
