"""Tasks of ``tests/test_pycompss_semantics.py``, in a module of their own: workers import
it to run them, and it imports nothing heavy (not pytest), so a worker the agent starts
for a lent slot starts quickly."""

from __future__ import annotations

from mesh.program.api import FILE_IN, FILE_INOUT, FILE_OUT, INOUT, constraint, task, wait_on


@task(c=INOUT, returns=0)
def multiply(a, b, c):
    """c += a @ b, blocks as lists of lists (the tutorial's matmul, without numpy)."""
    n = len(c)
    for i in range(n):
        for j in range(n):
            c[i][j] += sum(a[i][k] * b[k][j] for k in range(n))


@task(returns=1)
def child(x):
    return x + 1


@task(returns=0)
def fire(path, tag):
    with open(path, "a") as f:
        f.write(f"{tag}\n")


def waits_then_fires(x, path):
    """Waits on one task, then calls two without waiting on them ("fire and forget"):
    one at once, one after a task that has not run yet."""
    v = wait_on(child(x))
    fire(path, f"now-{x}")
    fire(path, child(x))  # writes x + 1 once child(x) ran again
    return v


# the same, bound to the agent labelled lane0 or lane1 (one lane of runs each)
waits_then_fires_0 = constraint(labels=["lane0"])(task(returns=1)(waits_then_fires))
waits_then_fires_1 = constraint(labels=["lane1"])(task(returns=1)(waits_then_fires))


@task(returns=0, on_failure="FAIL")
def fails(x):
    raise ValueError(f"bad {x}")


@task(returns=1)
def fires_a_failing_task(x):
    fails(x)  # not waited for: the call still ends with its outcome
    return x


@task(returns=1)
def nested_inc(x):
    return wait_on(child(x)) + 1


@task(returns=1)
def square(x):
    return x * x


@task(returns=1)
def main(n):
    """A ``@task``-decorated entry point, as PyCOMPSs programs often have: it runs as the
    main program itself (COMPSs' startApplication, ``mesh call``), not as one task."""
    return sum(wait_on([square(i) for i in range(int(n))]))  # (COMPSs passes strings)


@task(path=FILE_INOUT, returns=0, on_failure="IGNORE")
def append_or_fail(path, line):
    if line == "bad":
        raise ValueError("refused a bad line")
    with open(path, "a") as f:
        f.write(line + "\n")


@task(src=FILE_IN, dst=FILE_OUT, returns=1)
def copy_or_report(src, dst):
    """PyCOMPSs passes a FILE parameter given as None to the task as None (a null
    parameter): nothing is read, transferred or written back."""
    text = "none" if src is None else open(src).read()
    if dst is not None:
        with open(dst, "w") as f:
            f.write(text)
    return f"src={'None' if src is None else 'a file'} dst={'None' if dst is None else 'a file'}"
