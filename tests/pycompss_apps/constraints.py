"""Constraints routed by labels over three agents, and alternative implementations:
python constraints.py N. Each task returns the agent it ran on (the worker's
MESH_AGENT_NAME) so the test can check the routing."""

import json
import os
import sys
import time

from pycompss.api.api import compss_wait_on
from pycompss.api.constraint import constraint
from pycompss.api.implement import implement
from pycompss.api.task import task


def here():
    time.sleep(0.1)
    return os.environ.get("MESH_AGENT_NAME")


@constraint(processor_architecture="arm64", operating_system_type="Linux")
@task(returns=1)
def on_arm():
    return here()


@constraint(processors=[{"processorType": "GPU", "computingUnits": "1"}])
@task(returns=1)
def on_gpu():
    return here()


@constraint(computing_units="2")
@task(returns=1)
def two_units():
    return here()


@task(returns=1)
def anywhere(i):
    return ["generic", here()]


@implement(source_class="constraints", method="anywhere")
@constraint(processor_type="GPU")
@task(returns=1)
def anywhere_gpu(i):
    return ["gpu", here()]


def main(n):
    result = {
        "arm": compss_wait_on([on_arm() for _ in range(n)]),
        "gpu": compss_wait_on([on_gpu() for _ in range(n)]),
        "two": compss_wait_on([two_units() for _ in range(n)]),
        "impl": compss_wait_on([anywhere(i) for i in range(4 * n)]),
    }
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]))
