"""Blocked matrix multiplication with INOUT blocks (the PyCOMPSs tutorial's matmul,
lists of lists instead of numpy): python matmul.py BLOCKS BSIZE SEED"""

import json
import sys

from pycompss.api.api import compss_barrier, compss_wait_on
from pycompss.api.parameter import INOUT
from pycompss.api.task import task


def generate_block(size, seed):
    return [[float((seed * 7 + i * size + j) % 11) for j in range(size)] for i in range(size)]


@task(c=INOUT)
def multiply(a, b, c):
    n = len(c)
    for i in range(n):
        for j in range(n):
            c[i][j] += sum(a[i][k] * b[k][j] for k in range(n))


def main(blocks, size, seed):
    A = [[generate_block(size, seed + i * blocks + j) for j in range(blocks)] for i in range(blocks)]
    B = [[generate_block(size, seed + 100 + i * blocks + j) for j in range(blocks)] for i in range(blocks)]
    C = [[[[0.0] * size for _ in range(size)] for _ in range(blocks)] for _ in range(blocks)]
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                multiply(A[i][k], B[k][j], C[i][j])
    compss_barrier()
    C = compss_wait_on(C)
    print("RESULT", json.dumps(C))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
