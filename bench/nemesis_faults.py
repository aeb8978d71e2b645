"""The nemesis' fault schedule: a pure function of a seed (random.Random(seed)).

Faults arrive one after another, `GAP_S` apart (uniform), from `WARMUP_S` after the start
until each would end `TAIL_S` before the run's end; at most `MAX_ACTIVE` at once, never two
on one target. Kinds (weights in `KINDS`), on a host (one agent each) or a program:
- kill: SIGKILL of the host's agent; `seconds` later a new agent starts on the same host
  (same address), so the mesh keeps its members over time;
- freeze: SIGSTOP of the agent for `seconds` (1-8), then SIGCONT;
- isolate: the host's bridge port drops every frame for `seconds` (2-10): silent loss;
- loss: `param` % of the frames between the host and every other host are dropped, both
  ways, for `seconds`;
- nproc: the agent's process tree may start no new process or thread (cgroup pids.max set
  to what it runs now, plus `param`) for `seconds`, and one of its workers is killed at once
  (as by an OOM killer), so that the agent must start another at its limit;
- stall: a program stops reading its socket for `seconds` (SIGSTOP of the program process).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

KINDS = {"kill": 2.0, "freeze": 2.0, "isolate": 2.0, "loss": 1.5, "nproc": 1.0, "stall": 1.0}
SECONDS = {"kill": (2.0, 10.0), "freeze": (1.0, 8.0), "isolate": (2.0, 10.0), "loss": (5.0, 15.0),
           "nproc": (5.0, 15.0), "stall": (2.0, 10.0)}
LOSS_PCT = (5, 10, 20, 30)
NPROC_HEADROOM = (0, 1, 2)
GAP_S = (3.0, 9.0)
WARMUP_S = 3.0
TAIL_S = 5.0
MAX_ACTIVE = 2


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start
    kind: str
    target: str  # "h3" (host 3's agent) or "P1" (a program)
    seconds: float
    param: int = 0

    @property
    def end(self) -> float:
        return self.at + self.seconds

    def to_json(self) -> dict:
        return asdict(self)


def schedule(seed: int, duration: float, hosts: int, programs: list[str],
             max_faults: int | None = None, kinds: dict[str, float] | None = None) -> list[Fault]:
    """The faults of a run of `duration` seconds on hosts h1..h`hosts` and `programs`, in
    order of `at`: the same for the same arguments."""
    rng = random.Random(seed)
    kinds = dict(KINDS if kinds is None else kinds)
    if not programs:
        kinds.pop("stall", None)
    names, weights = list(kinds), list(kinds.values())
    out: list[Fault] = []
    t = WARMUP_S
    while max_faults is None or len(out) < max_faults:
        t += rng.uniform(*GAP_S)
        if t + TAIL_S >= duration:
            break
        active = [f for f in out if f.at <= t < f.end]
        if len(active) >= MAX_ACTIVE:
            continue
        kind = rng.choices(names, weights)[0]
        lo, hi = SECONDS[kind]
        seconds = round(min(rng.uniform(lo, hi), duration - TAIL_S - t), 2)
        if seconds < lo:
            continue
        busy = {f.target for f in active}
        pool = programs if kind == "stall" else [f"h{i}" for i in range(1, hosts + 1)]
        free = [x for x in pool if x not in busy]
        if not free:
            continue
        target = rng.choice(free)
        param = 0
        if kind == "loss":
            param = rng.choice(LOSS_PCT)
        elif kind == "nproc":
            param = rng.choice(NPROC_HEADROOM)
        out.append(Fault(round(t, 2), kind, target, seconds, param))
    return out
