"""A task's ``time_out``, enforced where the task runs: in the worker, from the moment
the attempt starts (time spent queued at a busy agent does not count).

``guard(seconds)`` wraps the call of the task's function in a worker's main thread:

* at ``seconds`` a ``SIGALRM`` (``setitimer``) raises ``TaskTimedOut`` in the task's
  code, wherever it is (a blocking ``sleep``, a lock or a ``wait_on`` are interrupted
  too); the attempt fails with it and the worker goes on with its next call;
* the attempt fails with ``TaskTimedOut`` even if the task caught that exception and
  returned: it ran longer than its time-out (``TimeOutGuard.expired``);
* code that does not get back to the interpreter (a C extension's loop) cannot be
  interrupted: ``GRACE`` seconds later the worker is told to give up on the call
  (``slot.abort``: it answers it with ``TaskTimedOut`` and its process exits; the agent
  starts another worker).

Outside a worker's main thread (no mesh: the task runs in the program) the guard
does nothing. A task that sets ``SIGALRM`` itself cannot use ``time_out``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from mesh.program import slot

GRACE = 1.0  # s after the time-out before a task that ignores SIGALRM is abandoned


class TimeOutGuard:
    def __init__(self, seconds: float, make_error) -> None:
        self.seconds = seconds
        self.make_error = make_error  # () -> the TaskTimedOut to raise
        self.expired = False
        self._backstop: threading.Timer | None = None
        self._old = None

    def _alarm(self, signum, frame) -> None:
        self.expired = True
        raise self.make_error()

    def _abandon(self) -> None:
        abort = slot.abort
        if abort is not None:
            abort(self.make_error())
        else:  # (not in a worker: nothing else can stop it)
            os._exit(70)

    def __enter__(self) -> TimeOutGuard:
        self._old = signal.signal(signal.SIGALRM, self._alarm)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self._backstop = threading.Timer(self.seconds + GRACE, self._abandon)
        self._backstop.daemon = True
        self._backstop.start()
        return self

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._backstop.cancel()
        signal.signal(signal.SIGALRM, self._old if self._old is not None else signal.SIG_DFL)


def guard(seconds: float | None, make_error):
    """A context that enforces ``seconds`` on the code inside (see the module docstring),
    or does nothing (no time-out, or not in a worker's main thread)."""
    if (not seconds or slot.channel is None
            or threading.current_thread() is not threading.main_thread()):
        return contextlib.nullcontext(None)
    return TimeOutGuard(seconds, make_error)
