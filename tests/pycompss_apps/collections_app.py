"""Collections in and out, with depth (the COMPSs runtime's Python collection tests'
shape): python collections_app.py N.

A COLLECTION_OUT of placeholders is filled by one task; each element is then used by
a task of its own; a COLLECTION_INOUT of blocks (Depth 2: each block a list) is scaled
in place; COLLECTION_IN tasks read whole collections; a task returns a collection
(returns=COLLECTION_OUT) and another reads it as COLLECTION_IN."""

import json
import sys

from pycompss.api.api import compss_wait_on
from pycompss.api.parameter import COLLECTION_IN, COLLECTION_INOUT, COLLECTION_OUT, Depth, Type
from pycompss.api.task import task


@task(out=COLLECTION_OUT)
def generate(out, base):
    for i in range(len(out)):
        out[i] = [base + i, base + i + 1]


@task(returns=1)
def summed(block):
    return sum(block)


@task(blocks={Type: COLLECTION_INOUT, Depth: 2})
def scale(blocks, factor):
    for row in blocks:
        for j in range(len(row)):
            row[j] = [v * factor for v in row[j]]


@task(blocks=COLLECTION_IN, returns=1)
def total(blocks):
    return sum(sum(b) for b in blocks)


@task(returns=COLLECTION_OUT)
def make_collection(n):
    return [[i, i * i] for i in range(n)]


@task(coll={Type: COLLECTION_IN, Depth: 2}, returns=1)
def flatten(coll):
    return [v for pair in coll for v in pair]


def main(n):
    out = [object() for _ in range(n)]
    generate(out, 10)
    singles = [summed(b) for b in out]  # each element is a datum of its own
    grand = total(out)
    rows = [[[1, 2], [3]], [[4], [5, 6]]]
    scale(rows, 10)
    scale(rows, 2)
    row_total = total(rows[1])
    made = make_collection(n)
    flat = flatten(made)
    print("RESULT", json.dumps({
        "out": compss_wait_on(out), "singles": compss_wait_on(singles), "grand": compss_wait_on(grand),
        "rows": compss_wait_on(rows), "row_total": compss_wait_on(row_total),
        "flat": compss_wait_on(flat)}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
