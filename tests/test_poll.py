"""mesh.wire.poll.Poller: ZeroMQ sockets and plain descriptors in one epoll set, with the rule
of ZMQ_FD (input already queued is never signalled again) kept."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

from mesh.wire.poll import POLLIN, Poller

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://poll-test")
    b.connect("inproc://poll-test")
    yield a, b
    a.close(0)
    b.close(0)
    ctx.term()


def test_a_socket_with_input_is_ready_and_one_without_is_not(pair):
    a, b = pair
    p = Poller()
    p.register(b)
    assert p.poll(0) == []
    a.send(b"x")
    assert p.poll(1000) == [(b, POLLIN)]
    assert b.recv() == b"x"
    assert p.poll(0) == []


def test_input_queued_behind_a_consumed_signal_is_still_reported(pair):
    """Two messages arrive; reading the first clears the descriptor; the second must
    still make the socket ready, without waiting (zmq_poll's own rule)."""
    a, b = pair
    p = Poller()
    p.register(b)
    a.send(b"1")
    a.send(b"2")
    assert p.poll(1000) == [(b, POLLIN)]
    assert b.recv() == b"1"
    t0 = time.monotonic()
    assert p.poll(20_000) == [(b, POLLIN)]
    assert time.monotonic() - t0 < 10  # (not the time limit: the message was there)
    assert b.recv() == b"2"
    assert p.poll(0) == []


def test_a_wait_ends_when_input_comes_from_another_thread(pair):
    a, b = pair
    p = Poller()
    p.register(b)
    assert p.poll(0) == []
    sender = threading.Timer(0.2, lambda: a.send(b"late"))
    sender.start()
    try:
        t0 = time.monotonic()
        assert p.poll(20_000) == [(b, POLLIN)]
        assert time.monotonic() - t0 < 10  # (not the time limit)
    finally:
        sender.join()
    assert b.recv() == b"late"


def test_plain_descriptors_come_back_as_registered_and_time_limits_hold(pair):
    a, b = pair
    r, w = socket.socketpair()
    try:
        p = Poller()
        p.register(b)
        p.register(r.fileno())
        t0 = time.monotonic()
        assert p.poll(100) == []
        assert time.monotonic() - t0 >= 0.05  # (the time limit was kept)
        w.send(b"!")
        a.send(b"m")
        got = p.poll(1000)
        assert sorted(got, key=repr) == sorted([(b, POLLIN), (r.fileno(), POLLIN)], key=repr)
        p.unregister(r.fileno())
        assert p.poll(0) == [(b, POLLIN)]  # the byte is still there, but not watched
        p.unregister(b)
        assert p.poll(0) == []
        with pytest.raises(KeyError):
            p.unregister(b)
        with pytest.raises(KeyError):
            p.unregister(r.fileno())
    finally:
        r.close()
        w.close()


def test_a_descriptor_number_reused_by_a_new_file_is_watched_once_registered_again():
    p = Poller()
    r1, w1 = socket.socketpair()
    fd = r1.fileno()
    p.register(fd)
    r1.close()  # (epoll forgets a closed file)
    w1.close()
    x, y = socket.socketpair()  # the lowest free numbers: one of them is fd again
    try:
        if fd not in (x.fileno(), y.fileno()):
            pytest.skip("the descriptor number was not reused")
        reader, writer = (x, y) if x.fileno() == fd else (y, x)
        p.unregister(fd)  # the old file's entry: gone from epoll already, no error
        p.register(fd)
        writer.send(b"x")
        assert p.poll(1000) == [(fd, POLLIN)]
        assert reader.recv(1) == b"x"
    finally:
        x.close()
        y.close()


def test_a_socket_sent_on_is_asked_again_and_input_left_unread_is_reported_again(pair):
    a, b = pair
    p = Poller()
    p.register(b)
    assert p.poll(0) == []  # (every socket asked: the next polls ask only some)
    a.send(b"in")
    b.send(b"out")  # a send may take the news of the input with it: the owner touches
    p.touch(b)
    assert p.poll(1000) == [(b, POLLIN)]
    assert p.poll(0) == [(b, POLLIN)]  # not read yet: ready again, without a signal
    assert b.recv() == b"in" and a.recv() == b"out"
    assert p.poll(0) == []


def test_an_unregistered_socket_never_comes_back(pair):
    a, b = pair
    p = Poller()
    p.register(b)
    a.send(b"x")
    assert p.poll(1000) == [(b, POLLIN)]
    p.unregister(b)
    p.touch(b)
    assert p.poll(0) == []
    assert b.recv() == b"x"
