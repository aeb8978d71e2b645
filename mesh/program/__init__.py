"""The program side: the task API (``@task``, ``wait_on``, ...: ``api``), the runtime that
turns task calls into a graph and sends ready tasks through a client (``runtime``, with its
parts ``calls`` and ``recovery``; ``lineage`` is recovery's pure bookkeeping), the one
container walk (``containers``), alternative implementations (``implement``), what runs
inside a worker for a task (``taskexec``, ``slot``), and running a script's ``main``
(``runner``).

May import: ``mesh.client.client``, ``mesh.wire``, the pure cores (``mesh.sched``), ``mesh.errors``."""
