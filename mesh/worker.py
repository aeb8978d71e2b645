"""A worker process: ``python -m mesh.worker FD AGENT_NAME`` (started by the agent).

Reads calls from the socket ``FD``, runs them, writes results back (framing in
``mesh.executor``). Exits when the agent closes the socket or when the agent
process is gone. Exceptions in user code are results, never the worker's death.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback

import cbor2
import cloudpickle

from mesh import slot
from mesh.framing import FrameSocket
from mesh.taskexec import dumps

NICE = 10


_resolved: dict = {}  # "module:qualname" -> the callable (imported modules stay anyway)


def resolve(function: str):
    """``"module:qualname"`` -> the callable. Raises ImportError/AttributeError/ValueError."""
    fn = _resolved.get(function)
    if fn is not None:
        return fn
    module_name, sep, qualname = function.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"expected MODULE:FUNCTION, got {function!r}")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{function} is not callable")
    if len(_resolved) < 4096:
        _resolved[function] = obj
    return obj


def run_call(function: str, payload: bytes, want_json: bool = False) -> list:
    """Run one call; returns ``[ok, value, error_type, error, traceback, json]``."""
    try:
        if function:
            fn = resolve(function)
            args, kwargs = pickle.loads(payload)
        else:
            fn, args, kwargs = cloudpickle.loads(payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        return _failure(exc)
    try:
        text = json.dumps(value, default=repr) if want_json else ""
        return [True, dumps(value), "", "", "", text]
    except Exception as exc:
        return _failure(exc, prefix="the result could not be pickled: ")


def _failure(exc: BaseException, prefix: str = "") -> list:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = cloudpickle.dumps(exc)
        pickle.loads(blob)  # only send what the caller can rebuild
    except Exception:
        blob = b""
    return [False, blob, type(exc).__name__, prefix + str(exc), tb, ""]


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(2.0)


def main() -> None:
    fd, agent_name = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the agent's to handle
    try:
        os.nice(NICE)  # the agent's loop (heartbeats, probes) goes before user code
    except OSError:
        pass
    conn = FrameSocket(socket.socket(fileno=fd))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    os.environ["MESH_AGENT_NAME"] = agent_name
    for path in reversed(os.environ.get("APP_PATH", "").split(os.pathsep)):
        if path:
            sys.path.insert(0, path)  # where the application's modules live (containers)
    slot.channel = conn  # tasks that block on other tasks lend their slot (mesh.slot)
    conn.send(cbor2.dumps(["ready", os.getpid()]))
    while True:
        try:
            frame = conn.recv()
        except (EOFError, OSError):
            return
        call_id, function, payload, want_json, *more = cbor2.loads(frame)
        slot.call_id = call_id
        slot.inline_max, slot.put_room = more if len(more) == 2 else (0, 0)
        outcome = run_call(function, payload, want_json)
        slot.call_id = None
        conn.send(cbor2.dumps([call_id, *outcome]))


if __name__ == "__main__":
    main()
