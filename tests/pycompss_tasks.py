"""Tasks of ``tests/test_pycompss_semantics.py``, in a module of their own: workers import
it to run them, and it imports nothing heavy (not pytest), so a worker the agent starts
for a lent slot starts quickly."""

from __future__ import annotations

from mesh.program.api import (
    COLLECTION_IN,
    COLLECTION_OUT,
    FILE_IN,
    FILE_INOUT,
    FILE_OUT,
    INOUT,
    Collection,
    constraint,
    implement,
    task,
    wait_on,
)


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


# ---------------------------------------------------------------- what failed tasks leave


@task(path=FILE_INOUT, returns=0, on_failure="CANCEL_SUCCESSORS")
def append_then_fail(path, line):
    """Writes, then fails: COMPSs keeps what a failed task wrote."""
    with open(path, "a") as f:
        f.write(line + "\n")
    raise ValueError(f"failed after writing {line!r}")


@task(path=FILE_INOUT, returns=0, on_failure="IGNORE")
def append_then_fail_ignored(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")
    raise ValueError(f"failed after writing {line!r}")


@task(path=FILE_INOUT, returns=0)
def append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


@task(path=FILE_IN, returns=1)
def read_text(path):
    with open(path) as f:
        return f.read()


@task(returns=1, on_failure="IGNORE", failure_values={"returns": -1})
def fails_with_default(x):
    raise ValueError(f"no value for {x}")


# ---------------------------------------------------------------- COMPSsException


@task(returns=1)
def group_member(i, path, stop_at):
    """Logs each start; the member ``stop_at`` stops its group at once, the others
    take long (they are cancelled)."""
    import time

    from mesh.program.api import COMPSsException

    with open(path, "a") as f:
        f.write(f"{i}\n")
    if i == stop_at:
        raise COMPSsException(f"member {i} stops the group")
    time.sleep(20)
    return i


# ---------------------------------------------------------------- methods and self


class Counter:
    def __init__(self) -> None:
        self.n = 0

    @task(returns=1, target_direction=INOUT)
    def incr(self, by):
        self.n += by
        return self.n

    @task(returns=1)
    def peek_and_incr(self):
        """self is IN (mesh's default): the increment is lost, as the caller asked."""
        self.n += 1
        return self.n


# ---------------------------------------------------------------- collections


@task(out=COLLECTION_OUT, returns=0)
def fill(out, base):
    for i in range(len(out)):
        out[i] = base + i


@task(blocks=Collection(INOUT, 2), returns=0)
def scale_blocks(blocks, k):
    for row in blocks:
        for j in range(len(row)):
            row[j] = [v * k for v in row[j]]


@task(blocks=COLLECTION_IN, returns=1)
def total_of(blocks):
    return sum(sum(b) if isinstance(b, list) else b for b in blocks)


@task(returns=1)
def plus_one(x):
    return x + 1


@task(out=COLLECTION_OUT, returns=0)
def shrink(out):
    out.pop()


@task(returns="n")
def split(values, n):
    size = len(values) // n
    return tuple(values[i * size:(i + 1) * size] for i in range(n))


# ---------------------------------------------------------------- alternative implementations


@task(returns=1)
def where_main(x):
    import os
    import time

    time.sleep(0.2)  # (long enough for the calls to spread over the agents)
    return ("main", os.environ.get("MESH_AGENT_NAME"), x)


@implement(where_main)
@constraint(labels=["fast"])
@task(returns=1)
def where_fast(x):
    import os
    import time

    time.sleep(0.2)
    return ("fast", os.environ.get("MESH_AGENT_NAME"), x)


@constraint(labels=["nowhere"])
@task(returns=1)
def only_alt_main(x):
    return ("main", x)


@implement(source_class=__name__, method="only_alt_main")
@constraint(labels=["fast"])
@task(returns=1)
def only_alt_fast(x):
    import os

    return ("fast", os.environ.get("MESH_AGENT_NAME"), x)
