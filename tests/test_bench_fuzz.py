"""The `fuzz` scenario's own parts, without an agent: the frame generator, the oracle that says
what the agent must do with each frame, what is withheld, the log scanner, the HTTP side."""

from __future__ import annotations

import pickle
import random
import sys
from pathlib import Path

import cbor2
import cloudpickle
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    from bench import fuzz_frames, fuzz_http, fuzz_oracle
    from bench.fuzz_rig import LogScanner
finally:
    sys.path.remove(str(ROOT))

from mesh.wire import messages as m  # noqa: E402

IDS = fuzz_frames.Ids("ab" * 16, "fuzz-member", "127.0.0.1:5555", "cd" * 16, "target", "127.0.0.1:6666")


def test_a_seed_gives_the_same_frames_and_every_kind_makes_some():
    a = fuzz_frames.FrameFuzzer(IDS, random.Random(7))
    b = fuzz_frames.FrameFuzzer(IDS, random.Random(7))
    assert [a.next() for _ in range(300)] == [b.next() for _ in range(300)]
    assert {type(x) for x in a.messages} == set(m.MESSAGES.values())
    for kind in fuzz_frames.KINDS:
        parts = a.make(kind)
        assert parts and all(isinstance(p, bytes) for p in parts), kind


def test_the_oracle_predicts_the_codecs_reason_and_the_agents_routing():
    o = fuzz_oracle.Oracle(IDS.member)
    assert o.predict("client", [b"\xff"]).drops == {"cbor": 1}
    assert o.predict("client", [cbor2.dumps({"v": 1, "t": "ping"})]).drops == {"version": 1}
    assert o.predict("client", [b"x", b"y"]).drops == {"frames": 1}  # (the ROUTER wants 2 parts)
    assert o.predict("tagged", [m.encode(m.Query(1, "status"))]).drops == {"identity": 1}
    result = m.encode(m.Result("c1", True, b"", "x"))
    assert o.predict("client", [result]).drops == {"unexpected": 1}  # (only a member's)
    member = o.predict("member", [result])
    assert member.taken == {"result": 1} and member.maybe == {"unexpected": 1} and not member.drops
    batch = m.encode(m.Batch([b"\xff", m.encode(m.Query(1, "status")), m.encode(m.Batch([]))]))
    out = o.predict("local", [batch])
    assert out.drops == {"cbor": 1, "type": 1} and out.taken == {"batch": 1, "query": 1}
    pong = m.encode(m.Pong(1, m.NodeInfo(IDS.member, "x", "a:1", 1), m.Load(1, 1, 0, 0)))
    assert o.frame("reply", pong).taken == {"pong": 1}
    assert o.predict("client", [pong]).drops == {"unexpected": 1}
    holds, held = m.encode(m.Holds(["c1"])), m.encode(m.Held(["c1"], ["c2"]))  # (leases)
    assert o.predict("client", [holds]).taken == {"holds": 1}  # answered, whoever asks
    assert o.predict("client", [held]).drops == {"unexpected": 1}  # (only a member's)
    assert o.predict("member", [held]).taken == {"held": 1} and o.frame("reply", held).taken == {"held": 1}


def test_a_local_decode_that_raises_anything_else_predicts_a_crash(monkeypatch):
    def broken(frame, max_size=m.MAX_FRAME):
        raise KeyError("a bug")

    monkeypatch.setattr(fuzz_oracle.m, "decode", broken)
    out = fuzz_oracle.Oracle(IDS.member).predict("client", [b"\xa0"])
    assert out.crash == f"KeyError@{Path(__file__).name}:{broken.__code__.co_firstlineno + 1}"
    assert not out.drops and not out.taken


def test_what_would_harm_the_machine_is_withheld():
    o = fuzz_oracle.Oracle(IDS.member)
    assert fuzz_oracle.safe_function("operator:add") and fuzz_oracle.safe_function("no_such_mod_fz:f")
    assert fuzz_oracle.safe_function("x") and fuzz_oracle.safe_function(":f")
    assert not fuzz_oracle.safe_function("os:system") and not fuzz_oracle.safe_function("subprocess:run")
    assert not fuzz_oracle.safe_function("operator:mul")  # ("x" * 10**10)
    assert fuzz_oracle.pickle_safe(pickle.dumps(((1, 2), {})))
    assert fuzz_oracle.pickle_safe(cloudpickle.dumps((abs, (-3,), {})))
    assert not fuzz_oracle.pickle_safe(cloudpickle.dumps((print, ("x",), {})))
    assert not fuzz_oracle.pickle_safe(b"cos\nsystem\n(S'true'\ntR.")
    assert o.withhold("client", m.Call("c", "os:system", b"")) == "call_module"
    assert o.withhold("client", m.Resources(1, "add", 4, "")) == "resources"
    assert o.withhold("client", m.Resources(1, "add", 0, "10.0.0.1:46102")) == "resources"
    assert o.withhold("client", m.Resources(1, "reduce", 5000, "")) is None  # (refused by the agent)
    assert o.withhold("member", m.Leave(IDS.member, 2)) == "member_leave"
    assert o.withhold("client", m.Leave(IDS.member, 2)) is None  # (forged: counted, not acted on)


TRACEBACK = """\
2026-01-01 10:00:00,000 INFO mesh.agent.agent: something
----------------------------------------
Exception occurred during processing of request from ('127.0.0.1', 5000)
Traceback (most recent call last):
  File "/usr/lib/python3.11/socketserver.py", line 691, in process_request_thread
2026-01-01 10:00:00,001 WARNING mesh.faces.rest: REST refused GET / from 127.0.0.1: an interleaved line
  File "/x/mesh/faces/rest.py", line 226, in _read_json
    return json.loads(raw), None
RecursionError: maximum recursion depth exceeded
----------------------------------------
--- Logging error ---
Traceback (most recent call last):
  File "/usr/lib/python3.11/logging/__init__.py", line 377, in getMessage
    msg = msg % self.args
ValueError: Exceeds the limit (4300 digits) for integer string conversion
Call stack:
  File "/x/mesh/agent/actions.py", line 169, in _member_changed
    log.info("peer %s (%s): %s -> %s (incarnation %d)", act.name)
Message: 'peer %s'
Traceback (most recent call last):
  File "/x/mesh/faces/rest.py", line 133, in do_PUT
    handler(body)
mesh.faces.compss.requests.CompssRequestError: malformed XML

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/x/mesh/faces/rest.py", line 250, in _send
    self.wfile.write(data)
BrokenPipeError: [Errno 32] Broken pipe
2026-01-01 10:00:01,000 ERROR mesh.agent.agent: something 123 went wrong at 0xdeadbeef
"""


def test_the_log_scanner_finds_each_error_once_with_its_place(tmp_path):
    path = tmp_path / "agent.log"
    scanner = LogScanner(path)
    path.write_text(TRACEBACK[:200])  # (read as it grows: a block split across reads)
    first = scanner.scan()
    path.write_text(TRACEBACK)
    errors = first + scanner.scan(final=True)
    assert [(e.kind, e.signature) for e in errors] == [
        ("rest_thread", "RecursionError@mesh/faces/rest.py:226"),
        ("logging_error", "ValueError@mesh/agent/actions.py:169"),
        ("rest_thread", "BrokenPipeError@mesh/faces/rest.py:250"),  # (its cause is in its text)
        ("error_line", "ERROR mesh.agent.agent: something N went wrong at H"),
    ]
    assert "CompssRequestError" in errors[2].text


@pytest.mark.parametrize("headers, want", [
    ((("Host", "evil.example"),), "host"),
    ((("Host", "127.0.0.1:5000"), ("Origin", "http://evil.example")), "origin"),
    ((("Host", "127.0.0.1:5000"),), "token"),
    ((("Host", "127.0.0.1:5000"), ("Authorization", "Bearer " + "ab" * 20)), "content_type"),
    ((("Host", "127.0.0.1:5000"), ("Authorization", "Bearer " + "ab" * 20),
      ("Content-Type", "application/json")), None),
])
def test_dry_run_parses_a_request_as_the_agents_server_does(headers, want):
    guard = fuzz_http.RestGuard("ab" * 20, "127.0.0.1", 5000)
    hf = fuzz_http.HttpFuzzer(random.Random(1), 5000, "ab" * 20, "t", "127.0.0.1:1", "m")
    data = hf.build("POST", "/v1/calls", list(headers), b'{"function": "operator:add"}')
    assert fuzz_http.dry_run(data, guard).refused == want
    assert fuzz_http.complete(data) and not fuzz_http.complete(data[:-3])
    assert fuzz_http.dry_run(b"GET / HTTP/1.1 x y\r\n\r\n", guard).status == 400


def test_requests_that_would_make_the_agent_leave_or_run_code_go_with_a_wrong_token():
    hf = fuzz_http.HttpFuzzer(random.Random(3), 5000, "ab" * 20, "t", "127.0.0.1:1", "m")
    good = [("Host", "127.0.0.1:5000"), ("Authorization", "Bearer " + "ab" * 20)]
    for data in (hf.build("DELETE", "/COMPSs", good),
                 hf.build("POST", "/v1/calls", good + [("Content-Type", "application/json")],
                          b'{"function": "os:system", "args": ["true"]}')):
        req = fuzz_http.Request("x", data)
        hf._defang(req)
        assert req.defanged in ("leave", "function")
        assert fuzz_http.dry_run(req.data, hf.guard).refused == "token"
