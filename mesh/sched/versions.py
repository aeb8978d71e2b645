"""Data versions of a task graph: renaming, snapshots and release.

Theory of operation
-------------------
A datum (an object id or a file path) is a chain of versions. Each write makes a new
version with a fresh, never reused ``DataVersion`` name and makes it the datum's
latest; readers of older versions keep theirs (renaming: no write-after-read or
write-after-write waits). A datum the program names before any task wrote it starts
with a version holding the program's own value (a snapshot).

A version is live until it is dropped. It is dropped when all three hold:
  * it is resolved (not pending: available, failed or cancelled);
  * no unfinished task reads it (``readers`` is 0);
  * the program cannot name it: it is not the latest version, or the program gave
    the datum up (``held`` false, after ``forget``).
Dropping an available version queues a ``Release`` (the shell frees the value) and
calls ``on_output_dropped(writer)`` so the graph can drop a finished writer whose
outputs are all gone. A datum with no live version is removed. Nothing here grows
with the length of the program, only with what is live.

This module knows nothing of task states; ``Version.writer`` and ``Version.waiters``
are the graph's task records, opaque here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.errors import LocalProtocolError
from mesh.sched.graph_actions import Action, DataState, DataVersion, Release, Snapshot


class Datum:
    __slots__ = ("data_id", "is_file", "latest", "held", "live")

    def __init__(self, data_id: str, is_file: bool) -> None:
        self.data_id = data_id
        self.is_file = is_file
        self.latest: Version | None = None
        self.held = True  # the program may still name it (wait_on, pass it to a task)
        self.live = 0  # versions not yet dropped


class Version:
    __slots__ = ("ref", "datum", "writer", "state", "error", "readers", "waiters", "watched",
                 "dropped")

    def __init__(self, ref: DataVersion, datum: Datum, writer: Any, state: DataState) -> None:
        self.ref = ref
        self.datum = datum
        self.writer = writer  # the graph's task record; None: the program's own value
        self.state = state
        self.error = ""
        self.readers = 0  # unfinished tasks that read it
        self.waiters: list[Any] = []  # pending tasks to tell when it is resolved
        self.watched = False  # a wait_on is waiting for it
        self.dropped = False


class VersionTable:
    """Every live datum and version of one graph. Actions it produces (``Snapshot``,
    ``Release``) are appended to the lists the caller passes."""

    def __init__(self, on_output_dropped: Callable[[Any], None]) -> None:
        self._data: dict[str, Datum] = {}
        self._serial = 0
        self._on_output_dropped = on_output_dropped
        self.live_versions = 0
        self.released = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, data_id: object) -> bool:
        return data_id in self._data

    def is_file(self, data_id: str) -> bool | None:
        """Whether a live datum is a file (None: no such datum)."""
        datum = self._data.get(data_id)
        return None if datum is None else datum.is_file

    def latest(self, data_id: str) -> Version:
        """The latest version of a datum. Raises ``LocalProtocolError`` if unknown."""
        datum = self._data.get(data_id)
        if datum is None or datum.latest is None:
            raise LocalProtocolError(f"{data_id!r} is not a datum of this graph")
        return datum.latest

    def read(self, data_id: str, is_file: bool, acts: list[Action], releases: list[Action]) -> Version:
        """The version a reader gets: the latest, or a new snapshot of the program's value."""
        datum = self._data.get(data_id)
        if datum is not None and datum.latest is not None:
            datum.held = True
            return datum.latest
        v = self.write(data_id, is_file, None, DataState.AVAILABLE, releases)
        acts.append(Snapshot(v.ref))
        return v

    def write(self, data_id: str, is_file: bool, writer: Any, state: DataState,
              releases: list[Action]) -> Version:
        """A new latest version of a datum; the old latest is left to its readers."""
        datum = self._data.get(data_id)
        if datum is None:
            datum = self._data[data_id] = Datum(data_id, is_file)
        datum.held = True
        old = datum.latest
        self._serial += 1
        v = Version(DataVersion(data_id, self._serial), datum, writer, state)
        datum.latest = v
        datum.live += 1
        self.live_versions += 1
        if old is not None:
            self.maybe_drop(old, releases)
        return v

    def forget(self, data_id: str, releases: list[Action]) -> None:
        """The program no longer names this datum. Unknown ids are ignored."""
        datum = self._data.get(data_id)
        if datum is None:
            return
        datum.held = False
        if datum.latest is not None:
            self.maybe_drop(datum.latest, releases)

    def maybe_drop(self, v: Version, releases: list[Action]) -> None:
        """Drop ``v`` if nothing can need it any more (see the module docstring)."""
        datum = v.datum
        if v.dropped or v.state is DataState.PENDING or v.readers or (datum.held and datum.latest is v):
            return
        v.dropped = True
        datum.live -= 1
        self.live_versions -= 1
        if datum.latest is v:
            datum.latest = None
        if datum.live == 0 and self._data.get(datum.data_id) is datum:
            del self._data[datum.data_id]
        if v.state is DataState.AVAILABLE:
            self.released += 1
            releases.append(Release(v.ref))
        writer, v.writer = v.writer, None
        if writer is not None:
            self._on_output_dropped(writer)
