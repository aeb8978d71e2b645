"""A PyCOMPSs application started through COMPSs' REST (compss_agent_call_operation
--lang=PYTHON --method_name=main tests.pycompss_apps.agent_app N): its main is a @task,
which COMPSs runs as the application itself; N arrives as a string."""

from pycompss.api.api import compss_barrier, compss_wait_on
from pycompss.api.parameter import INOUT
from pycompss.api.task import task


@task(returns=1)
def square(x):
    return x * x


@task(acc=INOUT)
def add_to(acc, value):
    acc.append(value)


@task(returns=1)
def main(n):
    acc = []
    squares = [square(i) for i in range(int(n))]
    for s in squares:
        add_to(acc, s)
    compss_barrier()
    total = sum(compss_wait_on(acc))
    print(f"agent_app main({n}) = {total}", flush=True)  # (in the agent's log)
    return total
