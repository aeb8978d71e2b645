"""K-means (the PyCOMPSs tutorial's shape): points in fragments, a task per fragment
computes partial sums against the current centres, a reduce merges them, the program
moves the centres; a fixed number of iterations: python kmeans.py POINTS FRAGMENTS K ITERATIONS SEED"""

import json
import random
import sys

from pycompss.api.api import compss_wait_on
from pycompss.api.task import task


@task(returns=list)
def generate_fragment(n, seed):
    rng = random.Random(seed)
    return [[rng.uniform(0, 10), rng.uniform(0, 10)] for _ in range(n)]


@task(returns=dict)
def partial_sum(fragment, centres):
    sums = {}
    for p in fragment:
        best = min(range(len(centres)),
                   key=lambda c: (p[0] - centres[c][0]) ** 2 + (p[1] - centres[c][1]) ** 2)
        s = sums.setdefault(best, [0.0, 0.0, 0])
        s[0] += p[0]
        s[1] += p[1]
        s[2] += 1
    return sums


@task(returns=dict)
def reduce_sums(a, b):
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        s = out.setdefault(k, [0.0, 0.0, 0])
        s[0] += v[0]
        s[1] += v[1]
        s[2] += v[2]
    return out


def main(points, fragments, k, iterations, seed):
    frags = [generate_fragment(points // fragments, seed + i) for i in range(fragments)]
    first = compss_wait_on(frags[0])
    centres = [list(p) for p in first[:k]]
    for _ in range(iterations):
        partials = [partial_sum(f, centres) for f in frags]
        while len(partials) > 1:
            partials = [reduce_sums(partials[i], partials[i + 1]) if i + 1 < len(partials) else partials[i]
                        for i in range(0, len(partials), 2)]
        sums = compss_wait_on(partials[0])
        centres = [[sums[c][0] / sums[c][2], sums[c][1] / sums[c][2]] if c in sums else centres[c]
                   for c in range(k)]
    print("RESULT", json.dumps([[round(x, 9) for x in c] for c in centres]))


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:6]])
