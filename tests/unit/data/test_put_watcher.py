"""The thread that watches a PUT's connection while its body is sent.

A real socket pair stands for the PUT's connection (XAPI's end is the
other socket). The watcher's own poll interval is set to a minute here, so
anything that waits for it to run out shows as a minute's wait.
"""

import os
import socket
import threading
import time

import pytest

from agent import vdi_import

# Far below the minute a missed wake-up would cost, far above a scheduler's
# hiccup on a loaded machine.
PROMPT_SECONDS = 5.0


@pytest.fixture
def slow_poll(monkeypatch):
    monkeypatch.setattr(vdi_import, "_WATCH_POLL_MS", 60_000)


@pytest.fixture
def connection():
    ours, xapis = socket.socketpair()
    yield ours, xapis
    ours.close()
    xapis.close()


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_stopping_an_idle_watcher_wakes_it_at_once(slow_poll, connection):
    ours, _ = connection
    ended = []
    before = _open_fds()
    watcher = vdi_import._Watcher(ours, ended.append)
    started = time.monotonic()
    watcher.stop()
    took = time.monotonic() - started
    assert took < PROMPT_SECONDS, "stop() waited %.1f s for the watcher's poll" % took
    assert not watcher._thread.is_alive()
    assert ended == []  # a stop is not the connection ending
    assert _open_fds() == before  # the wake pipe is closed on both ends


def test_a_second_stop_changes_nothing(slow_poll, connection):
    ours, _ = connection
    watcher = vdi_import._Watcher(ours, lambda why: None)
    watcher.stop()
    before_second = _open_fds()
    watcher.stop()
    assert _open_fds() == before_second


def test_xapi_closing_the_connection_is_reported_without_a_stop(slow_poll, connection):
    ours, xapis = connection
    reported = threading.Event()
    why = []
    watcher = vdi_import._Watcher(ours, lambda reason: (why.append(reason), reported.set()))
    xapis.close()
    assert reported.wait(PROMPT_SECONDS)
    assert why == ["XAPI closed the connection"]
    watcher.stop()
    assert not watcher._thread.is_alive()


def test_a_watcher_may_stop_itself_from_its_report(slow_poll, connection):
    ours, xapis = connection
    done = threading.Event()
    holder = {}

    def ended(reason):
        holder["watcher"].stop()  # as an on_broken that abandons the import does
        done.set()

    before = _open_fds()
    holder["watcher"] = vdi_import._Watcher(ours, ended)
    xapis.sendall(b"HTTP/1.1 500 early answer\r\n")
    assert done.wait(PROMPT_SECONDS)
    holder["watcher"]._thread.join(PROMPT_SECONDS)
    assert not holder["watcher"]._thread.is_alive()
    assert _open_fds() == before
