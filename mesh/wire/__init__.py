"""The wire: every message once (fields, CBOR codec, validation, protocol version),
the framing of streams, the local socket's path and trust rules, the poller that
waits on ZeroMQ sockets and plain descriptors, and the ZeroMQ helpers both ends of a TCP
connection share (CURVE, socket-monitor events).

May import: ``mesh.errors`` (and ``mesh.keys``, for type hints); no core: the records the
cores put on the wire (``NodeInfo``, ``Digest``, ``Advert``, ...) are defined here, and the
cores take them from here. Imported by everything that talks to another process."""
