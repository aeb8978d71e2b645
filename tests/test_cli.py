"""The CLI through click's test runner (no subprocess): commands, usage errors, exit codes."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from mesh import keys
from mesh.cli import main, parse_arg

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_every_command(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for command in ("join", "call", "run", "status", "peers", "tree", "resources", "keygen", "token", "demo"):
        assert command in res.output


@pytest.mark.parametrize("args", [
    ["call", "nocolon"],
    ["call", ":f"],
    ["status", "--agent", "not-an-address"],
    ["peers", "--agent", "host:99999"],
    ["tree", "--format", "bogus"],
    ["resources", "add"],
    ["resources", "add", "--cpus", "1", "--peer", "a:1"],
    ["resources", "reduce"],
    ["join", "--comm-port", "-5"],
    ["join", "--profile", "slow"],
    ["join", "--rest-open", "--rest-port", "-1"],
    ["token", "--agent", "nocolon"],
    ["run", "/no/such/script.py"],
    ["no-such-command"],
])
def test_usage_errors_exit_2(runner, args):
    res = runner.invoke(main, args)
    assert res.exit_code == 2, res.output


def test_keygen_and_token_through_the_runner(runner, tmp_path):
    path = str(tmp_path / "k")
    res = runner.invoke(main, ["keygen", path])
    assert res.exit_code == 0 and os.path.exists(path)
    res = runner.invoke(main, ["token", "--key-file", path])
    assert res.exit_code == 0 and res.output.strip() == keys.load(path, env={}).rest_token()
    res = runner.invoke(main, ["token", "--key-file", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_unreachable_agent_exits_3(runner, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = runner.invoke(main, ["status", "--agent", f"127.0.0.1:{port}", "--timeout", "0.5"])
    assert res.exit_code == 3


@pytest.mark.parametrize("text, value", [
    ("2", 2), ("2.5", 2.5), ("[1, 2]", [1, 2]), ("{'a': 1}", {"a": 1}), ("None", None),
    ("hello", "hello"), ("'quoted'", "quoted"), ("os.system('x')", "os.system('x')"), ("", ""),
])
def test_arguments_are_literals_when_they_parse(text, value):
    assert parse_arg(text) == value
