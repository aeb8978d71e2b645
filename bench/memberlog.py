"""Member changes as the agents log them (`peer NAME (ID8) joined`, `peer NAME (ID8): OLD ->
NEW (incarnation N)`), parsed back from their log files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# `%(asctime)s ... peer NAME (ID8) joined` and `... peer NAME (ID8): OLD -> NEW (incarnation N)`
_CHANGE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?\bpeer (?P<name>.+?) \((?P<id>[0-9a-f]{4,})\)"
    r"(?:: (?P<old>\w+) -> (?P<new>\w+) \(incarnation (?P<inc>\d+)\)| (?P<joined>joined))\s*$")


@dataclass(frozen=True)
class MemberChange:
    """One member change as an agent logged it. `t` is wall-clock seconds (log timestamps have
    millisecond resolution, truncated); a join is old "new" -> new "alive"."""

    t: float
    name: str
    id8: str
    old: str
    new: str
    incarnation: int | None


def parse_change(line: str) -> MemberChange | None:
    """The member change logged on `line`, or None if the line is something else."""
    mt = _CHANGE.match(line)
    if mt is None:
        return None
    t = datetime.strptime(mt["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like asctime
    if mt["joined"]:
        return MemberChange(t, mt["name"], mt["id"][:8], "new", "alive", None)
    return MemberChange(t, mt["name"], mt["id"][:8], mt["old"], mt["new"], int(mt["inc"]))


def member_changes(log_path: Path) -> list[MemberChange]:
    """Every member change in an agent's log, in order (a missing log has none)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return []
    return [c for c in map(parse_change, text.splitlines()) if c is not None]


def member_view(changes: Iterable[MemberChange]) -> dict[str, str]:
    """id8 -> the last state the log gives for that member."""
    view: dict[str, str] = {}
    for c in changes:
        view[c.id8] = c.new
    return view


def first_change(changes: Iterable[MemberChange], id8: str, new: str, since: float = 0.0,
                 old: str | None = None) -> MemberChange | None:
    """The first logged change of member `id8` to state `new` (from `old`, if given) at or after
    `since` (wall clock; the log's millisecond truncation is allowed for)."""
    for c in changes:
        if c.id8 == id8 and c.new == new and c.t >= since - 0.001 and (old is None or c.old == old):
            return c
    return None
