"""The task bodies the `tasks` scenario runs on every system (mesh, Dask, raw pyzmq).

Plain module-level functions, so cloudpickle sends them by reference on every system alike
(the workers import this module: children get the repo root on PYTHONPATH)."""

from __future__ import annotations


def noop(i=None):
    return None


def leaf(i):
    return i


def add(a, b):
    return a + b
