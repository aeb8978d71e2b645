"""``mesh demo``: a small mesh on 127.0.0.1, a handful of calls spread over it.

Starts agents as separate processes (mDNS pinned to 127.0.0.1, plus the first
agent as a seed), waits until they know each other, submits calls to the first
one (one slot each, so the calls spill over to the others), prints where each
ran, and stops every agent with SIGTERM (graceful leave). Returns an exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def _read_state(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_demo(n_agents: int = 3, n_calls: int = 12) -> int:
    from mesh import keys
    from mesh.client.client import Client

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="mesh-demo-") as tmp:
        key = keys.MeshKey.generate()  # a throw-away mesh key: the demo mesh is authenticated too
        key_file = os.path.join(tmp, "key")
        keys.write(key_file, key)
        env = {k: v for k, v in os.environ.items()  # (where the program finds their local sockets)
               if not k.startswith("MESH_") or k in ("MESH_RUNTIME_DIR", "MESH_LOCAL_SOCKET")}
        env["MESH_KEY_FILE"] = key_file
        try:
            states = []
            for i in range(n_agents):
                state_file = os.path.join(tmp, f"agent{i}.json")
                cmd = [sys.executable, "-m", "mesh", "join", "--name", f"demo-{i + 1}",
                       "--interface", "127.0.0.1", "--comm-port", "0", "--rest-port", "-1",
                       "--cpus", "1", "--state-file", state_file, "--log-level", "WARNING"]
                if states:
                    cmd += ["--peer", states[0]["comm"]]
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env))
                states.append(_wait(lambda p=state_file: _read_state(p), 15, f"agent {i + 1} to start"))
                print(f"started demo-{i + 1} at {states[-1]['comm']} (pid {states[-1]['pid']})")
            print(f"mesh key {key.fingerprint()} (temporary); CURVE-encrypted, authenticated")
            with Client(states[0]["comm"], key=key) as client:
                if client.local_path is not None:
                    print(f"this program reaches demo-1 through its local socket {client.local_path}")
                _wait(lambda: sum(p["state"] == "alive" for p in client.query("peers")) == n_agents - 1,
                      15, "the agents to see each other")
                print(f"demo-1 sees {n_agents - 1} peer(s) alive; submitting {n_calls} calls to demo-1")
                futures = [client.call("mesh.demo_tasks:where", (i,)) for i in range(n_calls)]
                results = [f.result(60) for f in futures]
            for r in results:
                print(f"  where({r['x']:2d}) = {r['square']:4d}   ran on {r['agent']} (pid {r['pid']})")
            counts = Counter(r["agent"] for r in results)
            print("calls per agent: " + ", ".join(f"{a} {c}" for a, c in sorted(counts.items())))
            ok = all(r["square"] == r["x"] ** 2 for r in results)
            return 0 if ok else 1
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            print(f"stopped {len(procs)} agent(s)")
