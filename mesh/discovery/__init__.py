"""Discovery: who is in the mesh and who is alive. ``membership`` is the pure SWIM +
Lifeguard core (``Membership``, made of ``members``, ``outbox``, ``dialer`` and
``probing``; Lifeguard's pieces in ``detector``, timings in ``timing``); ``mdns`` is the
shell's adapter that announces this agent and hears others (zeroconf, a thread).

May import: ``mesh.wire`` (the records and messages it sends) and ``mesh.errors``; the
core never a socket, a thread or a clock (``mdns`` aside), and nothing above it."""
