"""Each on_failure policy with files (the COMPSs runtime's Python failure tests' shape):
python failures.py DIR POLICY. Each task appends a line to a FILE_INOUT and then fails.

RETRY: the first attempt fails, the retry succeeds. CANCEL_SUCCESSORS: the file keeps
what the failed task wrote, the task reading it is cancelled. IGNORE: the file keeps
what the failed task wrote and the next task appends to it; its return is the
@on_failure default. FAIL: the program's graph fails, compss_barrier raises."""

import json
import os
import sys

from pycompss.api.api import compss_barrier, compss_wait_on, compss_wait_on_file
from pycompss.api.on_failure import on_failure
from pycompss.api.parameter import FILE_IN, FILE_INOUT
from pycompss.api.task import task


@task(path=FILE_INOUT, returns=1)
def flaky(path, marker):
    """Fails on its first attempt only (the marker, a file of the test's machine that is
    no parameter of the task, counts the attempts)."""
    with open(marker) as f:
        tries = len(f.read().split())
    with open(marker, "a") as f:
        f.write("try\n")
    with open(path, "a") as f:
        f.write(f"attempt-{tries + 1}\n")
    if tries == 0:
        raise ValueError("first attempt fails")
    return tries + 1


@on_failure(management="CANCEL_SUCCESSORS")
@task(path=FILE_INOUT, returns=1)
def write_then_fail_cancel(path):
    with open(path, "a") as f:
        f.write("partial\n")
    raise ValueError("cancel my successors")


@on_failure(management="IGNORE", returns=-1)
@task(path=FILE_INOUT, returns=1)
def write_then_fail_ignore(path):
    with open(path, "a") as f:
        f.write("partial\n")
    raise ValueError("ignore me")


@on_failure(management="FAIL")
@task(path=FILE_INOUT, returns=1)
def write_then_fail_fail(path):
    with open(path, "a") as f:
        f.write("partial\n")
    raise ValueError("stop everything")


@task(path=FILE_INOUT, returns=1)
def append(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


@task(path=FILE_IN, returns=1)
def read(path):
    with open(path) as f:
        return f.read()


def main(directory, policy):
    path = os.path.join(directory, "data.txt")
    with open(path, "w") as f:
        f.write("start\n")
    report = {"policy": policy}
    if policy == "RETRY":
        marker = os.path.join(directory, "marker")
        open(marker, "w").close()
        report["value"] = compss_wait_on(flaky(path, marker))
    elif policy == "CANCEL_SUCCESSORS":
        write_then_fail_cancel(path)
        after = read(path)
        try:
            report["after"] = compss_wait_on(after)
        except Exception as exc:  # (cancelled)
            report["after"] = type(exc).__name__
    elif policy == "IGNORE":
        value = write_then_fail_ignore(path)
        append(path, "next")
        report["value"] = compss_wait_on(value)
    elif policy == "FAIL":
        write_then_fail_fail(path)
        try:
            compss_barrier()
            report["barrier"] = "ok"
        except Exception as exc:  # (the graph failed)
            report["barrier"] = type(exc).__name__
    compss_wait_on_file(path)
    with open(path) as f:
        report["file"] = f.read()
    print("RESULT", json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
