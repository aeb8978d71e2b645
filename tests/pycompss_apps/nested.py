"""Tasks called inside tasks (the COMPSs runtime's tests of tasks in tasks), and fire and
forget: python nested.py LOGPREFIX N.

Classic PyCOMPSs (mesh run --pycompss): a task called inside a task runs inline and
returns its value, so ``fib`` adds its children's results directly. With nesting
(--nesting) it returns a future: ``fib_nested`` synchronises them. ``spawner`` calls
``log_line`` without waiting for it (fire and forget) and returns at once; the line is
in its file when the program's barrier returns."""

import json
import sys

from pycompss.api.api import compss_barrier, compss_wait_on
from pycompss.api.parameter import FILE_OUT
from pycompss.api.task import task


@task(returns=1)
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)  # classic: inline calls, plain values


@task(returns=1)
def fib_nested(n):
    if n < 2:
        return n
    a, b = fib_nested(n - 1), fib_nested(n - 2)
    return compss_wait_on(a) + compss_wait_on(b)  # with nesting: futures


@task(returns=1)
def is_inline(x):
    return type(square(x)).__name__  # "int" when inline, a future's type with nesting


@task(returns=1)
def square(x):
    return x * x


@task(path=FILE_OUT)
def log_line(path, text):
    with open(path, "w") as f:
        f.write(text + "\n")


@task(returns=1)
def spawner(path, i):
    log_line(f"{path}-{i}", f"fired-{i}")  # not waited for (a file of its own: each spawner's
    return i  # tasks are a graph of their own, in its worker)


def main(log, n):
    nesting = len(sys.argv) > 3 and sys.argv[3] == "nesting"
    kinds = compss_wait_on([is_inline(i) for i in range(2)])
    value = compss_wait_on(fib_nested(n) if nesting else fib(n))
    returned = compss_wait_on([spawner(log, i) for i in range(n)])
    compss_barrier()
    lines = []
    for i in range(n):
        with open(f"{log}-{i}") as f:
            lines += f.read().split()
    print("RESULT", json.dumps({"kinds": kinds, "fib": value, "returned": returned, "fired": lines}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
