"""The wire: every message once (fields, CBOR codec, validation, protocol version),
the framing of streams, the local socket's path and trust rules, the poller that
waits on ZeroMQ sockets and plain descriptors, and the ZeroMQ helpers both ends of a TCP
connection share (CURVE, socket-monitor events).

May import: ``mesh.errors`` and the record types of the pure cores it carries. Imported by
everything that talks to another process."""
