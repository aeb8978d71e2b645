"""How an agent carries out what its cores decide: one table from action type to the
part that carries it out.

The cores (``Membership``, ``Dispatcher``, ``LatencyTree``, ``Objects``) return actions;
``Actions.do`` runs each by the handler registered for its exact type. Each part of the
agent registers the handlers of the actions it owns in its own constructor (the outbox:
sends and replies; the slots: running and stopping calls here; the peers: what a
member's change means for the other cores; the object service: giving and fetching
objects), so that "who carries out X" is answered by grepping ``handle(X``. A type
registered twice is a bug (``ValueError``); an action of no registered type is one too
(``TypeError``). A handler that raises costs that action only: the exception is counted
and logged with the action (``mesh.agent.faults``) and ``do`` goes on with the next.
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.agent.faults import Faults, describe


class Actions:
    """Action type -> the method that carries it out, and ``do``."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._handlers: dict[type, Callable] = {}

    def handle(self, kind: type, handler: Callable) -> None:
        """Carry out actions of type ``kind`` (and its subclasses) by ``handler(act, now)``."""
        if kind in self._handlers:
            raise ValueError(f"{kind.__name__} already has a handler")
        self._handlers[kind] = handler

    def do(self, actions: list, now: float) -> None:
        """Carry out ``actions`` in order (this is the whole of the shell's job)."""
        handlers = self._handlers
        for act in actions:
            try:
                handler = handlers.get(type(act))
                if handler is None:
                    handler = self._handler_of(act)
                handler(act, now)
            except Exception as exc:  # (a bug, or a resource refused: that action only)
                self.faults.caught(f"action:{type(act).__name__}", f"carrying out {describe(act)}",
                                   exc, now)

    def _handler_of(self, act) -> Callable:
        """The handler of an action whose exact type is not in the table (a subclass)."""
        for kind, handler in self._handlers.items():
            if isinstance(act, kind):
                return handler
        raise TypeError(f"unknown action {act!r}")
