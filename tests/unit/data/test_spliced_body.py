"""A snapshot's VHD moved from XAPI's export into the image service's socket.

XAPI's end is a real HTTP/1.1 answer written by a thread on a loopback
socket and read with ``http.client``, as :class:`agent.snapshot.VdiExport`
reads it; the image service's end is a socket pair. Nothing is mocked: the
bytes go through ``splice(2)`` or, into a socket that cannot take one,
through buffers.
"""

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


def _drain(sock, into):
    """Read ``sock`` to its end on a thread; returns the thread."""
    def run():
        while True:
            data = sock.recv(MiB)
            if not data:
                return
            into.update(data)
            into.count += len(data)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Sink:
    def __init__(self):
        self.hash = hashlib.sha256()
        self.count = 0

    def update(self, data):
        self.hash.update(data)


def _body(response, connection, length, timeout=10.0):
    return snapshot._SplicedBody(response, length, _broken, timeout)


@pytest.mark.parametrize("size", [0, 1, 4096 + 7, 9 * MiB + 513])
@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
def test_the_whole_body_arrives_unchanged(size, close):
    # XAPI answers with Connection: close, and http.client then lets go of
    # the connection's socket: the body must still come from the response.
    data = os.urandom(size)
    export = Export(data, close=close)
    ours, theirs = socket.socketpair()
    try:
        connection, response = export.get()
        sink = Sink()
        reader = _drain(theirs, sink)
        body = _body(response, connection, size)
        assert body.send_to(ours) == size
        assert body.spliced
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert sink.count == size
        assert sink.hash.hexdigest() == hashlib.sha256(data).hexdigest()
        connection.close()
    finally:
        export.close()
        ours.close()
        theirs.close()


def test_into_a_socket_that_cannot_splice_the_body_goes_through_buffers(monkeypatch):
    size = 5 * MiB + 3
    data = os.urandom(size)
    export = Export(data)
    ours, theirs = socket.socketpair()
    calls = []
    # A TLS socket to Glance is what cannot splice; none is at hand, so the
    # target is declared unspliceable.
    monkeypatch.setattr(snapshot, "_can_splice", lambda sock: calls.append(sock) and False)
    spliced = []
    monkeypatch.setattr(snapshot.os, "splice", lambda *a, **k: spliced.append(a) or 0)
    try:
        connection, response = export.get()
        sink = Sink()
        reader = _drain(theirs, sink)
        body = _body(response, connection, size)
        assert body.send_to(ours) == size
        assert not body.spliced     # the response was read through http.client
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert sink.hash.hexdigest() == hashlib.sha256(data).hexdigest()
        assert ours in calls and spliced == []
        connection.close()
    finally:
        export.close()
        ours.close()
        theirs.close()


def test_a_short_export_is_the_sources_error_and_counts_what_went():
    data = os.urandom(2 * MiB)
    export = Export(data, length=3 * MiB)   # promises a MiB more than it sends
    export.hold.set()                       # and hangs up
    ours, theirs = socket.socketpair()
    try:
        connection, response = export.get()
        sink = Sink()
        reader = _drain(theirs, sink)
        body = _body(response, connection, 3 * MiB)
        with pytest.raises(exceptions.XapiFailure) as err:
            body.send_to(ours)
        assert "ended %d bytes short" % MiB in str(err.value)
        assert body.sent == 2 * MiB
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        assert sink.count == 2 * MiB
        connection.close()
    finally:
        export.close()
        ours.close()
        theirs.close()


def test_a_silent_export_is_the_sources_error_after_the_timeout():
    export = Export(b"x" * 100, length=MiB)   # sends 100 bytes, then nothing
    ours, theirs = socket.socketpair()
    try:
        connection, response = export.get()
        with pytest.raises(exceptions.XapiFailure) as err:
            _body(response, connection, MiB, timeout=0.5).send_to(ours)
        assert "nothing came" in str(err.value)
        connection.close()
    finally:
        export.close()
        ours.close()
        theirs.close()


def test_an_image_service_that_hangs_up_is_an_oserror_not_the_sources():
    data = os.urandom(16 * MiB)
    export = Export(data)
    ours, theirs = socket.socketpair()
    try:
        connection, response = export.get()
        theirs.close()
        body = _body(response, connection, len(data))
        with pytest.raises(OSError) as err:
            body.send_to(ours)
        assert not isinstance(err.value, exceptions.XapiFailure)
        assert body.sent < len(data)
        connection.close()
    finally:
        export.close()
        ours.close()


def test_no_pipe_is_left_open():
    before = set(os.listdir("/proc/self/fd"))
    export = Export(os.urandom(MiB), length=2 * MiB)
    export.hold.set()
    ours, theirs = socket.socketpair()
    try:
        connection, response = export.get()
        reader = _drain(theirs, Sink())
        with pytest.raises(exceptions.XapiFailure):
            _body(response, connection, 2 * MiB).send_to(ours)
        connection.close()
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
    finally:
        export.close()
        ours.close()
        theirs.close()
    assert set(os.listdir("/proc/self/fd")) - before == set()
