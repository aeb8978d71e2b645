"""The agent: the thin I/O shell of one device. One loop owns the sockets (transport,
local socket), the worker pool and the timers, turns what arrives into events for the
pure cores (``mesh.discovery``, ``mesh.tree``, ``mesh.sched``) and carries out the
actions they return; ``agent`` says which part does what. ``worker`` is the process that
runs calls.

May import: ``mesh.wire``, the pure cores, ``mesh.keys``, ``mesh.errors`` (and, in the
worker process only, ``mesh.program``, whose task bodies it runs). Never the faces."""
