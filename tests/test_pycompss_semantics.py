"""Programs in the shape of the PyCOMPSs tutorials on real agents, checked against the
values PyCOMPSs gives them (issue 16): each test pins one semantic PyCOMPSs users rely on."""

from __future__ import annotations

import pytest

import mesh
from mesh.program.api import INOUT, task, wait_on
from tests.conftest import wait_for

pytestmark = [pytest.mark.agents, pytest.mark.timeout(120)]


@task(c=INOUT, returns=0)
def multiply(a, b, c):
    """c += a @ b, blocks as lists of lists (the tutorial's matmul, without numpy)."""
    n = len(c)
    for i in range(n):
        for j in range(n):
            c[i][j] += sum(a[i][k] * b[k][j] for k in range(n))


def block(seed: int, n: int) -> list:
    return [[float((seed * 7 + i * n + j) % 11) for j in range(n)] for i in range(n)]


def matmul_expected(A, B, blocks: int, n: int) -> list:
    C = [[[[0.0] * n for _ in range(n)] for _ in range(blocks)] for _ in range(blocks)]
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                a, b, c = A[i][k], B[k][j], C[i][j]
                for x in range(n):
                    for y in range(n):
                        c[x][y] += sum(a[x][z] * b[z][y] for z in range(n))
    return C


@pytest.fixture
def two_agents(agents):
    a = agents.start("sem0", cpus=2)
    agents.start("sem1", "--peer", a.comm, cpus=2)
    client = mesh.connect(a.comm)
    wait_for(lambda: any(p["name"] == "sem1" and p["state"] == "alive"
                         for p in client.query("peers")), 15, "sem0 to see sem1")
    yield a
    client.close()


def test_wait_on_a_nested_list_of_inout_blocks_returns_their_latest_versions(two_agents):
    """The tutorial's blocked matmul: C[i][j] INOUT, updated by tasks; ``C = wait_on(C)``
    synchronises every block, as PyCOMPSs does (not only futures)."""
    blocks, n = 3, 4
    A = [[block(i * blocks + j, n) for j in range(blocks)] for i in range(blocks)]
    B = [[block(100 + i * blocks + j, n) for j in range(blocks)] for i in range(blocks)]
    expected = matmul_expected(A, B, blocks, n)
    C = [[[[0.0] * n for _ in range(n)] for _ in range(blocks)] for _ in range(blocks)]
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                multiply(A[i][k], B[k][j], C[i][j])
    # inside tuples and dicts too, mixed with plain values
    got = wait_on({"c": (C[0][0], [C[2][2]]), "k": 5})
    assert got == {"c": (expected[0][0], [expected[2][2]]), "k": 5}
    one = wait_on(C[1][2])  # one block on its own
    assert one == expected[1][2]
    C = wait_on(C)
    assert C == expected
