"""Frames lost on purpose, as a link that stays up loses them: a test knob, installed only
when asked for.

``MESH_EMULATE_LOSS`` (a JSON object) in an agent's or a program's environment makes it lose
some of the messages it sends, silently, as a full queue or a connection reset would: the
connection stays up, membership sees nothing. Keys:

* in an agent: ``"peers"``, {member name: probability}: messages it sends that member (over
  its connection to it, or as replies on that member's connection to it); ``"clients"``, a
  probability: messages to its clients (results, answers);
* in a program (``mesh.client``): ``"agent"``, a probability: messages it sends its agent
  (calls, lease questions, cancels, pings);
* ``"kinds"``: only messages of these wire tags are lost (``call``, ``result``, ``holds``,
  ``held``, ...; default: any); ``"seconds"``: only this long after the knob is installed
  (default: for ever); ``"seed"``: of the random stream (default 0).

Only a wrapper reads it: ``LossyTransport`` around an agent's ``Transport``, ``LossyLink``
around a client's ``Link``, made when the variable is set (``install_transport``,
``install_link``); the agent and the client import this module only then: no cost
otherwise. Real deployments never set it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time

from mesh.errors import DecodeError
from mesh.wire import messages as m

log = logging.getLogger("mesh.loss")

ENV = "MESH_EMULATE_LOSS"


def from_env(env: dict | None = None) -> dict | None:
    """The knob's settings, or None when unset or malformed (logged)."""
    text = (os.environ if env is None else env).get(ENV, "")
    if not text:
        return None
    try:
        table = json.loads(text)
        if not isinstance(table, dict):
            raise ValueError("not an object")
        peers = {str(k): float(v) for k, v in table.get("peers", {}).items()}
        rates = [*peers.values(), float(table.get("clients", 0)), float(table.get("agent", 0))]
        if any(not 0 <= p <= 1 for p in rates):
            raise ValueError("probabilities are between 0 and 1")
        kinds = table.get("kinds")
        settings = {"peers": peers, "clients": float(table.get("clients", 0)),
                    "agent": float(table.get("agent", 0)),
                    "kinds": None if kinds is None else frozenset(map(str, kinds)),
                    "seconds": None if table.get("seconds") is None else float(table["seconds"]),
                    "seed": int(table.get("seed", 0))}
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s (%s): expected e.g. {\"peers\": {\"name\": 0.5}, \"clients\": "
                    "0.1, \"agent\": 0.1, \"kinds\": [\"call\"], \"seconds\": 5}", ENV, exc)
        return None
    log.warning("losing frames on purpose (test knob %s): %s", ENV, text)
    return settings


class Loss:
    """Decides, message by message, which are lost (see the module docstring)."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.rng = random.Random(settings["seed"])
        seconds = settings["seconds"]
        self.until = None if seconds is None else time.monotonic() + seconds
        self.lost = 0

    def lose(self, probability: float, frame: bytes) -> bool:
        if not probability or (self.until is not None and time.monotonic() > self.until):
            return False
        kinds = self.settings["kinds"]
        if kinds is not None:
            try:
                if m.decode(frame).TAG not in kinds:
                    return False
            except DecodeError:
                return False
        if self.rng.random() >= probability:
            return False
        self.lost += 1
        return True


class LossyTransport:
    """An agent's ``Transport`` whose ``send`` and ``reply`` lose messages as the knob says;
    everything else is the transport's. ``members``: the agent's ``Membership`` (the name
    of the member at an address, or of a connection on our ROUTER; none: a client)."""

    def __init__(self, transport, loss: Loss, members) -> None:
        self._transport = transport
        self._loss = loss
        self._members = members

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def send(self, address: str, frame: bytes) -> bool:
        member = self._members.member_at(address)
        p = 0.0 if member is None else self._loss.settings["peers"].get(member.info.name, 0.0)
        if self._loss.lose(p, frame):
            return True  # (as a full pipe: the sender is none the wiser)
        return self._transport.send(address, frame)

    def reply(self, identity: bytes, frame: bytes) -> bool:
        member = self._members.members.get(identity.hex()) if len(identity) == 16 else None
        settings = self._loss.settings
        p = settings["clients"] if member is None else settings["peers"].get(member.info.name, 0.0)
        if self._loss.lose(p, frame):
            return True
        return self._transport.reply(identity, frame)


class LossyLink:
    """A client's ``Link`` whose sends lose messages to the agent as the knob says (each
    message of a batch on its own); everything else is the link's."""

    def __init__(self, link, loss: Loss) -> None:
        self._link = link
        self._loss = loss

    def __getattr__(self, name: str):
        return getattr(self._link, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._link, name, value)

    def _thin(self, frame: bytes) -> bytes | None:
        p = self._loss.settings["agent"]
        try:
            msg = m.decode(frame)
        except DecodeError:
            return frame
        if type(msg) is not m.Batch:
            return None if self._loss.lose(p, frame) else frame
        kept = [f for f in msg.frames if not self._loss.lose(p, f)]
        return m.encode(m.Batch(kept)) if kept else None

    def try_send(self, frame: bytes) -> bool:
        thinned = self._thin(frame)
        return True if thinned is None else self._link.try_send(thinned)

    def send(self, frame: bytes) -> bool:
        thinned = self._thin(frame)
        return True if thinned is None else self._link.send(thinned)


def install_transport(transport, members, env: dict | None = None):
    """The agent's transport, wrapped when the knob is set (``members``: its Membership)."""
    settings = from_env(env)
    if settings is None:
        return transport
    return LossyTransport(transport, Loss(settings), members)


def install_link(link, env: dict | None = None):
    """The client's link, wrapped when the knob is set."""
    settings = from_env(env)
    if settings is None or not settings["agent"]:
        return link
    return LossyLink(link, Loss(settings))
