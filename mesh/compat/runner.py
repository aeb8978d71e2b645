"""``mesh run --pycompss APP.py [ARG...]``: run an unmodified PyCOMPSs program on the mesh,
as ``runcompss APP.py ARG...`` would.

The script's source travels to the program's agent; a worker there runs it as the
``__main__`` module (its ``if __name__ == "__main__":`` block runs), with ``sys.argv``
= [APP.py, ARG...] (strings, as COMPSs passes them), ``import pycompss...`` giving
``mesh.compat.pycompss`` for the run (``importer.prefer``), the nested-task mode the
user asked for (``--nesting``), and its output captured. At the end, as PyCOMPSs' runtime
stop, every task it called has ended (a barrier). Its functions and classes travel by
value (cloudpickle pickles ``__main__`` by value).

What comes back (``run``): ``{"stdout", "stderr", "exit", "error", "graph"}``: what the
program printed (the last ``OUTPUT_MAX`` characters of each), its exit code (0, a
``sys.exit`` code, or 1 when it raised), the traceback of what it raised, and the task
graph as DOT when asked. ``mesh run`` prints them as the program would have.
"""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
import types

from mesh.compat import importer
from mesh.compat.pycompss._layer import mode

OUTPUT_MAX = 1 << 20  # characters of stdout (and of stderr) sent back, the last ones


class _Tail(io.StringIO):
    """A text stream that keeps only its last ``OUTPUT_MAX`` characters."""

    def write(self, text: str) -> int:
        n = super().write(text)
        if self.tell() > 2 * OUTPUT_MAX:
            tail = self.getvalue()[-OUTPUT_MAX:]
            self.seek(0)
            self.truncate()
            super().write(tail)
        return n

    def tail(self) -> str:
        return self.getvalue()[-OUTPUT_MAX:]


def run(source: str, filename: str, args: tuple, nesting: bool = False, graph: bool = False) -> dict:
    """Executed in a worker: run the PyCOMPSs program (see the module docstring)."""
    import cloudpickle

    from mesh.program.api import barrier
    from mesh.program.runner import TaskTraceEmpty
    from mesh.program.runtime import current, drop_failed
    from mesh.program.tasktrace import TaskTrace

    rt = current(create=True)
    if rt is not None:
        rt.trace = TaskTrace()
    module = types.ModuleType("__main__")
    module.__file__ = filename
    module.__builtins__ = __builtins__
    out, err = _Tail(), _Tail()
    saved = sys.modules.get("__main__"), list(sys.argv), mode.nesting
    code, error = 0, None
    with importer.prefer():
        sys.modules["__main__"] = module
        sys.argv[:] = [filename, *map(str, args)]
        mode.nesting = nesting
        cloudpickle.register_pickle_by_value(module)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the point
                except SystemExit as exc:  # sys.exit(n) ends the program, as it would
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                    if exc.code is not None and not isinstance(exc.code, int):
                        print(exc.code, file=sys.stderr)
                barrier()  # every task the program called has ended (PyCOMPSs' stop)
        except BaseException as exc:  # noqa: BLE001 - reported to mesh run as the program's failure
            code, error = 1, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        finally:
            drop_failed()  # (reported here: the call ends with the program's outcome)
            cloudpickle.unregister_pickle_by_value(module)
            main, argv, mode.nesting = saved
            sys.argv[:] = argv
            if main is not None:
                sys.modules["__main__"] = main
    dot = (rt.trace.dot() if rt is not None else TaskTraceEmpty) if graph else None
    return {"stdout": out.tail(), "stderr": err.tail(), "exit": code, "error": error, "graph": dot}
