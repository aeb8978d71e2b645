"""Who may drive REST (``mesh/faces/rest_auth.py``): the checks alone, the token file, and real
agents refusing what a web page, a rebound name or another local user would send."""

from __future__ import annotations

import http.client
import io
import json
import os
import stat
import textwrap

import pytest

from mesh import keys
from mesh.faces import rest_auth
from mesh.faces.rest_auth import RestGuard, TokenFileError
from tests.conftest import run_cli, wait_for

TOKEN = "ab" * 20
PORT = 46101


def headers(*pairs: tuple[str, str]) -> http.client.HTTPMessage:
    raw = "".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n"
    return http.client.parse_headers(io.BytesIO(raw.encode("latin-1")))


GOOD = (("Host", f"127.0.0.1:{PORT}"), ("Authorization", f"Bearer {TOKEN}"),
        ("Content-Type", "application/json"), ("Content-Length", "2"))


def check(guard: RestGuard, method: str, path: str, *pairs, now: float = 0.0):
    refusal = guard.check(method, path, headers(*pairs), now)
    return None if refusal is None else refusal.status


def without(name: str, pairs=GOOD):
    return tuple(p for p in pairs if p[0] != name)


# ---------------------------------------------------------------------------- the checks alone


def test_a_good_request_passes_and_each_fault_alone_is_refused_with_its_status():
    guard = RestGuard(TOKEN, "127.0.0.1", PORT)
    assert check(guard, "POST", "/v1/calls", *GOOD) is None
    assert check(guard, "POST", "/v1/calls", *without("Authorization")) == 401
    assert check(guard, "POST", "/v1/calls", *without("Authorization"),
                 ("Authorization", "Bearer " + "cd" * 20)) == 401
    assert check(guard, "POST", "/v1/calls", *without("Authorization"), ("Authorization", TOKEN)) == 401
    assert check(guard, "POST", "/v1/calls", *without("Host"), ("Host", "evil.example")) == 421
    assert check(guard, "POST", "/v1/calls", *without("Host")) == 421
    assert check(guard, "POST", "/v1/calls", *GOOD, ("Origin", "http://evil.example")) == 403
    assert check(guard, "POST", "/v1/calls", *without("Content-Type"), ("Content-Type", "text/plain")) == 415
    assert check(guard, "POST", "/v1/calls", *without("Content-Type")) == 415
    assert guard.status() == {"open": False, "refused": {"host": 2, "origin": 1, "token": 3,
                                                          "content_type": 2, "busy": 0}}
    busy = guard.busy(64, 0.0)  # (the server's bound: counted and logged as the others)
    assert (busy.status, busy.reason, busy.headers, busy.log, busy.count) == (503, "busy", (("Retry-After", "1"),),
                                                                          True, 1)
    assert guard.status()["refused"]["busy"] == 1


def test_host_names_this_agent_only():
    guard = RestGuard(TOKEN, "192.168.1.20", PORT)
    rest = without("Host")
    for host in (f"192.168.1.20:{PORT}", f"localhost:{PORT}", f"LOCALHOST:{PORT}", f"127.0.0.1:{PORT}",
                 f"[::1]:{PORT}"):
        assert check(guard, "GET", "/v1/status", *rest, ("Host", host)) is None, host
    for host in ("evil.example", f"evil.example:{PORT}", f"127.0.0.1:{PORT + 1}", "127.0.0.1",
                 f"192.168.1.21:{PORT}", f"pi.local:{PORT}", f"127.0.0.1:{PORT}/x", "",
                 f"::1:{PORT}", f"127.0.0.1:{PORT}@evil"):
        assert check(guard, "GET", "/v1/status", *rest, ("Host", host)) == 421, host
    # two Host headers: which one would a proxy have used? Neither.
    assert check(guard, "GET", "/v1/status", *rest, ("Host", f"127.0.0.1:{PORT}"),
                 ("Host", "evil.example")) == 421
    assert check(RestGuard(TOKEN, "127.0.0.1", 80), "GET", "/v1/status", *rest, ("Host", "localhost")) is None


def test_origin_must_be_the_requests_own():
    guard = RestGuard(TOKEN, "127.0.0.1", PORT)
    assert check(guard, "POST", "/v1/calls", *GOOD, ("Origin", f"http://127.0.0.1:{PORT}")) is None
    for origin in ("http://evil.example", "null", f"https://127.0.0.1:{PORT}", f"http://localhost:{PORT}",
                   f"http://127.0.0.1:{PORT + 1}", f"http://127.0.0.1:{PORT}/", ""):
        assert check(guard, "POST", "/v1/calls", *GOOD, ("Origin", origin)) == 403, origin
    assert check(guard, "POST", "/v1/calls", *GOOD, ("Origin", f"http://127.0.0.1:{PORT}"),
                 ("Origin", "http://evil.example")) == 403


def test_token_scheme_is_case_insensitive_and_reads_need_it_too():
    guard = RestGuard(TOKEN, "127.0.0.1", PORT)
    host = ("Host", f"127.0.0.1:{PORT}")
    for value in (f"bearer {TOKEN}", f"BEARER   {TOKEN} "):
        assert check(guard, "GET", "/v1/status", host, ("Authorization", value)) is None, value
    for path in ("/v1/status", "/v1/peers", "/v1/tree", "/metrics", "/v1/calls/x", "/COMPSs/test", ""):
        assert check(guard, "GET", path, host) == 401, path
    refusal = guard.check("GET", "/v1/status", headers(host), 0.0)
    assert dict(refusal.headers)["WWW-Authenticate"] == 'Bearer realm="mesh"'
    refusal = guard.check("GET", "/v1/status", headers(host, ("Authorization", "Bearer x")), 0.0)
    assert dict(refusal.headers)["WWW-Authenticate"] == 'Bearer realm="mesh", error="invalid_token"'
    assert check(guard, "GET", "/v1/status", host, ("Authorization", f"Bearer {TOKEN}"),
                 ("Authorization", f"Bearer {TOKEN}")) == 401


def test_content_types_per_endpoint_with_parameters():
    guard = RestGuard(TOKEN, "127.0.0.1", PORT)
    base = without("Content-Type")
    assert check(guard, "POST", "/v1/calls", *base, ("Content-Type", "Application/JSON; charset=utf-8")) is None
    for ctype in ("application/xml", "text/plain", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/jsonx", "text/json"):
        assert check(guard, "POST", "/v1/calls", *base, ("Content-Type", ctype)) == 415, ctype
    assert check(guard, "PUT", "/COMPSs/startApplication", *base, ("content-type", "application/xml")) is None
    assert check(guard, "PUT", "/COMPSs/startApplication", *base, ("Content-Type", "application/json")) == 415
    assert check(guard, "PUT", "/COMPSs/addResources", *base, ("Content-Type", "text/xml")) == 415
    # two types: refused; a body-less DELETE has none to check, one with a body does
    assert check(guard, "POST", "/v1/calls", *base, ("Content-Type", "application/json"),
                 ("Content-Type", "text/plain")) == 415
    nobody = without("Content-Length", base)
    assert check(guard, "DELETE", "/COMPSs", *nobody) is None
    assert check(guard, "DELETE", "/COMPSs", *nobody, ("Content-Length", "0")) is None
    assert check(guard, "DELETE", "/COMPSs", *nobody, ("Content-Length", "5")) == 415
    assert check(guard, "DELETE", "/COMPSs", *nobody, ("Transfer-Encoding", "chunked")) == 415
    assert check(guard, "GET", "/v1/status", *nobody) is None


def test_rest_open_lifts_the_token_for_compss_endpoints_only():
    guard = RestGuard(TOKEN, "127.0.0.1", PORT, rest_open=True)
    curl = (("Host", f"127.0.0.1:{PORT}"), ("User-Agent", "curl/7.88.1"), ("Accept", "*/*"),
            ("content-type", "application/xml"), ("Content-Length", "4"))
    for path in ("/COMPSs/startApplication", "/COMPSs/addResources", "/COMPSs/removeResources",
                 "/COMPSs/lostNode"):
        assert check(guard, "PUT", path, *curl) is None, path
    assert check(guard, "GET", "/COMPSs/test", *curl[:3]) is None
    assert check(guard, "DELETE", "/COMPSs", *curl[:3]) is None
    # never the rest, never the other checks
    assert check(guard, "POST", "/v1/calls", *without("content-type", curl),
                 ("Content-Type", "application/json")) == 401
    assert check(guard, "GET", "/v1/status", *curl[:3]) == 401
    for path in ("/COMPSsX", "/v1/COMPSs/test", "//COMPSs/test"):
        assert check(guard, "GET", path, *curl[:3]) == 401, path
    assert check(guard, "PUT", "/COMPSs/startApplication", *without("Host", curl), ("Host", "evil.example")) == 421
    assert check(guard, "PUT", "/COMPSs/startApplication", *curl, ("Origin", "http://evil.example")) == 403
    assert check(guard, "PUT", "/COMPSs/startApplication", *without("content-type", curl),
                 ("Content-Type", "text/plain")) == 415
    assert guard.status()["open"] is True


def test_refusals_are_logged_once_per_reason_per_minute():
    guard = RestGuard(TOKEN, "127.0.0.1", PORT)
    bad = without("Authorization")
    flags = [guard.check("POST", "/v1/calls", headers(*bad), t).log for t in (0.0, 1.0, 59.0, 60.5, 61.0)]
    assert flags == [True, False, False, True, False]
    assert guard.check("POST", "/v1/calls", headers(("Host", "x")), 61.0).log  # another reason: its own
    assert guard.check("POST", "/v1/calls", headers(*bad), 62.0).count == 6


# ---------------------------------------------------------------------------- the token file


def test_token_file_is_private_and_untrusted_otherwise(tmp_path):
    env = {"MESH_RUNTIME_DIR": str(tmp_path / "run")}
    address = "127.0.0.1:46102"
    with pytest.raises(TokenFileError, match="not a directory of this user"):
        rest_auth.read_token(address, env)
    path = rest_auth.write_token(address, TOKEN, env)
    assert path == rest_auth.token_path("localhost:46102", env)  # both sides compute it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert rest_auth.read_token(address, env) == TOKEN
    with pytest.raises(TokenFileError, match="no token file"):
        rest_auth.read_token("127.0.0.1:46103", env)
    os.chmod(path, 0o644)
    with pytest.raises(TokenFileError, match="mode 0600"):
        rest_auth.read_token(address, env)
    os.chmod(path, 0o600)
    os.chmod(os.path.dirname(path), 0o755)
    with pytest.raises(TokenFileError, match="not a directory of this user"):
        rest_auth.read_token(address, env)
    with pytest.raises(TokenFileError, match="not a directory of this user"):
        rest_auth.write_token(address, TOKEN, env)
    os.chmod(os.path.dirname(path), 0o700)
    with open(path, "w") as f:
        f.write("not a token\n")
    with pytest.raises(TokenFileError, match="does not hold a token"):
        rest_auth.read_token(address, env)
    rest_auth.remove_token(path)
    assert not os.path.exists(path)


# ---------------------------------------------------------------------------- real agents


def send(rest: str, method: str, path: str, body: bytes = b"", pairs=()):
    """One request with exactly these headers (Host included: none is added)."""
    host, _, port = rest.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in pairs:
            conn.putheader(name, value)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def cors_headers(answer) -> list[str]:
    return [name for name, _ in answer[1] if name.lower().startswith("access-control-")]


CANARY = textwrap.dedent("""
    def touch(path):
        with open(path, "x") as f:
            f.write("ran")
        return path
""")


@pytest.mark.agents
@pytest.mark.timeout(90)
def test_a_web_page_cannot_run_code_on_a_keyless_loopback_agent(agents, tmp_path):
    """The issue's test: a cross-origin text/plain POST with a foreign Origin and Host that
    would run a canary is refused, and so is each fault alone; the canary never runs (a
    later legitimate call completes first). With the token, Host and type it runs."""
    (tmp_path / "mesh_canary_mod.py").write_text(CANARY)
    nokey = {"MESH_KEY_FILE": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}  # a new user: no key
    pythonpath = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(tmp_path)]))
    a = agents.start("web0", "--rest-port", "0", env=dict(nokey, PYTHONPATH=pythonpath))
    rest = a.state["rest"]
    assert rest.startswith("127.0.0.1:")
    res = run_cli("token", "--agent", a.comm, env=nokey)
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()

    canary = str(tmp_path / "canary")
    body = json.dumps({"function": "mesh_canary_mod:touch", "args": [canary]}).encode()
    own = [("Host", rest), ("Origin", f"http://{rest}"), ("Authorization", f"Bearer {token}"),
           ("Content-Type", "application/json; charset=utf-8")]

    def but(name, value=None):
        return [p for p in own if p[0] != name] + ([(name, value)] if value is not None else [])

    answers = []
    browser = [("Host", "evil.example"), ("Origin", "http://evil.example"), ("Content-Type", "text/plain")]
    for pairs, status in ((browser, 421),
                          (but("Authorization"), 401),
                          (but("Authorization", "Bearer " + "0" * 40), 401),
                          (but("Host", "evil.example"), 421),
                          (but("Host", f"{rest.split(':')[0]}:1"), 421),
                          (but("Content-Type", "text/plain"), 415),
                          (but("Origin", "http://evil.example"), 403)):
        answer = send(rest, "POST", "/v1/calls", body, pairs)
        assert answer[0] == status, (pairs, answer)
        assert "error" in json.loads(answer[2])
        answers.append(answer)
    assert dict(answers[1][1])["WWW-Authenticate"].startswith("Bearer")
    # a preflight gets nothing a browser would take as permission
    preflight = [("Host", rest), ("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST"),
                 ("Access-Control-Request-Headers", "authorization, content-type")]
    answers.append(send(rest, "OPTIONS", "/v1/calls", pairs=preflight))
    assert answers[-1][0] == 403
    answers.append(send(rest, "OPTIONS", "/v1/calls", pairs=[("Host", rest), ("Authorization", f"Bearer {token}")]))
    assert answers[-1][0] == 204
    answers.append(send(rest, "GET", "/v1/status", pairs=[("Host", rest)]))  # reads need the token too
    assert answers[-1][0] == 401

    # a later legitimate call completes: the agent saw everything sent before it
    def run(function, args, pairs=own):
        answer = send(rest, "POST", "/v1/calls", json.dumps({"function": function, "args": args}).encode(),
                      pairs)
        answers.append(answer)
        assert answer[0] == 201, answer
        call_id = json.loads(answer[2])["id"]

        def finished():
            answer = send(rest, "GET", f"/v1/calls/{call_id}", pairs=own[:3])
            answers.append(answer)
            doc = json.loads(answer[2])
            return doc if doc["state"] in ("done", "failed") else None

        return wait_for(finished, 20, f"{function} to finish")

    assert run("operator:add", [2, 3])["result"] == 5
    assert not os.path.exists(canary)
    status = json.loads(send(rest, "GET", "/v1/status", pairs=own[:3])[2])
    assert status["done"] == 1 and status["failed"] == 0
    assert status["rest"]["refused"] == {"host": 3, "origin": 2, "token": 3, "content_type": 1, "busy": 0}
    assert status["rest"]["open"] is False

    # the same request, with the token, the agent's Host and JSON, runs
    assert run("mesh_canary_mod:touch", [canary], own)["state"] == "done"
    assert open(canary).read() == "ran"
    assert run("mesh_canary_mod:touch", [str(tmp_path / "c2")],
               [("Host", f"localhost:{rest.split(':')[1]}"), ("Authorization", f"Bearer {token}"),
                ("Content-Type", "application/json")])["state"] == "done"
    assert all(not cors_headers(answer) for answer in answers)
    assert "REST refused POST /v1/calls" in a.log()
    shown = run_cli("status", "--agent", a.comm, env=nokey).stdout
    assert f"http://{rest}, bearer token (refused: content_type 1, host 3, origin 2, token 3)" in shown
    # the token file goes with the agent
    path = status["rest"]["token_file"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert a.stop() == 0
    assert not os.path.exists(path)
    res = run_cli("token", "--agent", a.comm, env=nokey)
    assert res.returncode == 3 and "no token file" in res.stderr and "no mesh key" in res.stderr
    assert res.stdout == ""


@pytest.mark.agents
@pytest.mark.timeout(60)
def test_with_a_mesh_key_every_holder_computes_the_token(agents, mesh_key, tmp_path):
    a = agents.start("keyed0", "--rest-port", "0")
    rest = a.state["rest"]
    here = run_cli("token", "--agent", a.comm)  # the agent's file
    assert here.returncode == 0 and here.stdout.strip() == mesh_key.rest_token()
    with open(json.loads(run_cli("status", "--agent", a.comm, "--json").stdout)["rest"]["token_file"]) as f:
        assert f.read().strip() == mesh_key.rest_token()
    elsewhere = tmp_path / "run"  # a device without the agent's file: derived from the key
    elsewhere.mkdir(mode=0o700)
    there = run_cli("token", "--agent", a.comm, env={"MESH_RUNTIME_DIR": str(elsewhere)})
    assert there.returncode == 0 and there.stdout == here.stdout
    pairs = [("Host", rest), ("Authorization", "Bearer " + there.stdout.strip())]
    assert send(rest, "GET", "/v1/status", pairs=pairs)[0] == 200
    other = str(tmp_path / "other.key")
    keys.write(other, keys.MeshKey.generate())
    wrong = run_cli("token", "--agent", a.comm, "--key-file", other,
                    env={"MESH_RUNTIME_DIR": str(elsewhere)}).stdout.strip()
    assert send(rest, "GET", "/v1/status", pairs=[("Host", rest), ("Authorization", f"Bearer {wrong}")])[0] == 401
