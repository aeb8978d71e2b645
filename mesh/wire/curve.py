"""ZeroMQ socket helpers that both ends of a TCP connection share: making a socket a
CURVE client of the mesh, and reading a socket monitor's events (which handshakes
failed, which connections came and went). The agent's transport (``mesh.agent.transport``)
and the client's link (``mesh.client.link``) both use them; neither imports the other.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from mesh.keys import MeshKey

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a ZeroMQ socket-monitor message (first frame: uint16 event,
    uint32 value). Parsed here because ``zmq.utils.monitor`` imports asyncio and ssl,
    which would cost an idle agent ~8 MB."""
    if not frames or len(frames[0]) < 6:
        return 0
    return struct.unpack("=HI", frames[0][:6])[0]


def curve_client(sock: zmq.Socket, key: MeshKey | None) -> None:
    """Make ``sock`` a CURVE client of the mesh (no-op without a key)."""
    if key is None:
        return
    public, secret = key.curve_keypair()
    sock.setsockopt(zmq.CURVE_SERVERKEY, public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
