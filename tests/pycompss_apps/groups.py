"""Task groups with COMPSsException (the PyCOMPSs documentation's examples): python groups.py LOGFILE.

A task of a group raises COMPSsException: the group's other tasks are cancelled and
the exception is caught where the group is left; a group without implicit barrier is
synchronised later with compss_barrier_group; a group is cancelled; tasks outside the
groups go on."""

import json
import sys
import time

from pycompss.api.api import TaskGroup, compss_barrier_group, compss_cancel_group, compss_wait_on
from pycompss.api.exceptions import COMPSsException
from pycompss.api.task import task


@task(returns=1)
def member(i, stop_at, log, seconds):
    with open(log, "a") as f:
        f.write(f"start-{i}\n")
    if i == stop_at:
        raise COMPSsException(f"{i} found!")
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"end-{i}\n")
    return i


@task(returns=1)
def quick(i):
    return i * 2


def main(log):
    report = {}
    outside = quick(21)
    try:
        with TaskGroup("exceptionGroup1"):
            for i in range(4):
                member(i, 2, log, 15)
        report["caught"] = None
    except COMPSsException as exc:
        report["caught"] = str(exc)
    with open(log) as f:  # the others were cancelled, not waited for: none of them ended
        report["unwaited"] = not any(line.startswith("end-") for line in f)
    for g in range(2):
        with TaskGroup(f"Group{g}", False):
            member(10 + g, 11, log, 0.2)
    later = []
    for g in range(2):
        try:
            compss_barrier_group(f"Group{g}")
            later.append("ok")
        except COMPSsException as exc:
            later.append(str(exc))
    report["later"] = later
    with TaskGroup("cancelled", False):
        long = member(20, -1, log, 15)
    compss_cancel_group("cancelled")
    try:
        compss_wait_on(long)
        report["cancelled"] = False
    except Exception as exc:  # (the task was cancelled)
        report["cancelled"] = type(exc).__name__
    report["outside"] = compss_wait_on(outside)
    report["after"] = compss_wait_on(quick(50))
    with open(log) as f:
        report["starts"] = f.read().split().count("start-2")
    print("RESULT", json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
