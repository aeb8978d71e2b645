"""mDNS announce and browse for mesh agents on one chosen IPv4 interface.

What it does: registers this agent as a ``_mesh._tcp.local.`` service on one
interface (never "all interfaces"), browses that interface for other agents,
resolves them and hands each valid announcement to ``on_found``. The TXT record
carries ``id``, ``name``, ``v`` (protocol), ``port``, ``cpus`` and ``auth``;
``parse_properties`` turns anything malformed into ``None``.

What it does not do: mDNS tells who *may* exist, never who is alive. Records of
a SIGKILLed agent linger in caches until their TTL runs out and a goodbye may
never come, so removals are ignored here: liveness belongs to heartbeats. It does
not dedupe (``on_found`` may fire several times per node), check ``auth``
(reserved for signed announcements) or reach past the multicast domain (seeds and
gossip do). A failure to start is logged and kept in ``MdnsDiscovery.error``,
never raised: the agent carries on without mDNS.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

SERVICE_TYPE = "_mesh._tcp.local."
MAX_LABEL = 40  # sanitised name part of the instance label
MAX_NAME_BYTES = 64  # human name in the TXT record, UTF-8
MAX_AUTH_BYTES = 200  # one TXT string is at most 255 bytes including "auth="
RESOLVE_TIMEOUT_MS = 1500
MAX_PENDING = 256  # service names waiting to be resolved

log = logging.getLogger("mesh.discovery")
_HEX_ID = re.compile(r"[0-9a-f]{8,64}")
_UINT = re.compile(rb"[0-9]{1,5}")
_TXT_KEYS = {b"id", b"name", b"v", b"port", b"cpus", b"auth"}


@dataclass(frozen=True)
class Announcement:
    """One agent's mDNS announcement: a claim that it may exist, not that it is alive."""

    node_id: str  # hex node id, lower case
    name: str  # human name
    protocol: int  # protocol version
    host: str  # IPv4 address string from the service's addresses
    port: int  # comm port
    cpus: int
    auth: str  # "" for now; reserved for an authenticator (signed announcements)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def instance_name(name: str, node_id: str) -> str:
    """``<label>-<id[:8]>._mesh._tcp.local.``; label: ``name`` as lower-case letters,
    digits and single hyphens, at most MAX_LABEL characters ("node" if nothing is left)."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:MAX_LABEL].rstrip("-")
    return f"{label or 'node'}-{node_id[:8]}.{SERVICE_TYPE}"


def _uint(raw: object, low: int, high: int) -> int | None:
    value = int(raw) if isinstance(raw, bytes) and _UINT.fullmatch(raw) else -1
    return value if low <= value <= high else None


def _text(raw: object, limit: int, allow_empty: bool) -> str | None:
    if not isinstance(raw, bytes) or len(raw) > limit or (not raw and not allow_empty):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def parse_properties(properties: dict[bytes, bytes | None], addresses: list[str],
                     port: int) -> Announcement | None:
    """Pure: validate a resolved service's TXT record; None if malformed. Never raises.

    ``port`` (SRV) must equal TXT ``port``; the host is the first unicast IPv4
    address in ``addresses``; unknown TXT keys are ignored."""
    if not isinstance(properties, dict) or not _TXT_KEYS <= properties.keys():
        return None
    node_id = _text(properties[b"id"], 64, allow_empty=False)
    if node_id is None or not _HEX_ID.fullmatch(node_id.lower()):
        return None
    name = _text(properties.get(b"name"), MAX_NAME_BYTES, allow_empty=False)
    raw_auth = properties[b"auth"]  # a key without "=" decodes to None: no authenticator
    auth = _text(b"" if raw_auth is None else raw_auth, MAX_AUTH_BYTES, allow_empty=True)
    protocol = _uint(properties.get(b"v"), 0, 65535)
    txt_port = _uint(properties.get(b"port"), 1, 65535)
    cpus = _uint(properties.get(b"cpus"), 0, 65535)
    if None in (name, auth, protocol, cpus, txt_port) or type(port) is not int or port != txt_port:
        return None
    for candidate in addresses if isinstance(addresses, (list, tuple)) else ():
        try:
            ip = ipaddress.IPv4Address(candidate)
        except ValueError:
            continue
        if not (ip.is_unspecified or ip.is_multicast or ip.is_reserved):
            return Announcement(node_id.lower(), name, protocol, str(ip), txt_port, cpus, auth)
    return None


class MdnsDiscovery:
    """Announce this agent and browse for others on one IPv4 interface.

    ``on_found`` runs in a resolver thread, maybe several times per node, never
    for our own ``node_id``; its exceptions are logged. ``close()`` is idempotent."""

    def __init__(self, interface: str, node_id: str, name: str, comm_port: int, cpus: int,
                 protocol: int, on_found: Callable[[Announcement], None], auth: str = "") -> None:
        """Raises ValueError if our own announcement would not pass parse_properties."""
        self.interface = interface
        self.node_id = node_id.lower()
        self.service_name = instance_name(name, self.node_id)
        self.on_found = on_found
        self.error: str | None = None  # why mDNS is not working, if it is not
        txt_name = "".join(c for c in name if c.isprintable()).encode()[:MAX_NAME_BYTES]
        txt_name = txt_name.decode("utf-8", "ignore").encode() or b"node"  # no split characters
        self._properties = {b"id": self.node_id.encode(), b"name": txt_name, b"auth": auth.encode(),
                            **{k: str(v).encode() for k, v in
                               ((b"v", protocol), (b"port", comm_port), (b"cpus", cpus))}}
        if parse_properties(self._properties, ["127.0.0.1"], comm_port) is None:
            raise ValueError(f"cannot announce {self._properties!r} with port {comm_port!r}")
        self._lock = threading.Lock()
        self._closed = False
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._registration: concurrent.futures.Future | None = None
        self._resolving: concurrent.futures.Future | None = None
        self._pending: set[str] = set()
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=MAX_PENDING + 1)
        self._resolver = threading.Thread(target=self._resolve_loop, daemon=True,
                                          name=f"mdns-resolver-{self.node_id[:8]}")

    def start(self) -> None:
        """Open zeroconf on the interface, register in its loop (~1.6 s), browse; quick.
        Never raises for network trouble: logs a WARNING and sets ``error``. Idempotent."""
        with self._lock:
            if self._closed or self._zc is not None or self.error is not None:
                return
            try:  # a str in dotted form only: Zeroconf reads an int as an IPv6 interface index
                ip = ipaddress.IPv4Address(str(self.interface))
                if ip.is_unspecified or ip.is_multicast:
                    raise ValueError("not a unicast address")
                self._zc = Zeroconf(interfaces=[str(ip)])
            except Exception as exc:  # mDNS is optional, anything here is non-fatal
                return self._fail(f"cannot start mDNS on {self.interface!r}: {exc}")
            info = ServiceInfo(SERVICE_TYPE, self.service_name, port=int(self._properties[b"port"]),
                               properties=self._properties, addresses=[ip.packed],
                               server=self.service_name[: -len(SERVICE_TYPE)] + "local.")
            assert self._zc.loop is not None  # Zeroconf() waits for its loop thread
            self._registration = asyncio.run_coroutine_threadsafe(self._register(self._zc, info),
                                                                  self._zc.loop)
            self._resolver.start()
            try:
                self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])
            except Exception as exc:
                return self._fail(f"cannot browse mDNS on {self.interface}: {exc}")
        log.info("mDNS on %s: announcing %s", self.interface, self.service_name)

    def close(self) -> None:
        """Withdraw (goodbye packets, best effort, bounded ~1 s) and stop. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            zc, browser, self._zc, self._browser = self._zc, self._browser, None, None
        for future in (self._registration, self._resolving):  # a probe or a lookup in flight
            if future is not None:
                future.cancel()
        with contextlib.suppress(queue.Full):  # if full, the resolver sees _closed
            self._queue.put_nowait(None)
        for stop in [s for s in (browser and browser.cancel, zc and zc.close) if s]:
            try:
                stop()  # zc.close() sends goodbyes (3 x 125 ms) for what is registered
            except Exception:
                log.warning("mDNS close on %s failed", self.interface, exc_info=True)
        if self._resolver.is_alive() and self._resolver is not threading.current_thread():
            self._resolver.join(timeout=1.0)

    def _fail(self, message: str) -> None:
        self.error = message
        log.warning("%s; carrying on without mDNS (use seed peers)", message)
        if self._registration is not None:
            self._registration.cancel()
        if self._zc is not None:
            self._zc, zc = None, self._zc
            zc.close()

    async def _register(self, zc: Zeroconf, info: ServiceInfo) -> None:
        """Probe (~1.2 s), then announce 3 times (~0.45 s); runs in zeroconf's loop, on
        ``zc``, the Zeroconf that ``start`` opened: ``close`` (another thread) may take
        ``self._zc`` away before this coroutine even begins, and whatever the closing
        Zeroconf raises then is the close's doing, not a failure to report."""
        try:
            await (await zc.async_register_service(info, allow_name_change=True))
            log.debug("mDNS registered %s", info.name)
        except Exception as exc:  # CancelledError (close) is a BaseException and passes
            if self._closed:
                log.debug("mDNS registration of %s ended by close(): %r", self.service_name, exc)
                return
            self.error = f"mDNS registration of {self.service_name} failed: {exc!r}"
            log.warning("%s", self.error)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        """Runs in zeroconf's browser thread: only queue, never block."""
        if state_change is ServiceStateChange.Removed:
            log.debug("mDNS goodbye from %s (not a liveness signal)", name)
            return
        with self._lock:
            if self._closed or name in self._pending or len(self._pending) >= MAX_PENDING:
                return
            self._pending.add(name)
        self._queue.put_nowait(name)

    def _resolve_loop(self) -> None:
        while True:
            name = self._queue.get()
            with self._lock:
                if name is None or self._closed:
                    return
                self._pending.discard(name)
                zc = self._zc
            try:  # in zeroconf's loop, through a future that close() can cancel
                info = ServiceInfo(SERVICE_TYPE, name)
                assert zc is not None and zc.loop is not None
                self._resolving = asyncio.run_coroutine_threadsafe(
                    info.async_request(zc, RESOLVE_TIMEOUT_MS), zc.loop)
                if not self._resolving.result(RESOLVE_TIMEOUT_MS / 1000 + 1.0):
                    log.debug("mDNS could not resolve %s", name)
                    continue
                addresses = info.parsed_addresses(IPVersion.V4Only)
                found = parse_properties(info.properties, addresses, info.port)
            except Exception:  # a peer's bad record, a closing zeroconf, a cancel
                log.debug("mDNS resolving %s failed", name, exc_info=True)
                continue
            if found is None:
                log.debug("mDNS ignoring malformed announcement %s", name)
            elif found.node_id != self.node_id and not self._closed:
                try:
                    self.on_found(found)
                except Exception:
                    log.exception("on_found raised for %s at %s", found.node_id, found.address)
