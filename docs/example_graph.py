"""The example behind docs/task-graph.png: `mesh run --graph graph.dot docs/example_graph.py`."""

from mesh import task, wait_on


@task(returns=1)
def load(i):
    return list(range(i * 4, i * 4 + 4))


@task(returns=1)
def clean(xs):
    return [x for x in xs if x % 3]


@task(returns=1)
def merge(a, b):
    return a + b


def main(parts=8):
    pieces = [clean(load(i)) for i in range(parts)]
    while len(pieces) > 1:  # pairwise reduction
        pieces = [merge(pieces[i], pieces[i + 1]) for i in range(0, len(pieces), 2)]
    return len(wait_on(pieces[0]))
