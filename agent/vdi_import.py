"""One ``PUT /import_raw_vdi`` into a VDI, with its task, checked.

XAPI answers 200 (with a ``task-id`` header) before it reads the body, and
the outcome is the task's: a client that stops at the 200 never learns that
an import failed. So :func:`put` reads that first answer before sending
(a refusal costs no data), sends the body in pieces with ``Content-Length``
(never ``Transfer-Encoding``, which XAPI refuses), waits for XAPI to close
the connection, and then asks the task, raising XapiFailure with the task's
``error_info`` when it failed. What the body holds is :mod:`agent.upload`'s
business.

A streaming caller leaves a PUT open while it reads the next data from
the image service, so a dead XAPI would only be noticed at its next send:
after the caller had read a whole window of the image for nothing. An
:class:`Import` given ``on_broken`` therefore watches its connection while
the body is still due: XAPI says nothing until the import ends, so the
connection becoming readable (closed, reset, an early answer) means the
import is over, and ``on_broken`` is called at once with the reason.
"""

import http.client
import logging
import os
import select
import socket
import threading
import time
import urllib.parse

from rpc import exceptions

LOG = logging.getLogger(__name__)

# After the body is sent XAPI only has to finish writing; a task still
# running this long later is stuck.
TASK_TIMEOUT_SECONDS = 600.0
# How long one send may block, and how long XAPI may take to answer the
# headers: a XAPI that stops reading is given up on after this.
SOCKET_TIMEOUT_SECONDS = 60.0
# A watcher (see the module's doc) is woken by its stop at once; it also
# looks this often on its own, so a wake-up lost somehow costs no more.
_WATCH_POLL_MS = 1000
# How long stopping a watcher waits for its thread to end.
_WATCH_STOP_SECONDS = 2.0
DEFAULT_PROGRESS_INTERVAL = 5.0
_MB = 1000 * 1000


class Progress:
    """Counts bytes, logs bytes/%/MB/s every ``interval`` seconds, calls back."""

    def __init__(self, label, total_bytes, callback=None, interval=None):
        self.label = label
        self.total_bytes = total_bytes
        self.done_bytes = 0
        self._callback = callback
        self._interval = interval or DEFAULT_PROGRESS_INTERVAL
        self._started = time.monotonic()
        self._next_log = self._started + self._interval

    def advance(self, count):
        self.done_bytes += count
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + self._interval
            LOG.info("%s: %s", self.label, self.summary(now))
        if self._callback is not None:
            self._callback(self.done_bytes, self.total_bytes)

    def summary(self, now=None):
        elapsed = max((now or time.monotonic()) - self._started, 1e-6)
        percent = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        return "%d of %d bytes (%.1f%%) in %.1fs, %.1f MB/s" % (
            self.done_bytes, self.total_bytes, percent, elapsed,
            self.done_bytes / elapsed / _MB)


def put(xapi_session, vdi_ref, query, content_length, pieces, progress):
    """PUT ``pieces`` (lists of buffers) as one import with its own task.

    XAPI answers before it reads the body, so the answer is read first: a
    refusal costs no data sent, and a 200 means the body is awaited.
    ``progress.advance(n)`` is called per piece sent. Raises XapiFailure:
    XAPI's error description (task.create, a failed task, a refusal whose
    task says why), ``IMPORT_HTTP_ERROR`` (another answer than 200),
    ``CONNECTION_FAILED`` or ``IMPORT_INCOMPLETE`` (the body could not be sent).
    """
    upload = Import(xapi_session, vdi_ref, query, content_length)
    upload.start()
    upload.send(pieces, progress)
    upload.finish()


class Import:
    """One PUT in three steps, so a caller can overlap them across PUTs.

    :meth:`start` makes the task, sends the headers and reads XAPI's early
    answer; :meth:`send` sends the body; :meth:`finish` waits for the import
    to end and checks its task. Once ``send`` has returned, the body's
    buffers are free again (the kernel holds the bytes), so a streaming
    caller may refill them and start the next PUT while XAPI is still
    writing this one, and finish this one afterwards. Whatever happens,
    :meth:`finish` or :meth:`abandon` must be called once ``start`` has
    succeeded: both leave no task and no connection behind.

    ``on_broken(error)``, if given, is called (from a watching thread) as
    soon as XAPI ends the connection while body bytes are still due, with a
    XapiFailure: the task's error info if it already failed, else
    ``CONNECTION_FAILED`` (XAPI is gone) or ``IMPORT_INCOMPLETE``.
    """

    def __init__(self, xapi_session, vdi_ref, query, content_length, on_broken=None):
        self.xapi_session = xapi_session
        self.vdi_ref = vdi_ref
        self.query = query
        self.content_length = content_length
        self.sent_bytes = 0
        self._task_ref = None
        self._connection = None
        self._response = None
        self._sent_error = None
        self._on_broken = on_broken
        self._watcher = None
        # Body bytes handed to the socket or about to be: once they reach
        # content_length, XAPI closing the connection is the import ending.
        self._committed_bytes = 0

    def start(self):
        """Task, headers, XAPI's answer. Raises XapiFailure (and cleans up)."""
        session = self.xapi_session
        self._task_ref = session.call(
            "task.create", "nova-xen-split import",
            "import of %d bytes into %s" % (self.content_length, self.vdi_ref))
        url = urllib.parse.urlsplit(session.http_url(
            "/import_raw_vdi", vdi=self.vdi_ref, task_id=self._task_ref, **self.query))
        # Never show the query: it holds the session id.
        self._where = "%s://%s%s" % (url.scheme, url.netloc, url.path)
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(url.hostname, url.port,
                                                     timeout=SOCKET_TIMEOUT_SECONDS)
        else:
            connection = http.client.HTTPConnection(url.hostname, url.port,
                                                    timeout=SOCKET_TIMEOUT_SECONDS)
        self._connection = connection
        try:
            connection.putrequest("PUT", "%s?%s" % (url.path, url.query),
                                  skip_accept_encoding=True)
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(self.content_length))
            connection.endheaders()
            self._response = http.client.HTTPResponse(connection.sock, method="PUT")
            self._response.begin()
        except (OSError, http.client.HTTPException) as e:
            self._close()
            _forget_task(session, self._task_ref)
            raise exceptions.XapiFailure(details=[
                "CONNECTION_FAILED", self._where, str(e) or type(e).__name__]) from None
        if self._response.status != 200:
            response = self._response
            self._close()
            _refused(session, self._task_ref, self._where, response)
        if self._on_broken is not None and self.content_length > 0:
            self._watcher = _Watcher(self._connection.sock, self._connection_ended)
        return self

    def send(self, pieces, progress):
        """Send (some of) the body; may be called again for the next pieces
        until :attr:`broken`. An error of ``pieces`` (the body's source) cuts
        the connection, collects the task and is raised; a send that breaks
        is reported by :meth:`finish`, after the task has said why."""
        if self._sent_error is not None:
            return
        try:
            self._sent_error = _send_body(self._connection.sock, self._committing(pieces),
                                          progress)
        except BaseException:
            # Cutting the connection makes XAPI fail the task, which is then
            # collected before re-raising.
            self.abandon()
            raise
        finally:
            self.sent_bytes = progress.done_bytes

    def _committing(self, pieces):
        """``pieces``, counting each one's bytes before it goes out."""
        for parts in pieces:
            self._committed_bytes += sum(len(part) for part in parts)
            if self._committed_bytes >= self.content_length:
                self._stop_watching()  # XAPI may now end the import at any time
            yield parts

    def _connection_ended(self, why):
        """The watcher saw the connection end; report it unless the body is
        all sent (then XAPI ended the import as it should)."""
        if self._committed_bytes >= self.content_length:
            return
        error = _why_import_ended(self.xapi_session, self._task_ref, self._where, why,
                                  self._committed_bytes, self.content_length)
        LOG.warning("Import into %s broke off: %s", self.vdi_ref, error)
        self._on_broken(error)

    def _stop_watching(self):
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    @property
    def broken(self):
        """True once sending the body has failed (:meth:`finish` says why)."""
        return self._sent_error is not None

    def finish(self):
        """Wait for the import to end; raises XapiFailure if it did not succeed."""
        try:
            if self._sent_error is None and self._response.will_close:
                _await_close(self._response)
        finally:
            self._close()
        # The task has the last word, even when sending broke: XAPI fails it
        # with the reason it stopped reading.
        task_ref, self._task_ref = self._task_ref, None
        self.xapi_session.wait_for_task(
            task_ref,
            timeout=TASK_TIMEOUT_SECONDS if self._sent_error is None else 60.0)
        if self._sent_error is not None:
            raise exceptions.XapiFailure(details=[
                "IMPORT_INCOMPLETE", "body cut after %d of %d bytes: %s"
                % (self.sent_bytes, self.content_length, self._sent_error)])

    def abandon(self):
        """Cut the connection and collect the task, ignoring its outcome."""
        self._close()
        task_ref, self._task_ref = self._task_ref, None
        if task_ref is not None:
            _collect_task(self.xapi_session, task_ref)

    def _close(self):
        self._stop_watching()
        if self._response is not None:
            self._response.close()
            self._response = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Watcher:
    """A thread that calls ``ended(why)`` once ``sock`` becomes readable or
    fails: for a PUT whose answer XAPI sent before the body, that is the
    import ending (or XAPI going away). It reads nothing.

    :meth:`stop` closes the write end of a pipe the thread also polls, so
    the thread wakes at once: the last piece of every PUT stops its
    watcher on the sending thread, which must not wait out a poll."""

    def __init__(self, sock, ended):
        self._sock = sock
        self._ended = ended
        self._stop = threading.Event()
        self._stopping = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="vdi-put-watch", daemon=True)
        self._thread.start()

    def _run(self):
        sock_fd = self._sock.fileno()
        poller = select.poll()
        poller.register(sock_fd, select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0))
        poller.register(self._wake_read, select.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    events = poller.poll(_WATCH_POLL_MS)
                except OSError as e:
                    events, failed = None, e
                else:
                    failed = None
                if self._stop.is_set():
                    return
                if failed is not None or any(fd == sock_fd for fd, _ in events):
                    self._ended(_connection_state(self._sock) if failed is None else str(failed))
                    return
        finally:
            os.close(self._wake_read)

    def stop(self):
        """Stop watching: wakes the thread and waits for it to end (does not
        wait when called from the watcher itself)."""
        with self._stopping:
            if self._stop.is_set():
                return
            self._stop.set()
            os.close(self._wake_write)  # the thread's poll sees the pipe hang up
        if threading.current_thread() is not self._thread:
            self._thread.join(_WATCH_STOP_SECONDS)


def _connection_state(sock):
    """What a readable PUT connection holds: closed, reset, or an answer."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "the connection became readable"
    except OSError as e:
        return str(e) or type(e).__name__
    return "XAPI answered early" if data else "XAPI closed the connection"


def _why_import_ended(xapi_session, task_ref, where, why, sent_bytes, content_length):
    """The XapiFailure for an import that ended before its body was sent:
    the task's error info if it failed, else what the connection said."""
    try:
        record = xapi_session.call("task.get_record", task_ref)
    except exceptions.XapiFailure as e:
        return e  # CONNECTION_FAILED: XAPI itself is gone
    if record.get("status") in ("failure", "cancelled") and record.get("error_info"):
        return exceptions.XapiFailure(details=[str(d) for d in record["error_info"]])
    return exceptions.XapiFailure(details=[
        "IMPORT_INCOMPLETE", "PUT %s ended after %d of %d body bytes: %s"
        % (where, sent_bytes, content_length, why)])


def _await_close(response):
    """Wait until XAPI closes the connection: it does so when the import ends,
    which saves polling the task while the last bytes are written."""
    try:
        while response.read(65536):
            pass
    except (OSError, http.client.HTTPException):
        pass  # the task, asked next, tells what happened


def _refused(xapi_session, task_ref, where, response):
    """Raise for a non-200 answer, with the task's error info if XAPI set one."""
    try:
        status = xapi_session.call("task.get_status", task_ref)
        info = (xapi_session.call("task.get_error_info", task_ref)
                if status in ("failure", "cancelled") else [])
    except exceptions.XapiFailure:
        info = []
    _forget_task(xapi_session, task_ref)
    http_status = "PUT %s answered HTTP %d %s" % (where, response.status, response.reason)
    LOG.warning("%s", http_status)
    if info:
        raise exceptions.XapiFailure(details=[str(d) for d in info])
    raise exceptions.XapiFailure(details=["IMPORT_HTTP_ERROR", http_status])


def _send_body(sock, pieces, progress):
    """Send every piece; returns None, or why sending stopped.

    A piece is a list of buffers and file ranges (objects with ``send(sock)``,
    see ``agent.upload.FileRange``); buffers in a row go out in one gathering
    send, a file range with ``sendfile``.
    """
    gather = isinstance(sock, socket.socket) and not hasattr(sock, "context")
    try:
        for parts in pieces:
            buffers = []
            for part in parts:
                if hasattr(part, "send"):
                    # MSG_MORE: a frame header leaves with the data after it.
                    _send_buffers(sock, buffers, gather, socket.MSG_MORE)
                    buffers = []
                    part.send(sock)
                else:
                    buffers.append(part)
            _send_buffers(sock, buffers, gather)
            progress.advance(sum(len(b) for b in parts))
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def _send_buffers(sock, buffers, gather, flags=0):
    if gather:
        if buffers:
            _sendmsg_all(sock, buffers, flags)
    else:
        for buffer in buffers:
            sock.sendall(buffer)


def _sendmsg_all(sock, buffers, flags=0):
    """One gathering send of the buffers (no copy), finishing partial sends."""
    sent = sock.sendmsg(buffers, (), flags)
    for buffer in buffers:
        if sent >= len(buffer):
            sent -= len(buffer)
            continue
        sock.sendall(memoryview(buffer)[sent:], flags)
        sent = 0


def _collect_task(xapi_session, task_ref):
    """Wait (briefly) for an abandoned import's task to end, then drop it."""
    try:
        xapi_session.wait_for_task(task_ref, timeout=30.0)
    except exceptions.XapiFailure:
        pass  # expected: the import was cut; wait_for_task destroyed the task


def _forget_task(xapi_session, task_ref):
    try:
        xapi_session.call("task.destroy", task_ref)
    except exceptions.XapiFailure:
        LOG.debug("could not destroy import task", exc_info=True)
