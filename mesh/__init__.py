"""mesh: a peer-to-peer compute mesh for edge devices.

Agents (``python -m mesh join``) find each other, measure each other and run
Python functions for each other. This module is the public Python API; it imports
lazily so that worker processes and the CLI start fast.
"""

from __future__ import annotations

from mesh.errors import AgentUnreachable, MeshError, RemoteError

__version__ = "0.1.0"
__all__ = ["connect", "Client", "MeshError", "AgentUnreachable", "RemoteError", "__version__",
           "task", "constraint", "implement", "wait_on", "wait_on_file", "barrier", "barrier_group",
           "delete_object", "delete_file", "open_file", "TaskGroup", "TaskFuture", "TaskFailed",
           "TaskCancelled", "TaskTimedOut", "COMPSsException", "Collection",
           "IN", "OUT", "INOUT", "FILE_IN", "FILE_OUT", "FILE_INOUT", "COLLECTION_IN",
           "COLLECTION_INOUT", "COLLECTION_OUT"]
_API = frozenset(__all__[6:])


def __getattr__(name: str):
    if name in ("connect", "Client"):
        from mesh.client import client

        return getattr(client, name)
    if name in _API:
        from mesh.program import api

        return getattr(api, name)
    raise AttributeError(f"module 'mesh' has no attribute {name!r}")
