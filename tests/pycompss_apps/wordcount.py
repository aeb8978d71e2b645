"""Wordcount with reductions (the PyCOMPSs tutorial's shape): one task per file reads it
(FILE_IN) and counts its words, then the partial counts are merged pairwise, a tree of
reduce tasks, and also folded into one INOUT accumulator: python wordcount.py DIR"""

import json
import os
import sys

from pycompss.api.api import compss_wait_on
from pycompss.api.parameter import FILE_IN, INOUT
from pycompss.api.task import task


@task(path=FILE_IN, returns=dict)
def count_words(path):
    counts = {}
    with open(path) as f:
        for word in f.read().split():
            counts[word] = counts.get(word, 0) + 1
    return counts


@task(returns=dict)
def merge(a, b):
    out = dict(a)
    for word, n in b.items():
        out[word] = out.get(word, 0) + n
    return out


@task(total=INOUT)
def accumulate(total, partial):
    for word, n in partial.items():
        total[word] = total.get(word, 0) + n


def main(directory):
    files = sorted(os.path.join(directory, f) for f in os.listdir(directory))
    partials = [count_words(f) for f in files]
    total = {}
    for p in partials:
        accumulate(total, p)
    level = partials
    while len(level) > 1:
        level = [merge(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    tree = compss_wait_on(level[0])
    total = compss_wait_on(total)
    print("RESULT", json.dumps({"tree": tree, "fold": total}, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
