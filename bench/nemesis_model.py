"""The nemesis' sequential model: what each operation a nemesis program submits must give.

An operation is a JSON-able spec `{"op": NAME, "args": [...]}` whose arguments are numbers
or `{"ref": CID}`, the output of another operation of the same program (a dependency in the
task graph). `expect(spec, specs)` is the outcome a mesh that loses nothing must give, as
`("value", DIGEST)` or `("raise", KIND)`, computed here, sequentially, without the mesh; the
task bodies (`bench.nemesis_tasks`) compute their values with the same pure functions after
their work, so a value that travels back wrong, or to the wrong call, has the wrong digest.

Pure: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import hashlib
from typing import Any

MOD = 1_000_003
BOOM = "NemesisBoom"  # the exception a `boom` task raises on purpose (bench.nemesis_tasks)

# op -> what it is (for the report); "raise" ops expect an error, not a value
OPS = {
    "noop": "returns its argument",
    "cpu": "~50 ms of CPU, then a small integer",
    "add": "sum of two integers (both usually futures of other tasks)",
    "big": "bytes of the given size (a few MB: kept at the agent that made it for @task)",
    "digest": "an integer digest of a big input (reads a future kept at an agent)",
    "nested": "runs N `cpu` subtasks from inside its worker and sums them",
    "slow": "sleeps, with a time_out: within it returns its argument, else times out",
    "boom": "raises NemesisBoom",
    "after": "reads a boom's output: cancelled with it (CANCEL_SUCCESSORS)",
}


def cpu_value(x: int) -> int:
    return (x * 31 + 7) % MOD


def add_value(a: int, b: int) -> int:
    return (a + b) % MOD


def big_value(x: int, size: int) -> bytes:
    block = hashlib.sha256(f"nemesis-{x}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def digest_value(blob: bytes) -> int:
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") % MOD


def nested_value(x: int, n: int) -> int:
    return sum(cpu_value(x + k) for k in range(n)) % MOD


def value_digest(value: Any) -> str:
    """What the history keeps of a value: the value itself when small, else a digest."""
    if isinstance(value, (bytes, bytearray)):
        return f"bytes:{len(value)}:{hashlib.sha256(value).hexdigest()[:16]}"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"int:{value}"
    return f"{type(value).__name__}:{hashlib.sha256(repr(value).encode()).hexdigest()[:16]}"


def slow_times_out(sleep_s: float, time_out: float) -> bool | None:
    """Whether a `slow` task must time out: True well past its time_out, False well within
    it, None in between (the model refuses such specs: see `expect`)."""
    if sleep_s >= 2 * time_out:
        return True
    if sleep_s <= time_out / 5:
        return False
    return None


def _value(cid: str, specs: dict[str, dict], memo: dict[str, tuple[str, Any]]) -> tuple[str, Any]:
    """("value", python value) or ("raise", kind) of operation `cid`."""
    if cid in memo:
        return memo[cid]
    spec = specs[cid]
    args = []
    for a in spec.get("args", []):
        if isinstance(a, dict) and "ref" in a:
            kind, v = _value(a["ref"], specs, memo)
            if kind == "raise":  # a failed input: the reader never runs
                memo[cid] = ("raise", "TaskCancelled")
                return memo[cid]
            args.append(v)
        else:
            args.append(a)
    op = spec["op"]
    if op == "noop":
        out: tuple[str, Any] = ("value", args[0])
    elif op == "cpu":
        out = ("value", cpu_value(args[0]))
    elif op == "add":
        out = ("value", add_value(args[0], args[1]))
    elif op == "big":
        out = ("value", big_value(args[0], args[1]))
    elif op == "digest":
        out = ("value", digest_value(args[0]))
    elif op == "nested":
        out = ("value", nested_value(args[0], args[1]))
    elif op == "slow":
        late = slow_times_out(args[1], args[2])
        if late is None:
            raise ValueError(f"{cid}: slow({args[1]} s, time_out {args[2]} s) is ambiguous")
        out = ("raise", "TaskTimedOut") if late else ("value", args[0])
    elif op == "boom":
        out = ("raise", BOOM)
    elif op == "after":
        out = ("value", args[0])  # (never reached: its input raised)
    else:
        raise ValueError(f"{cid}: unknown op {op!r}")
    memo[cid] = out
    return out


def expect(cid: str, specs: dict[str, dict], memo: dict | None = None) -> tuple[str, str]:
    """The outcome operation `cid` must have: ("value", digest) or ("raise", kind)."""
    kind, v = _value(cid, specs, {} if memo is None else memo)
    return (kind, value_digest(v)) if kind == "value" else (kind, v)
