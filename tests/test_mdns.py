"""Tests for mesh.discovery.mdns.

Pure tests push TXT records through parse_properties. Network tests use real
python-zeroconf pinned to 127.0.0.1 only (never another interface), wait on
events or poll with a deadline, and filter by the node ids they created, since
other tests on this machine may announce _mesh._tcp on loopback at the same time.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf

from mesh.discovery import mdns
from mesh.discovery.mdns import (
    SERVICE_TYPE,
    Announcement,
    MdnsDiscovery,
    instance_name,
    parse_properties,
)

LOOPBACK = "127.0.0.1"
NODE_A = "a1" * 16
VALID = {b"id": NODE_A.encode(), b"name": b"kitchen pi", b"v": b"1", b"port": b"46102",
         b"cpus": b"4", b"auth": b""}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll predicate until it holds or the deadline passes (no sleep-as-sync)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        threading.Event().wait(0.02)
    return predicate()


def with_(**changes: bytes | None) -> dict[bytes, bytes | None]:
    props: dict[bytes, bytes | None] = dict(VALID)
    for key, value in changes.items():
        if value is ...:
            del props[key.encode()]
        else:
            props[key.encode()] = value
    return props


# ---------------------------------------------------------------- parse_properties


@pytest.mark.timeout(5)
def test_parse_valid_record() -> None:
    found = parse_properties(VALID, ["::1", LOOPBACK], 46102)
    assert found == Announcement(node_id=NODE_A, name="kitchen pi", protocol=1, host=LOOPBACK,
                                 port=46102, cpus=4, auth="")
    assert found.address == "127.0.0.1:46102"


@pytest.mark.timeout(5)
def test_parse_tolerates_unknown_keys_upper_case_id_and_bare_auth() -> None:
    props = with_(id=NODE_A.upper().encode(), auth=None)
    props[b"future"] = b"whatever"
    found = parse_properties(props, ["192.168.1.7"], 46102)
    assert found is not None
    assert (found.node_id, found.auth, found.host) == (NODE_A, "", "192.168.1.7")


MALFORMED: list[tuple[str, dict, list, object]] = [
    *[(f"missing {k!r}", with_(**{k.decode(): ...}), [LOOPBACK], 46102) for k in VALID],
    *[(f"{k!r} is None", with_(**{k.decode(): None}), [LOOPBACK], 46102)
      for k in VALID if k != b"auth"],
    ("id not hex", with_(id=b"zz" * 16), [LOOPBACK], 46102),
    ("id too short", with_(id=b"abc"), [LOOPBACK], 46102),
    ("id too long", with_(id=b"a" * 65), [LOOPBACK], 46102),
    ("id with space", with_(id=b" " + b"a" * 16), [LOOPBACK], 46102),
    ("id is str", with_(id=NODE_A), [LOOPBACK], 46102),
    ("empty name", with_(name=b""), [LOOPBACK], 46102),
    ("name too long", with_(name=b"n" * 65), [LOOPBACK], 46102),
    ("name not utf-8", with_(name=b"\xff\xfe"), [LOOPBACK], 46102),
    ("name with newline", with_(name=b"a\nb"), [LOOPBACK], 46102),
    ("name with NUL", with_(name=b"a\x00"), [LOOPBACK], 46102),
    ("auth too long", with_(auth=b"s" * 201), [LOOPBACK], 46102),
    ("auth not utf-8", with_(auth=b"\xc3"), [LOOPBACK], 46102),
    *[(f"port {bad!r}", with_(port=bad), [LOOPBACK], 46102)
      for bad in (b"", b"abc", b"-1", b"0", b"65536", b"99999999", b"1.5", b" 80", b"+80",
                  b"8_0", b"80\n", "٣".encode(), b"0x50")],
    *[(f"cpus {bad!r}", with_(cpus=bad), [LOOPBACK], 46102)
      for bad in (b"", b"four", b"-1", b"65536", b"1e3", b"4 ")],
    *[(f"protocol {bad!r}", with_(v=bad), [LOOPBACK], 46102)
      for bad in (b"", b"v1", b"-1", b"65536", b"1.0")],
    ("SRV port differs from TXT port", VALID, [LOOPBACK], 46103),
    ("SRV port not int", VALID, [LOOPBACK], "46102"),
    ("SRV port is None", VALID, [LOOPBACK], None),
    ("no addresses", VALID, [], 46102),
    ("only IPv6", VALID, ["::1", "fe80::1"], 46102),
    ("garbage addresses", VALID, ["localhost", "", "1.2.3"], 46102),
    ("unspecified address", VALID, ["0.0.0.0"], 46102),
    ("multicast address", VALID, ["224.0.0.251"], 46102),
    ("addresses not a list", VALID, "127.0.0.1", 46102),
    ("properties not a dict", [(b"id", NODE_A.encode())], [LOOPBACK], 46102),
    ("properties None", None, [LOOPBACK], 46102),
]


@pytest.mark.timeout(5)
@pytest.mark.parametrize(("case", "props", "addresses", "port"), MALFORMED,
                         ids=[case for case, *_ in MALFORMED])
def test_parse_rejects_malformed(case: str, props: dict, addresses: list, port: object) -> None:
    assert parse_properties(props, addresses, port) is None  # type: ignore[arg-type]


hex_ids = st.text("0123456789abcdef", min_size=8, max_size=64)
printable = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cn", "Co")))
names = printable.filter(lambda s: s.isprintable() and 0 < len(s.encode()) <= mdns.MAX_NAME_BYTES)
auths = printable.filter(lambda s: s.isprintable() and len(s.encode()) <= mdns.MAX_AUTH_BYTES)
hosts = st.ip_addresses(v=4).filter(
    lambda ip: not (ip.is_unspecified or ip.is_multicast or ip.is_reserved)).map(str)
announcements = st.builds(Announcement, node_id=hex_ids, name=names,
                          protocol=st.integers(0, 65535), host=hosts,
                          port=st.integers(1, 65535), cpus=st.integers(0, 65535), auth=auths)


def to_txt(a: Announcement) -> dict[bytes, bytes | None]:
    return {b"id": a.node_id.encode(), b"name": a.name.encode(), b"v": str(a.protocol).encode(),
            b"port": str(a.port).encode(), b"cpus": str(a.cpus).encode(), b"auth": a.auth.encode()}


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(announcements)
def test_parse_round_trips_every_valid_announcement(a: Announcement) -> None:
    assert parse_properties(to_txt(a), ["fe80::1", a.host], a.port) == a


@pytest.mark.timeout(60)
@settings(max_examples=500, deadline=None)
@given(announcements, st.sampled_from(sorted(VALID)),
       st.one_of(st.none(), st.binary(max_size=300), st.integers(), st.text(max_size=5)))
def test_parse_one_corrupted_field_gives_none_or_a_valid_announcement(
        a: Announcement, key: bytes, value: object) -> None:
    props = to_txt(a)
    props[key] = value  # type: ignore[assignment]
    found = parse_properties(props, [a.host], a.port)
    if found is not None:  # the new value happened to be valid: it must round-trip
        assert parse_properties(to_txt(found), [found.host], found.port) == found
        assert len(found.name.encode()) <= mdns.MAX_NAME_BYTES and found.name.isprintable()
        assert 1 <= found.port <= 65535 and 0 <= found.cpus <= 65535


@pytest.mark.timeout(60)
@settings(max_examples=500, deadline=None)
@given(st.one_of(st.dictionaries(st.one_of(st.sampled_from(sorted(VALID)), st.binary(max_size=8)),
                                 st.one_of(st.none(), st.binary(max_size=80)), max_size=10),
                 st.none(), st.integers(), st.text(max_size=10), st.lists(st.binary(max_size=4))),
       st.one_of(st.lists(st.one_of(st.text(max_size=20), st.ip_addresses().map(str),
                                    st.integers(), st.none()), max_size=4), st.none(), st.text()),
       st.one_of(st.integers(), st.none(), st.text(max_size=6), st.floats()))
def test_parse_never_raises(props: object, addresses: object, port: object) -> None:
    result = parse_properties(props, addresses, port)  # type: ignore[arg-type]
    assert result is None or isinstance(result, Announcement)


# ---------------------------------------------------------------- instance names


@pytest.mark.timeout(5)
@pytest.mark.parametrize(("name", "label"), [
    ("Pi 4 / Kitchen!", "pi-4-kitchen"), ("", "node"), ("äöü", "node"), ("--x--", "x"),
    ("a" * 39 + "-b" + "c" * 10, "a" * 39), ("node_7.local", "node-7-local"),
])
def test_instance_name_is_dns_label_safe(name: str, label: str) -> None:
    assert instance_name(name, NODE_A) == f"{label}-{NODE_A[:8]}.{SERVICE_TYPE}"


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_instance_label_is_short_and_safe_for_any_name(name: str) -> None:
    label = instance_name(name, NODE_A).removesuffix(f"-{NODE_A[:8]}.{SERVICE_TYPE}")
    assert 0 < len(label) <= mdns.MAX_LABEL
    assert all(part and part.isascii() and part.isalnum() and part == part.lower()
               for part in label.split("-"))


# ---------------------------------------------------------------- MdnsDiscovery (no network)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("kwargs", [
    {"node_id": "xyz" * 8}, {"node_id": "abc"}, {"comm_port": 0}, {"comm_port": 70000},
    {"cpus": -1}, {"protocol": -2}, {"auth": "s" * 300},
])
def test_constructor_rejects_what_it_could_not_announce(kwargs: dict) -> None:
    args = {"interface": LOOPBACK, "node_id": NODE_A, "name": "n", "comm_port": 46102,
            "cpus": 1, "protocol": 1, "on_found": lambda a: None, **kwargs}
    with pytest.raises(ValueError):
        MdnsDiscovery(**args)


class NoZeroconf:
    """Stands in for Zeroconf where a test must not open any socket."""

    created: list[object] = []

    def __init__(self, interfaces: list[str]) -> None:
        NoZeroconf.created.append(interfaces)
        raise OSError(99, "Cannot assign requested address")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("interface", ["not-an-ip", "0.0.0.0", "224.0.0.251", "::1", 2130706433,
                                       LOOPBACK])
def test_start_failure_is_logged_not_raised(interface: object, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    NoZeroconf.created.clear()
    monkeypatch.setattr(mdns, "Zeroconf", NoZeroconf)
    d = MdnsDiscovery(interface, NODE_A, "n", 46102, 1, 1, lambda a: None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="mesh.discovery"):
        d.start()
    assert d.error is not None and str(interface) in d.error
    assert any(r.levelno == logging.WARNING and "without mDNS" in r.getMessage()
               for r in caplog.records)
    # only a valid unicast IPv4 address ever reaches Zeroconf, always alone and as a str
    assert NoZeroconf.created == ([[LOOPBACK]] if interface == LOOPBACK else [])
    d.start()  # a failed discovery stays off
    d.close()
    d.close()


@pytest.mark.timeout(5)
def test_close_without_start_and_start_after_close_do_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    NoZeroconf.created.clear()
    monkeypatch.setattr(mdns, "Zeroconf", NoZeroconf)
    d = MdnsDiscovery(LOOPBACK, NODE_A, "n", 46102, 1, 1, lambda a: None)
    d.close()
    d.close()
    d.start()
    assert NoZeroconf.created == [] and d.error is None


# ---------------------------------------------------------------- MdnsDiscovery on 127.0.0.1


class Node:
    """One MdnsDiscovery on loopback plus what it reported."""

    def __init__(self, name: str, port: int, cpus: int,
                 on_found: Callable[[Node, Announcement], None] | None = None) -> None:
        self.node_id = secrets.token_hex(16)
        self.found: list[Announcement] = []
        self.found_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.extra = on_found
        self.d = MdnsDiscovery(LOOPBACK, self.node_id, name, port, cpus, 3, self._on_found)
        self.started = 0.0

    def _on_found(self, a: Announcement) -> None:
        with self.lock:
            self.found.append(a)
            self.found_at.setdefault(a.node_id, time.monotonic() - self.started)
        if self.extra:
            self.extra(self, a)

    def start(self) -> float:
        self.started = time.monotonic()
        self.d.start()
        return time.monotonic() - self.started

    def has_found(self, node_id: str) -> bool:
        with self.lock:
            return any(a.node_id == node_id for a in self.found)


@pytest.fixture
def nodes() -> list[Node]:
    made: list[Node] = []
    yield made
    for n in made:
        n.d.close()


@pytest.mark.timeout(20)
def test_two_nodes_find_each_other_and_not_themselves(nodes: list[Node],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mesh.discovery")
    a = Node("alpha node", 46202, 4)
    b = Node("Beta/Pi", 46203, 2)
    nodes += [a, b]
    start_a, start_b = a.start(), b.start()
    assert start_a < 0.5 and start_b < 0.5, "start() must return quickly"
    assert a.d.error is None and b.d.error is None
    assert wait_until(lambda: a.has_found(b.node_id) and b.has_found(a.node_id), 5.0)
    print(f"\nstart(): {start_a * 1000:.1f} ms, {start_b * 1000:.1f} ms; start -> found: "
          f"a found b after {a.found_at[b.node_id]:.2f} s, b found a after "
          f"{b.found_at[a.node_id]:.2f} s")
    seen_by_a = next(x for x in a.found if x.node_id == b.node_id)
    assert seen_by_a == Announcement(b.node_id, "Beta/Pi", 3, LOOPBACK, 46203, 2, "")
    seen_by_b = next(x for x in b.found if x.node_id == a.node_id)
    assert seen_by_b == Announcement(a.node_id, "alpha node", 3, LOOPBACK, 46202, 4, "")
    assert not a.has_found(a.node_id) and not b.has_found(b.node_id)
    assert f"mDNS on 127.0.0.1: announcing alpha-node-{a.node_id[:8]}._mesh._tcp.local." in [
        r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


@pytest.mark.timeout(20)
def test_malformed_announcement_is_ignored(nodes: list[Node],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mesh.discovery")
    bogus_id = secrets.token_hex(16)
    bogus_name = f"bogus-{bogus_id[:8]}.{SERVICE_TYPE}"
    txt = {**VALID, b"id": bogus_id.encode(), b"cpus": b"many"}
    zc = Zeroconf(interfaces=[LOOPBACK])
    try:
        zc.register_service(ServiceInfo(SERVICE_TYPE, bogus_name, port=46102, properties=txt,
                                        addresses=[ipaddress.IPv4Address(LOOPBACK).packed]))
        a, b = Node("a", 46204, 1), Node("b", 46205, 1)
        nodes += [a, b]
        a.start()
        b.start()
        assert wait_until(lambda: a.has_found(b.node_id), 5.0)
        assert wait_until(lambda: any(bogus_name in r.getMessage() and "malformed" in r.getMessage()
                                      for r in caplog.records), 5.0)
        assert not a.has_found(bogus_id)
    finally:
        zc.close()


@pytest.mark.timeout(20)
def test_on_found_exceptions_are_logged_not_propagated(nodes: list[Node],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mesh.discovery")

    def explode(node: Node, a: Announcement) -> None:
        raise RuntimeError("boom from on_found")

    a, b = Node("a", 46206, 1, on_found=explode), Node("b", 46207, 1)
    nodes += [a, b]
    a.start()
    b.start()
    assert wait_until(lambda: a.has_found(b.node_id) and b.has_found(a.node_id), 5.0)
    assert wait_until(lambda: any(r.levelno == logging.ERROR and r.exc_info
                                  and "boom" in str(r.exc_info[1]) for r in caplog.records), 2.0)
    assert a.d._resolver.is_alive()  # the resolver survived the exception


@pytest.mark.timeout(20)
def test_close_from_inside_on_found_does_not_deadlock(nodes: list[Node]) -> None:
    closed = threading.Event()

    def close_self(node: Node, a: Announcement) -> None:
        node.d.close()
        closed.set()

    a, b = Node("a", 46208, 1, on_found=close_self), Node("b", 46209, 1)
    nodes += [a, b]
    a.start()
    b.start()
    assert closed.wait(5.0)


@pytest.mark.timeout(10)
def test_start_then_close_is_quick_and_close_is_idempotent() -> None:
    d = MdnsDiscovery(LOOPBACK, secrets.token_hex(16), "quick", 46210, 1, 1, lambda a: None)
    t0 = time.monotonic()
    d.start()
    started = time.monotonic() - t0
    d.close()  # while probing: registration is cancelled, never announced
    closed = time.monotonic() - t0 - started
    t1 = time.monotonic()
    d.close()
    again = time.monotonic() - t1
    print(f"\nstart(): {started * 1000:.1f} ms, close(): {closed * 1000:.1f} ms, "
          f"second close(): {again * 1000:.3f} ms")
    assert d.error is None
    assert started < 0.5 and closed < 1.5 and again < 0.05


@pytest.mark.timeout(15)
def test_close_just_before_the_registration_begins_is_no_error(monkeypatch) -> None:
    """The interleaving a loaded machine produced (issue 17): the registration coroutine's
    first step runs in zeroconf's loop after close() took the Zeroconf away and cancelled
    the registration, before that cancel reached the loop. Forced here: right after the
    coroutine is handed to the loop, the loop pauses until close() got that far. (Before:
    the coroutine read ``self._zc``, None by then: AssertionError, reported as an error.)"""
    real = mdns.asyncio.run_coroutine_threadsafe
    gate = threading.Event()
    paused: list = []

    def then_pause(coro, loop):
        future = real(coro, loop)  # (queues the step that creates the coroutine's task)
        if not paused:  # the registration: the loop stops after that step, before the
            paused.append(loop)  # task's first step
            loop.call_soon_threadsafe(gate.wait, 5.0)
        return future

    monkeypatch.setattr(mdns.asyncio, "run_coroutine_threadsafe", then_pause)
    d = MdnsDiscovery(LOOPBACK, secrets.token_hex(16), "racy", 46213, 1, 1, lambda a: None)
    d.start()
    assert paused and d.error is None
    closer = threading.Thread(target=d.close)
    closer.start()
    assert wait_until(lambda: d._zc is None and d._registration.cancelled(), 5.0)
    gate.set()  # the loop goes on: the coroutine starts, then the cancel arrives
    closer.join(5.0)
    assert not closer.is_alive()
    assert d.error is None, d.error


@pytest.mark.timeout(15)
def test_close_after_registration_is_bounded_and_says_goodbye(
        nodes: list[Node], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mesh.discovery")
    a, b = Node("a", 46211, 1), Node("b", 46212, 1)
    nodes += [a, b]
    a.start()
    b.start()
    assert wait_until(lambda: b.has_found(a.node_id), 5.0)  # a is registered: goodbyes to send
    t0 = time.monotonic()
    a.d.close()
    took = time.monotonic() - t0
    print(f"\nclose() of a registered node: {took * 1000:.0f} ms")
    assert took < 1.5
    assert wait_until(lambda: any(f"goodbye from {a.d.service_name}" in r.getMessage()
                                  for r in caplog.records), 2.0)


@pytest.mark.timeout(10)
def test_close_cancels_a_resolution_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mesh.discovery")
    d = MdnsDiscovery(LOOPBACK, secrets.token_hex(16), "r", 46213, 1, 1, lambda a: None)
    d.start()
    try:
        ghost = f"ghost-{secrets.token_hex(4)}.{SERVICE_TYPE}"  # nobody answers for it
        d._on_change(None, SERVICE_TYPE, ghost, ServiceStateChange.Added)  # type: ignore[arg-type]
        assert wait_until(lambda: d._resolving is not None, 2.0)
    finally:
        t0 = time.monotonic()
        d.close()
        took = time.monotonic() - t0
    print(f"\nclose() with a resolution in flight: {took * 1000:.0f} ms")
    assert took < mdns.RESOLVE_TIMEOUT_MS / 1000 / 2
    assert not d._resolver.is_alive()
