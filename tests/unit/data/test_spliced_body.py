"""A snapshot's VHD moved from XAPI's export into the image service's socket.

XAPI's end is a real HTTP/1.1 answer written by a thread on a loopback
socket and read with ``http.client``, as :class:`agent.snapshot.VdiExport`
reads it; the image service's end is a socket pair. Nothing is mocked: the
bytes go through ``splice(2)`` or, into a socket that cannot take one,
through buffers.
"""

import contextlib
import hashlib
import http.client
import os
import socket
import threading

import pytest

from agent import snapshot
from rpc import exceptions

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="no os.splice (Python < 3.10)")

MiB = 1 << 20


def _broken(why):
    return exceptions.XapiFailure(details=["VDI_IO_ERROR", why])


class Export:
    """An HTTP server answering one GET with ``Content-Length: length`` and
    ``body`` (which may be shorter), then waiting ``hold`` before closing."""

    def __init__(self, body, length=None, hold=None, close=False):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.body = body
        self.length = len(body) if length is None else length
        self.hold = hold or threading.Event()
        self.close_header = b"Connection: close\r\n" if close else b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            # Headers and the start of the body in one write: http.client
            # buffers some of the body with the headers.
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n"
                             % (self.length, self.close_header) + self.body)
            except OSError:
                return  # the reader hung up first: what some tests do
            self.hold.wait(30)

    def get(self, timeout=10.0):
        connection = http.client.HTTPConnection("127.0.0.1", self.listener.getsockname()[1],
                                                timeout=timeout)
        connection.request("GET", "/export_raw_vdi")
        return connection, connection.getresponse()

    def close(self):
        self.hold.set()
        self.thread.join(10)
        self.listener.close()


class Sink:
    """What the image service's end received: a count and a hash."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.count = 0


class Wire:
    """An export fetched with http.client (``connection``, ``response``) and
    a socket pair standing for Glance's connection: ``ours`` is sent into,
    ``theirs`` drained into ``sink`` on a thread unless ``drain`` is False
    (or closed early by the test)."""

    def __init__(self, export, drain=True):
        self.ours, self.theirs = socket.socketpair()
        self.connection, self.response = export.get()
        self.sink = Sink()
        self.reader = None
        if drain:
            self.reader = threading.Thread(target=self._drain, daemon=True)
            self.reader.start()

    def _drain(self):
        while True:
            data = self.theirs.recv(MiB)
            if not data:
                return
            self.sink.hash.update(data)
            self.sink.count += len(data)

    def body(self, length, timeout=10.0):
        return snapshot._SplicedBody(self.response, length, _broken, timeout)

    def received(self):
        """End our side and wait for the drain: the sink."""
        self.ours.shutdown(socket.SHUT_WR)
        self.reader.join(10)
        return self.sink

    def close(self):
        self.connection.close()
        self.ours.close()
        self.theirs.close()


@contextlib.contextmanager
def wired(export, drain=True):
    wire = None
    try:
        wire = Wire(export, drain)
        yield wire
    finally:
        if wire is not None:
            wire.close()
        export.close()


@pytest.mark.parametrize("size", [0, 1, 4096 + 7, 9 * MiB + 513])
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
def test_the_whole_body_arrives_unchanged(size, close):
    # XAPI answers with Connection: close, and http.client then lets go of
    # the connection's socket: the body must still come from the response.
    data = os.urandom(size)
    with wired(Export(data, close=close)) as wire:
        body = wire.body(size)
        assert body.send_to(wire.ours) == size
        assert body.spliced
        sink = wire.received()
        assert sink.count == size
        assert sink.hash.hexdigest() == hashlib.sha256(data).hexdigest()


def test_into_a_socket_that_cannot_splice_the_body_goes_through_buffers(monkeypatch):
    size = 5 * MiB + 3
    data = os.urandom(size)
    calls = []
    # A TLS socket to Glance is what cannot splice; none is at hand, so the
    # target is declared unspliceable.
    monkeypatch.setattr(snapshot, "_can_splice", lambda sock: calls.append(sock) and False)
    spliced = []
    monkeypatch.setattr(snapshot.os, "splice", lambda *a, **k: spliced.append(a) or 0)
    with wired(Export(data)) as wire:
        body = wire.body(size)
        assert body.send_to(wire.ours) == size
        assert not body.spliced     # the response was read through http.client
        assert wire.received().hash.hexdigest() == hashlib.sha256(data).hexdigest()
        assert wire.ours in calls and spliced == []


def test_a_short_export_is_the_sources_error_and_counts_what_went():
    export = Export(os.urandom(2 * MiB), length=3 * MiB)  # promises a MiB more than it sends
    export.hold.set()                                    # and hangs up
    with wired(export) as wire:
        body = wire.body(3 * MiB)
        with pytest.raises(exceptions.XapiFailure) as err:
            body.send_to(wire.ours)
        assert "ended %d bytes short" % MiB in str(err.value)
        assert body.sent == 2 * MiB
        assert wire.received().count == 2 * MiB


def test_a_silent_export_is_the_sources_error_after_the_timeout():
    # Sends 100 bytes, then nothing.
    with wired(Export(b"x" * 100, length=MiB), drain=False) as wire:
        with pytest.raises(exceptions.XapiFailure) as err:
            wire.body(MiB, timeout=0.5).send_to(wire.ours)
        assert "nothing came" in str(err.value)


def test_an_image_service_that_hangs_up_is_an_oserror_not_the_sources():
    data = os.urandom(16 * MiB)
    with wired(Export(data), drain=False) as wire:
        wire.theirs.close()
        body = wire.body(len(data))
        with pytest.raises(OSError) as err:
            body.send_to(wire.ours)
        assert not isinstance(err.value, exceptions.XapiFailure)
        assert body.sent < len(data)


def test_no_pipe_is_left_open():
    before = set(os.listdir("/proc/self/fd"))
    export = Export(os.urandom(MiB), length=2 * MiB)
    export.hold.set()
    with wired(export) as wire:
        with pytest.raises(exceptions.XapiFailure):
            wire.body(2 * MiB).send_to(wire.ours)
        wire.received()
    assert set(os.listdir("/proc/self/fd")) - before == set()
