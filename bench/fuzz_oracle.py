"""What the agent should make of each fuzz frame, and which frames the fuzzer withholds.

The `fuzz` scenario decodes every frame it sends with the agent's own codec
(`mesh.wire.messages.decode`) and follows the agent's routing (`mesh.agent.input`) to say
what the agent must do with it: drop it for a reason (the reasons of its `dropped`
counters), or take it (a message of some type). Summed over a run this is what the agent's
counters must show; the difference is unexplained. Where the outcome depends on the
agent's state (a frame from the puppet member counts as a member's only while the agent
knows it), it is `maybe`: explained either way.

A decodable frame is a real request from an authenticated peer, and the agent acts on it.
The fuzzer withholds (never sends, counts by why) the few that would harm the machine or
end the run rather than test the agent: Calls that would import a module other than a few
harmless ones, or unpickle a global other than `builtins.abs`; Resources that the agent
would carry out (more worker processes, fewer slots, links to other hosts); the puppet
member's own Leave and gossip that it left (both final for its id). A local decode that
raises anything but `DecodeError` predicts a crash of the agent (`crash`).
"""

from __future__ import annotations

import importlib.util
import pickletools
import traceback
from collections import Counter
from dataclasses import dataclass, field

from mesh.errors import DecodeError
from mesh.wire import messages as m

ROUTER_CHANNELS = ("member", "client", "tagged", "local")  # what reaches the agent's ROUTER side
CHANNELS = (*ROUTER_CHANNELS, "reply")  # reply: the puppet answering on the agent's own DEALER
INPUT_REASONS = ("cbor", "version", "type", "field", "oversized", "frames", "identity", "unexpected",
                 "tree_advert")

SAFE_FUNCTIONS = frozenset(("operator:add", "operator:sub", "operator:eq", "operator:lt",
                            "operator:neg", "operator:not_", "operator:truth", "builtins:abs"))
ALLOWED_GLOBALS = frozenset((("builtins", "abs"),))
_UNICODE_PUSH = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
BIG = 16 * 1024  # frames from this size on: predictions kept (by channel and content)
_BAD_OPS = ("INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID")


@dataclass
class Outcome:
    """What one sent item (a frame, or a ZeroMQ multipart message) should do to the agent."""

    drops: Counter = field(default_factory=Counter)  # reason -> count, certain
    maybe: Counter = field(default_factory=Counter)  # reason -> count, depends on state
    taken: Counter = field(default_factory=Counter)  # message type -> count
    crash: str | None = None  # signature of the exception a local decode raised
    withheld: str | None = None  # why the fuzzer does not send it

    def add(self, other: Outcome) -> None:
        self.drops.update(other.drops)
        self.maybe.update(other.maybe)
        self.taken.update(other.taken)
        self.crash = self.crash or other.crash
        self.withheld = self.withheld or other.withheld


def crash_signature(exc: BaseException) -> str:
    """`Type@file:line` of the innermost frame in mesh/ (or the innermost at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/mesh/" in f.filename]
    if ours:
        return f"{type(exc).__name__}@mesh/{ours[-1].filename.rsplit('/mesh/', 1)[1]}:{ours[-1].lineno}"
    if frames:
        return f"{type(exc).__name__}@{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}"
    return f"{type(exc).__name__}@?"


class Oracle:
    def __init__(self, member_id: str, max_frame: int = m.MAX_FRAME) -> None:
        self.member_id = member_id
        self.max_frame = max_frame
        self._big: dict[tuple[str, bytes], Outcome] = {}

    def predict(self, channel: str, parts: list[bytes]) -> Outcome:
        out = Outcome()
        if channel == "reply":  # the agent's DEALER reads one part at a time
            for part in parts:
                out.add(self._frame(channel, part))
            return out
        if channel == "local":
            for part in parts:
                out.add(self._frame(channel, part))
            return out
        if len(parts) != 1:  # (the ROUTER prepends the identity: the agent wants 2 parts)
            out.drops["frames"] += 1
            return out
        if channel == "tagged":
            out.drops["identity"] += 1
            return out
        return self._frame(channel, parts[0])

    def frame(self, channel: str, frame: bytes) -> Outcome:
        """What one frame read alone should do (a `reply` part, one frame on `local`)."""
        return self._frame(channel, frame)

    def _frame(self, channel: str, frame: bytes) -> Outcome:
        if len(frame) < BIG:
            return self._decide(channel, frame)
        key = (channel, frame)  # (big frames are mostly sent again: bench.fuzz_frames.HEAVY)
        out = self._big.get(key)
        if out is None:
            if len(self._big) >= 256:
                self._big.clear()
            out = self._big[key] = self._decide(channel, frame)
        return out

    def _decide(self, channel: str, frame: bytes) -> Outcome:
        out = Outcome()
        try:
            msg = m.decode(frame, self.max_frame)
        except DecodeError as exc:
            out.drops[exc.reason] += 1
            return out
        except Exception as exc:  # noqa: BLE001 - what the agent would raise too
            out.crash = crash_signature(exc)
            return out
        if type(msg) is m.Batch:
            out.taken["batch"] += 1
            for inner in msg.frames:
                try:
                    one = m.decode(inner, self.max_frame)
                except DecodeError as exc:
                    out.drops[exc.reason] += 1
                    continue
                except Exception as exc:  # noqa: BLE001
                    out.crash = crash_signature(exc)
                    return out
                if type(one) is m.Batch:
                    out.drops["type"] += 1
                else:
                    self._route(channel, one, out)
            return out
        self._route(channel, msg, out)
        return out

    def _route(self, channel: str, msg: m.Message, out: Outcome) -> None:
        """`mesh.agent.input`: `_on_router` for the ROUTER side, `_on_dealer` for replies."""
        why = self.withhold(channel, msg)
        if why is not None:
            out.withheld = why
            return
        tag = msg.TAG
        member = channel in ("member", "reply")  # (while the agent knows the puppet)
        if channel == "reply":
            if isinstance(msg, (m.Pong, m.IndirectAck, m.Nack, m.Object)):
                out.taken[tag] += 1
            elif isinstance(msg, (m.Result, m.Handback, m.Held)):
                out.taken[tag] += 1
                out.maybe["unexpected"] += 1
            else:
                out.drops["unexpected"] += 1
            return
        if isinstance(msg, (m.Ping, m.PingReq, m.Leave, m.Call, m.Cancel, m.Fetch, m.Free, m.Query,
                            m.Resources, m.Holds)):
            out.taken[tag] += 1
        elif isinstance(msg, m.TreeAdvert):
            if member and msg.sender == self.member_id:
                out.taken[tag] += 1
                out.maybe["tree_advert"] += 1
            else:
                out.drops["tree_advert"] += 1
        elif isinstance(msg, (m.Result, m.Handback, m.Reclaim, m.Held)):
            if member:
                out.taken[tag] += 1
                out.maybe["unexpected"] += 1
            else:
                out.drops["unexpected"] += 1
        else:
            out.drops["unexpected"] += 1

    # ------------------------------------------------------------------ withheld

    def withhold(self, channel: str, msg: m.Message) -> str | None:
        if isinstance(msg, m.Call):
            if msg.function and not safe_function(msg.function):
                return "call_module"
            if not pickle_safe(msg.payload):
                return "call_pickle"
            return None
        if isinstance(msg, m.Resources):
            return "resources" if resources_apply(msg) else None
        if isinstance(msg, m.Leave) and channel == "member" and msg.node_id == self.member_id:
            return "member_leave"
        gossip = getattr(msg, "gossip", None)
        if gossip and any(d.id == self.member_id and d.state == "left" for d in gossip):
            return "member_left_gossip"
        return None


def safe_function(function: str) -> bool:
    """A worker may resolve `function` without importing anything that acts: one of a few
    harmless functions, or a name whose import fails (no such top-level module)."""
    if function in SAFE_FUNCTIONS:
        return True
    module, sep, qualname = function.partition(":")
    if not sep or not module or not qualname or module.startswith("."):
        return True  # the worker refuses it before importing
    try:
        return importlib.util.find_spec(module.split(".")[0]) is None
    except (ImportError, ValueError):
        return False


def pickle_safe(data: bytes) -> bool:
    """Unpickling `data` can reach no global but `ALLOWED_GLOBALS` (opcodes are checked up to
    where the pickle breaks: the unpickler stops there too)."""
    recent: list[tuple[str, object]] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "MEMOIZE":
                continue
            if name in _BAD_OPS:
                return False
            if name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                if (module, qualname) not in ALLOWED_GLOBALS:
                    return False
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or any(n not in _UNICODE_PUSH for n, _ in recent[-2:]) \
                        or (recent[-2][1], recent[-1][1]) not in ALLOWED_GLOBALS:
                    return False
            recent.append((name, arg))
            del recent[:-2]
    except Exception:  # noqa: BLE001 - a broken pickle: what came before it was checked
        pass
    return True


def resources_apply(req: m.Resources) -> bool:
    """`mesh.agent.queries.change_resources` would act on it (not answer an error)."""
    if req.action in ("add", "reduce") and req.cpus:
        return 0 < req.cpus <= 1024
    if req.action == "add" and req.peer:
        host, sep, port = req.peer.rpartition(":")
        return bool(sep and host and port.isdigit())
    return False
