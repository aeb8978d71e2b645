"""``mesh run SCRIPT.py [ARG...]``: run a script's ``main`` on an agent as the main
program of a task graph.

The script's source travels to the agent; a worker there executes it as a fresh
module and calls ``main(*args)``. Task calls inside go to that agent's mesh (the
worker connects to its agent), and the script's own functions travel by value
(cloudpickle), since no other worker could import the script.
"""

from __future__ import annotations

import sys
import types

MODULE = "__mesh_main__"


def run_script(source: str, filename: str, args: tuple):
    """Executed in a worker: run ``source`` as a module and return ``main(*args)``.
    Raises what the script raises; NameError-like errors if it has no ``main``."""
    import cloudpickle

    module = types.ModuleType(MODULE)
    module.__file__ = filename
    sys.modules[MODULE] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        code = compile(source, filename, "exec")
        exec(code, module.__dict__)  # noqa: S102 - running the user's program is the point
        main = module.__dict__.get("main")
        if not callable(main):
            raise AttributeError(f"{filename} defines no main() function")
        result = main(*args)
        from mesh.api import barrier, wait_on

        barrier()  # every task the program started has ended
        return wait_on(result)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(MODULE, None)
