"""The mesh key: file format, derivations, keygen/token/join policy."""

from __future__ import annotations

import os
import stat

import pytest

from mesh import keys
from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(60)


def test_key_text_round_trip_and_derivations_are_stable():
    key = keys.MeshKey.generate()
    again = keys.MeshKey.parse(key.text())
    assert again == key
    assert again.curve_keypair() == key.curve_keypair()
    assert key.rest_token() != keys.MeshKey.generate().rest_token()
    fields = keys.announcement_fields("ab" * 16, "pi", 1, "10.0.0.1", 46102, 4)
    assert keys.verify(key.announcement_auth(fields), again.announcement_auth(fields))
    assert not keys.verify(key.announcement_auth(fields), key.announcement_auth(fields + "x"))


@pytest.mark.parametrize("text", ["", "mesh-key-v1:", "mesh-key-v2:AAAA", "mesh-key-v1:!!!!",
                                  "mesh-key-v1:" + "A" * 10, "hello"])
def test_bad_key_text_is_a_clear_error(text):
    with pytest.raises(keys.MeshKeyError):
        keys.MeshKey.parse(text)


def test_load_order_and_missing_files(tmp_path):
    a, b = keys.MeshKey.generate(), keys.MeshKey.generate()
    path = str(tmp_path / "a.key")
    keys.write(path, a)
    assert keys.load(path, env={}) == a
    assert keys.load(None, env={"MESH_KEY_FILE": path, "MESH_KEY": b.text()}) == a
    assert keys.load(None, env={"MESH_KEY": b.text(), "XDG_CONFIG_HOME": str(tmp_path)}) == b
    with pytest.raises(keys.MeshKeyError, match="cannot read"):
        keys.load(str(tmp_path / "missing"), env={})


def test_keygen_writes_0600_refuses_to_overwrite_and_token_prints(tmp_path):
    path = str(tmp_path / "cfg" / "key")
    res = run_cli("keygen", path)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = keys.load(path, env={})
    assert key.fingerprint() in res.stdout
    again = run_cli("keygen", path)
    assert again.returncode != 0 and "--force" in again.stderr
    assert keys.load(path, env={}) == key  # untouched
    tok = run_cli("token", "--key-file", path)
    assert tok.stdout.strip() == key.rest_token()


def test_join_without_a_key_refuses_a_non_loopback_interface(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is not on this machine: the agent must refuse before binding
    env = {"MESH_KEY_FILE": "", "XDG_CONFIG_HOME": str(tmp_path)}
    res = run_cli("join", "--interface", "192.0.2.1", "--no-mdns", "--rest-port", "-1", env=env)
    assert res.returncode == 2
    assert "mesh keygen" in res.stderr and "--insecure" in res.stderr
