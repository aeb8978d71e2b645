"""``pycompss.api.local``: ``@local`` on a function that is not a task: its arguments are
synchronised (``compss_wait_on``) before it runs, in the program."""

from __future__ import annotations

import functools

from mesh.program import api as _mesh


def local(fn):
    @functools.wraps(fn)
    def synchronised(*args, **kwargs):
        return fn(*_mesh.wait_on(list(args)) if args else (), **_mesh.wait_on(kwargs))

    return synchronised
