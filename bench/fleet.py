"""A fleet of mesh agents for the membership benchmarks (detect, busy, freeze).

Agents sit in numbered slots (1..N). On loopback every slot is 127.0.0.1; with a `Netns`
slot I is harness host `mt_hI` at 10.213.0.(10+I), and the agent runs inside that namespace.
What each agent believes about the others is read from its log (one INFO line per member
change, with a millisecond wall-clock timestamp), never by connecting to it: namespace
addresses must not be reached from the root namespace. Loopback fleets can also be queried
(`client`), for status counters and incarnations.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Agent,
    BenchError,
    MemberChange,
    Netns,
    bench_env,
    bench_key,
    log,
    member_changes,
    member_view,
    signal_abruptly,
    start_agent,
    stop,
    stop_all,
)


class Fleet:
    """Agents in slots 1..N, started on demand; `close` stops every agent it ever started."""

    def __init__(self, workdir: Path, profile: str = "default", cpus: int = 1,
                 netns: Netns | None = None, start_timeout: float = 30.0):
        self.workdir = Path(workdir)
        self.profile = profile
        self.cpus = cpus
        self.netns = netns
        self.start_timeout = start_timeout
        self.live: dict[int, Agent] = {}
        self.gone: list[Agent] = []  # killed or stopped
        self._generation: dict[int, int] = {}
        self._clients: dict[str, Any] = {}

    # -- agents ------------------------------------------------------------------------------

    @staticmethod
    def id8(agent: Agent) -> str:
        return agent.state["id"][:8]

    def start(self, slot: int, seed: str | None = None) -> Agent:
        """Start the agent of `slot` (joining through `seed`, host:port, if given)."""
        if slot in self.live:
            raise BenchError(f"slot {slot} already has a live agent")
        gen = self._generation[slot] = self._generation.get(slot, 0) + 1
        name = f"s{slot}g{gen}"
        extra = ["--profile", self.profile] + (["--peer", seed] if seed else [])
        where: dict[str, Any] = {}
        if self.netns is not None:
            where = {"netns": Netns.ns(slot), "interface": Netns.address(slot)}
        agent = start_agent(self.workdir, name=name, cpus=self.cpus, extra=extra,
                            timeout=self.start_timeout, **where)
        if agent.issues:
            log(f"{name}: contract issues: {agent.issues}")
        self.live[slot] = agent
        return agent

    def start_all(self, n: int) -> None:
        """Slot 1 first, then 2..n joining through slot 1."""
        first = self.start(1)
        for slot in range(2, n + 1):
            self.start(slot, first.comm)

    def kill(self, slot: int) -> float:
        """SIGKILL the agent of `slot`; returns the wall-clock time just before the signal."""
        agent = self.live.pop(slot)
        self.gone.append(agent)
        self._drop_client(agent)
        t = signal_abruptly(agent.child)
        agent.child.popen.wait(10)
        return t

    def retire(self, agent: Agent) -> None:
        """Reap a killed agent's leftovers (its workers)."""
        stop(agent.child, timeout=5)

    def agents(self) -> list[Agent]:
        return [self.live[s] for s in sorted(self.live)]

    def slot_of(self, agent: Agent) -> int:
        return next(s for s, a in self.live.items() if a is agent)

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()
        stop_all([a.child for a in [*self.live.values(), *self.gone]])

    # -- what agents believe (their logs) ---------------------------------------------------

    @staticmethod
    def changes(agent: Agent) -> list[MemberChange]:
        return member_changes(agent.child.log_path)

    def unconverged(self) -> list[str]:
        """'A: B is S' for every live pair where A does not (yet) see B alive."""
        agents = self.agents()
        out = []
        for a in agents:
            view = member_view(self.changes(a))
            for b in agents:
                if b is not a and view.get(self.id8(b)) != "alive":
                    out.append(f"{a.state['name']}: {b.state['name']} is {view.get(self.id8(b), 'unknown')}")
        return out

    def wait_converged(self, timeout: float) -> float:
        """Wait until every live agent sees every other alive; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            missing = self.unconverged()
            if not missing:
                return time.monotonic() - t0
            for a in self.agents():
                if a.child.popen.poll() is not None:
                    raise BenchError(f"agent {a.state['name']} exited ({a.child.popen.returncode}):\n"
                                     f"{a.child.tail()}")
            if time.monotonic() >= deadline:
                raise BenchError(f"the mesh did not converge within {timeout:.0f} s: "
                                 f"{'; '.join(missing[:8])}")
            time.sleep(0.05)

    def wait_everywhere(self, id8: str, new: str, since: float, timeout: float,
                        old: str | None = None,
                        among: list[Agent] | None = None) -> dict[str, MemberChange | None]:
        """Wait until each agent of `among` (default: the live ones) has logged member `id8`
        becoming `new` (from `old`, if given) at or after `since` (wall clock), or `timeout`
        seconds have passed. Returns agent name -> its first such change (None: not seen)."""
        among = self.agents() if among is None else among
        deadline = time.monotonic() + timeout
        seen: dict[str, MemberChange | None] = {a.state["name"]: None for a in among}
        while True:
            for a in among:
                name = a.state["name"]
                if seen[name] is None:
                    for c in self.changes(a):
                        if c.id8 == id8 and c.new == new and c.t >= since - 0.001 \
                                and (old is None or c.old == old):
                            seen[name] = c
                            break
            if all(seen.values()) or time.monotonic() >= deadline:
                return seen
            time.sleep(0.02)

    # -- queries (loopback fleets only) -----------------------------------------------------

    def client(self, agent: Agent):
        if self.netns is not None:
            raise BenchError("network safety: no client connections to namespace agents")
        from mesh.client.client import Client

        if agent.comm not in self._clients:
            self._clients[agent.comm] = Client(agent.comm, timeout=10.0, key=agent.key)
        return self._clients[agent.comm]

    def _drop_client(self, agent: Agent) -> None:
        client = self._clients.pop(agent.comm, None)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def status(self, agent: Agent, timeout: float = 10.0) -> dict | None:
        """The agent's `status` answer, or None if it gives none in time. In a namespace the
        question is asked by `mesh status --json` run inside the agent's own namespace."""
        if self.netns is not None:
            return self._status_in_netns(agent, timeout)
        try:
            return self.client(agent).query("status", timeout)
        except BenchError:
            raise
        except Exception as exc:
            log(f"status of {agent.state['name']}: {type(exc).__name__}: {exc}")
            return None

    def _status_in_netns(self, agent: Agent, timeout: float) -> dict | None:
        slot = self.slot_of(agent)
        cmd = ["ip", "netns", "exec", Netns.ns(slot), sys.executable, "-m", "mesh", "status",
               "--agent", agent.comm, "--timeout", str(timeout), "--json"]
        if agent.key is not None:
            cmd += ["--key-file", str(bench_key(self.workdir)[0])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 20,
                                  env=bench_env(), cwd=self.workdir)
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            log(f"status of {agent.state['name']} (in {Netns.ns(slot)}): {type(exc).__name__}: {exc}")
            return None

    def peers(self, agent: Agent, timeout: float = 10.0) -> list[dict] | None:
        try:
            return self.client(agent).query("peers", timeout)
        except BenchError:
            raise
        except Exception as exc:
            log(f"peers of {agent.state['name']}: {type(exc).__name__}: {exc}")
            return None


def victim_order(rng: random.Random, slots: int, rounds: int) -> list[int]:
    """Shuffled cycles over slots 1..`slots`, never the same slot twice in a row."""
    order: list[int] = []
    while len(order) < rounds:
        cycle = rng.sample(range(1, slots + 1), slots)
        if order and cycle[0] == order[-1]:
            cycle[0], cycle[-1] = cycle[-1], cycle[0]
        order += cycle
    return order[:rounds]


def tally(changes_by_agent: dict[str, list[MemberChange]], victims: set[str]) -> dict[str, int]:
    """Counts over agents' logs: what happened to victims (members the benchmark killed or
    froze, by id8) and, separately, to members that were never harmed (false alarms)."""
    out = {"victim_suspicions": 0, "victim_deaths": 0, "false_suspicions": 0,
           "refutations_seen": 0, "false_deaths": 0, "dead_to_alive": 0}
    for changes in changes_by_agent.values():
        for c in changes:
            victim = c.id8 in victims
            if c.new == "suspect":
                out["victim_suspicions" if victim else "false_suspicions"] += 1
            elif c.new == "dead":
                out["victim_deaths" if victim else "false_deaths"] += 1
            elif c.new == "alive" and c.old == "suspect":
                out["refutations_seen"] += 1
            elif c.new == "alive" and c.old == "dead":
                out["dead_to_alive"] += 1
    return out


def sum_counters(statuses: list[dict | None]) -> dict[str, int]:
    """Sum of the agents' `status["membership"]` counters (local_health: the maximum)."""
    out: dict[str, int] = {}
    for st in statuses:
        for k, v in ((st or {}).get("membership") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                if k in ("local_health", "incarnation"):
                    out[f"max_{k}"] = max(out.get(f"max_{k}", 0), v)
                else:
                    out[k] = out.get(k, 0) + v
    return out
