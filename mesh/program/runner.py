"""``mesh run SCRIPT.py [ARG...]``: run a script's ``main`` on an agent as the main
program of a task graph.

The script's source travels to the agent; a worker there executes it as a fresh
module and calls ``main(*args)`` (a ``@task``-decorated ``main`` runs as itself, the
main program, not as a task). Task calls inside go to that agent's mesh (the
worker connects to its agent), and the script's own functions travel by value
(cloudpickle), since no other worker could import the script.
"""

from __future__ import annotations

import sys
import types

MODULE = "__mesh_main__"
TaskTraceEmpty = "digraph tasks {\n}\n"  # a run that called no task on the mesh


def run_script(source: str, filename: str, args: tuple, graph: bool = False):
    """Executed in a worker: run ``source`` as a module and return ``main(*args)``
    (with ``graph``: the pair (value, the task graph as DOT)). Raises what the script
    raises; AttributeError if it has no ``main``."""
    import cloudpickle

    from mesh.program.runtime import current
    from mesh.program.taskexec import entry_point
    from mesh.program.tasktrace import TaskTrace

    rt = current(create=True)  # this worker's connection to its agent (None: sequential)
    if rt is not None:
        rt.trace = TaskTrace()  # this run's graph only (the worker may have run others)
    module = types.ModuleType(MODULE)
    module.__file__ = filename
    sys.modules[MODULE] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        code = compile(source, filename, "exec")
        exec(code, module.__dict__)  # noqa: S102 - running the user's program is the point
        main = entry_point(module.__dict__.get("main"))  # (a @task main runs as itself)
        if not callable(main):
            raise AttributeError(f"{filename} defines no main() function")
        result = main(*args)
        from mesh.program.api import barrier, wait_on

        barrier()  # every task the program started has ended
        value = wait_on(result)
        if not graph:
            return value
        return value, (rt.trace.dot() if rt is not None else TaskTraceEmpty)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(MODULE, None)
