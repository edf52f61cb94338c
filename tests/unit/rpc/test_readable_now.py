"""framing.readable_now: the check the pooled client makes before each call.

It answers from ``select.poll`` where that exists and from ``selectors``
where eventlet's monkey-patching removed it (the fixture takes
``select.poll`` away as eventlet does, for the ``selectors`` run of each
test it serves). Both must say the same of the same socket states.
"""

import select
import selectors
import socket

import pytest

from rpc.transports import framing


@pytest.fixture(params=["poll", "selectors"])
def without_poll_if_asked(request, monkeypatch):
    if request.param == "selectors":
        monkeypatch.delattr(select, "poll")
    return request.param


def test_an_idle_connection_is_not_readable(without_poll_if_asked):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert framing.readable_now(ours) is False


def test_data_waiting_is_readable_and_nothing_is_read(without_poll_if_asked):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"x")
        assert framing.readable_now(ours) is True
        assert ours.recv(1, socket.MSG_DONTWAIT) == b"x"  # still there to read


def test_the_peer_closing_is_readable(without_poll_if_asked):
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        assert framing.readable_now(ours) is True


def test_no_selector_is_made_where_poll_exists(monkeypatch):
    # A selector costs an epoll descriptor per call (several times poll's
    # time), and the pooled client asks before every call.
    def no_selector(*args, **kwargs):
        raise AssertionError("a selector was made although select.poll exists")

    monkeypatch.setattr(selectors, "DefaultSelector", no_selector)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert framing.readable_now(ours) is False
        theirs.sendall(b"x")
        assert framing.readable_now(ours) is True
