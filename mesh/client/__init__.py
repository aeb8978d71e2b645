"""The client: a program's link to one agent (its local socket, or ZeroMQ with CURVE),
the requests it sends and the futures its caller holds.

May import: ``mesh.wire``, ``mesh.keys``, ``mesh.errors``, and the rules it shares with
agents: ``mesh.sched.leases`` (its side of the leases on calls), ``mesh.sched.objects``
(``ObjectLost``), ``mesh.program.taskexec`` (a call run in the program itself).
``connect`` and ``Client`` are also ``mesh.connect`` and ``mesh.Client``."""


def __getattr__(name: str):
    # the public names, without importing ZeroMQ until one is used
    if name in ("connect", "Client", "default_client", "result_value"):
        from mesh.client import client

        return getattr(client, name)
    raise AttributeError(f"module 'mesh.client.client' has no attribute {name!r}")
