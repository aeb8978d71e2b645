"""What the membership core asks the agent's shell to do (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire.messages import Message


@dataclass(frozen=True)
class Connect:
    address: str


@dataclass(frozen=True)
class Disconnect:
    address: str


@dataclass(frozen=True)
class Send:
    """Send over our own connection to ``address``."""

    address: str
    message: Message


@dataclass(frozen=True)
class Reply:
    """Send back over our ROUTER to the connection ``identity`` that reached us."""

    identity: bytes
    message: Message


@dataclass(frozen=True)
class MemberChanged:
    """A member changed state (``old`` is "new" for a member just learnt)."""

    node_id: str
    name: str
    old: str
    new: str
    incarnation: int = 0


@dataclass(frozen=True)
class DeclaredDead:
    """Others declared this node dead (it was frozen or cut off) at ``incarnation``; it
    has refuted, but what it delegated or held may have been re-placed meanwhile."""

    incarnation: int


@dataclass(frozen=True)
class Forgotten:
    """A dead or left member was forgotten (``forget_after``, or evicted to make room):
    it is not in the table any more, and will not come back under this id; what other
    parts keep about it may go."""

    node_id: str


Action = Connect | Disconnect | Send | Reply | MemberChanged | DeclaredDead | Forgotten
