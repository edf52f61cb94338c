"""Uploading disk contents into a VDI with XAPI's ``PUT /import_raw_vdi``.

Every upload is one or more PUTs, each with its own XAPI task: the handler
answers 200 before it reads the body, so the only proof that the data
landed is the task ending in ``success``; a failed task raises XapiFailure
with the task's ``error_info``. Bodies always carry ``Content-Length`` (XAPI
refuses ``Transfer-Encoding``) and go out in pieces, so memory stays bounded
by one piece (files) or one window (streams) whatever the disk size.

Empty space is not sent: files are mapped with SEEK_DATA/SEEK_HOLE and
all-zero 64 KiB blocks are dropped, then sent either as a dynamic VHD
(:mod:`agent.vhd`) or in XAPI's sparse ``chunked`` framing (repeated
little-endian ``uint64 offset, uint32 length, data``, ended by ``0, 0``).
"""

import array
import http.client
import logging
import os
import socket
import struct
import time
import urllib.parse

from agent import readahead, vhd
from rpc import exceptions

LOG = logging.getLogger(__name__)

WINDOW_BYTES = 64 * 1024 * 1024
ZERO_BLOCK_BYTES = 64 * 1024
PIECE_BYTES = 4 * 1024 * 1024
FORMATS = ("vhd", "chunked", "raw")
# After the body is sent XAPI only has to finish writing; a task still
# running this long later is stuck.
TASK_TIMEOUT_SECONDS = 600.0
DEFAULT_PROGRESS_INTERVAL = 5.0

_FRAME_HEADER = struct.Struct("<QI")
_END_OF_FRAMES = _FRAME_HEADER.pack(0, 0)
_ZEROS = bytes(ZERO_BLOCK_BYTES)
# A block whose first bytes are not all zero holds data: no need to read on.
_PROBE_BYTES = 4096
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


# -- finding data -------------------------------------------------------------

def nonzero_runs(buffer, length, base_offset=0, block_bytes=ZERO_BLOCK_BYTES):
    """(offset, length) runs of ``buffer[:length]`` not made of zero blocks.

    Blocks of ``block_bytes`` (the last may be shorter) that are all zero are
    dropped; neighbouring kept blocks are merged. Offsets get ``base_offset``.
    """
    runs = []
    run_start = None
    for start in range(0, length, block_bytes):
        size = min(block_bytes, length - start)
        if buffer.startswith(_ZEROS[:size], start):
            if run_start is not None:
                runs.append((base_offset + run_start, start - run_start))
                run_start = None
        elif run_start is None:
            run_start = start
    if run_start is not None:
        runs.append((base_offset + run_start, length - run_start))
    return runs


def file_data_runs(fd, file_size):
    """Non-zero runs of a file as a flat array [offset, length, ...].

    Runs are whole 64 KiB blocks (the last one may be shorter), found among
    the blocks SEEK_DATA reports; a block is probed first, so a dense file
    costs a small fraction of its size in reads.
    """
    runs = array.array("Q")
    block = bytearray(ZERO_BLOCK_BYTES)
    view = memoryview(block)
    next_index = 0
    for start, stop in vhd.data_extents(fd, file_size):
        first = max(start // ZERO_BLOCK_BYTES, next_index)
        next_index = -(-stop // ZERO_BLOCK_BYTES)
        for index in range(first, next_index):
            offset = index * ZERO_BLOCK_BYTES
            size = min(ZERO_BLOCK_BYTES, file_size - offset)
            if not _block_has_data(fd, block, view, offset, size):
                continue
            if runs and runs[-2] + runs[-1] == offset:
                runs[-1] += size
            else:
                runs.extend((offset, size))
    return runs


def _block_has_data(fd, block, view, offset, size):
    probe = min(_PROBE_BYTES, size)
    got = _pread_full(fd, view[:probe], offset)
    if not block.startswith(_ZEROS[:got]):
        return True
    if got < probe:
        return False
    got = _pread_full(fd, view[probe:size], offset + probe)
    return not block.startswith(_ZEROS[:got], probe)


def _pread_full(fd, view, offset):
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _split(offset, length):
    """A run as frames of at most PIECE_BYTES."""
    end = offset + length
    while offset < end:
        size = min(PIECE_BYTES, end - offset)
        yield offset, size
        offset += size


def chunked_length(runs):
    """Body length of the chunked framing of ``runs`` ((offset, length) pairs)."""
    frames = sum(-(-length // PIECE_BYTES) for _, length in runs)
    return sum(length for _, length in runs) + (frames + 1) * _FRAME_HEADER.size


# -- one PUT ------------------------------------------------------------------

def _put(xapi_session, vdi_ref, query, content_length, pieces, progress):
    """PUT ``pieces`` (lists of buffers) as one import with its own task.

    XAPI answers before it reads the body, so the answer is read first: a
    refusal costs no data sent, and a 200 means the body is awaited.
    """
    task_ref = xapi_session.call(
        "task.create", "nova-xen-split import",
        "import of %d bytes into %s" % (content_length, vdi_ref))
    url = urllib.parse.urlsplit(xapi_session.http_url(
        "/import_raw_vdi", vdi=vdi_ref, task_id=task_ref, **query))
    # Never show the query: it holds the session id.
    where = "%s://%s%s" % (url.scheme, url.netloc, url.path)
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(url.hostname, url.port, timeout=60)
    else:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    response = None
    try:
        try:
            connection.putrequest("PUT", "%s?%s" % (url.path, url.query),
                                  skip_accept_encoding=True)
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(content_length))
            connection.endheaders()
            sock = connection.sock
            response = http.client.HTTPResponse(sock, method="PUT")
            response.begin()
        except (OSError, http.client.HTTPException) as e:
            _forget_task(xapi_session, task_ref)
            raise exceptions.XapiFailure(details=[
                "CONNECTION_FAILED", where, str(e) or type(e).__name__]) from None
        if response.status != 200:
            _refused(xapi_session, task_ref, where, response)
        sent_error = _send_body(sock, pieces, progress)
        if sent_error is None and response.will_close:
            _await_close(response)
    finally:
        if response is not None:
            response.close()
        connection.close()
    # The task has the last word, even when sending broke: XAPI fails it with
    # the reason it stopped reading.
    xapi_session.wait_for_task(
        task_ref, poll=0.002,
        timeout=TASK_TIMEOUT_SECONDS if sent_error is None else 60.0)
    if sent_error is not None:
        raise exceptions.XapiFailure(details=[
            "IMPORT_INCOMPLETE", "body cut after %d of %d bytes: %s"
            % (progress.done_bytes, content_length, sent_error)])


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
    """Send every piece; returns None, or why sending stopped."""
    gather = isinstance(sock, socket.socket) and not hasattr(sock, "context")
    try:
        for buffers in pieces:
            if gather:
                _sendmsg_all(sock, buffers)
            else:
                for buffer in buffers:
                    sock.sendall(buffer)
            progress.advance(sum(len(b) for b in buffers))
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def _sendmsg_all(sock, buffers):
    """One gathering send of the buffers (no copy), finishing partial sends."""
    sent = sock.sendmsg(buffers)
    for buffer in buffers:
        if sent >= len(buffer):
            sent -= len(buffer)
            continue
        sock.sendall(memoryview(buffer)[sent:])
        sent = 0


def _forget_task(xapi_session, task_ref):
    try:
        xapi_session.call("task.destroy", task_ref)
    except exceptions.XapiFailure:
        LOG.debug("could not destroy import task", exc_info=True)


# -- files --------------------------------------------------------------------

def upload_file(xapi_session, vdi_ref, path, fmt="vhd", progress=None,
                progress_interval=None):
    """Write the raw disk image at ``path`` into VDI ``vdi_ref`` with one PUT.

    ``fmt``: ``vhd`` (dynamic VHD of the data blocks), ``chunked`` (sparse
    framing of the non-zero data) or ``raw`` (every byte). The VDI must be
    fresh (all zero): skipped regions are not written. ``progress(done,
    total)`` is called with body bytes. Raises XapiFailure (HTTP status or the
    task's error info), DiskOperationFailed (a size VHD cannot hold).
    """
    if fmt not in FORMATS:
        raise ValueError("unknown upload format %r (one of %s)" % (fmt, ", ".join(FORMATS)))
    if fmt == "vhd":
        stream = vhd.VhdStream.from_file(path)
        length, query = stream.length, {"format": "vhd"}
        pieces = ([piece] for piece in stream)
    else:
        with open(path, "rb") as source:
            file_size = os.fstat(source.fileno()).st_size
            if fmt == "chunked":
                flat = file_data_runs(source.fileno(), file_size)
                runs = list(zip(flat[::2], flat[1::2], strict=True))
                length, query = chunked_length(runs), {"format": "raw", "chunked": "true"}
            else:
                runs = [(0, file_size)]
                length, query = file_size, {"format": "raw"}
        pieces = _file_pieces(path, runs, framed=(fmt == "chunked"))
    tracker = Progress("upload of %s as %s" % (os.path.basename(path), fmt),
                       length, progress, progress_interval)
    _put(xapi_session, vdi_ref, query, length, pieces, tracker)
    LOG.info("%s: done, %s", tracker.label, tracker.summary())


def _file_pieces(path, runs, framed):
    """The body, piece by piece; each piece is sent before the next is read,
    so one buffer serves them all."""
    buffer = memoryview(bytearray(PIECE_BYTES))
    with open(path, "rb", buffering=0) as source:
        fd = source.fileno()
        for run_offset, run_length in runs:
            for offset, size in _split(run_offset, run_length):
                got = _pread_full(fd, buffer[:size], offset)
                if got < size:
                    raise exceptions.DiskOperationFailed(
                        operation="upload", target=path,
                        reason="file shrank while being sent (offset %d)" % (offset + got))
                if framed:
                    yield [_FRAME_HEADER.pack(offset, size), buffer[:size]]
                else:
                    yield [buffer[:size]]
        if framed:
            yield [_END_OF_FRAMES]


# -- streams ------------------------------------------------------------------

def upload_stream(xapi_session, vdi_ref, reader, size_bytes, window_bytes=WINDOW_BYTES,
                  progress=None, progress_interval=None):
    """Write ``size_bytes`` read from ``reader`` into VDI ``vdi_ref``.

    The stream is read in two halves of ``window_bytes`` that take turns: a
    thread reads one half while the other is sent, so memory stays at
    ``window_bytes``. Each half's non-zero 64 KiB blocks go out as one
    chunked PUT with its own task; a half of zeros sends nothing. ``reader``
    has ``readinto`` or ``read``. ``progress(done, total)`` counts stream
    bytes. Raises XapiFailure (HTTP status or a task's error info),
    DiskOperationFailed (stream shorter than ``size_bytes``), and whatever
    the reader raises (ImageFetchFailed for image downloads).
    """
    half = window_bytes // 2
    if half < ZERO_BLOCK_BYTES or half % ZERO_BLOCK_BYTES:
        raise ValueError("window_bytes must be a multiple of %d" % (2 * ZERO_BLOCK_BYTES))
    half = min(half, max(size_bytes, ZERO_BLOCK_BYTES))
    tracker = Progress("upload of a %d-byte stream" % size_bytes, size_bytes,
                       progress, progress_interval)
    sent_bytes = puts = 0
    with readahead.ReadAhead(reader, size_bytes, half) as windows:
        for window in windows:
            runs = nonzero_runs(window.buffer, window.length, window.offset)
            if runs:
                body_length = chunked_length(runs)
                _put(xapi_session, vdi_ref, {"format": "raw", "chunked": "true"},
                     body_length, _window_pieces(window.view, window.offset, runs),
                     _Quiet())
                sent_bytes += body_length
                puts += 1
            tracker.advance(window.length)
            windows.release(window)
    LOG.info("%s: done, %s; sent %d bytes in %d PUT(s)",
             tracker.label, tracker.summary(), sent_bytes, puts)


class _Quiet:
    """Progress sink of a single window: the stream's tracker counts instead."""

    done_bytes = 0

    def advance(self, count):
        self.done_bytes += count


def _window_pieces(view, window_offset, runs):
    for run_offset, run_length in runs:
        for offset, size in _split(run_offset, run_length):
            start = offset - window_offset
            yield [_FRAME_HEADER.pack(offset, size), view[start:start + size]]
    yield [_END_OF_FRAMES]
