"""The program side: the task API (``@task``, ``wait_on``, ...), the runtime that turns
task calls into a graph and sends ready tasks through a client, lineage (recomputing
lost outputs), what runs inside a worker for a task, and running a script's ``main``.

May import: ``mesh.client.client``, ``mesh.wire``, the pure cores (``mesh.sched``), ``mesh.errors``."""
