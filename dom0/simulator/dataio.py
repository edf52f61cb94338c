"""The byte-level work behind ``PUT /import_raw_vdi`` and ``GET /export_raw_vdi``.

The HTTP handler checks the request, answers ``200`` and then hands the body
to one of the ``import_*`` functions, whose outcome becomes the task's. Every
import failure (a body larger than the VDI, a malformed VHD or chunk stream,
a connection cut mid-body) raises :class:`ImportFailed`; nothing is ever
written past the VDI's size, and a VDI that held no data before a failed
import holds none after it. After a failure the body may be partly unread, so
the connection cannot carry another request.

Speed matters (later benchmarks must not be bound by the simulator): a raw
body from a plain socket, with or without the chunked framing, is spliced into
the file by :mod:`splicein` (chunk headers are read here, chunk data never
enters Python); other bodies are read in 4 MiB pieces into a few circulating
buffers and written with ``pwrite`` by a second thread while the next piece
arrives; all-zero 64 KiB grains are skipped so they stay holes. The exports
are in :mod:`vdiexport`.
"""

import contextlib
import functools
import os
import queue
import struct
import threading

from dom0.simulator import sparsefile, splicein, vhd
# Exports live in their own module; the HTTP handler finds them all here.
from dom0.simulator.vdiexport import export_raw, export_vhd, vhd_export_length
from dom0.simulator.vhdformat import SECTOR, VhdError

__all__ = ["ImportFailed", "import_raw", "import_vhd", "export_raw", "export_vhd",
           "vhd_export_length"]

PIECE = vhd.PIECE  # 4 MiB: large reads, few system calls
_CHUNK_HEADER = struct.Struct("<QI")
_UNBOUNDED = 1 << 63


class ImportFailed(Exception):
    """An import was refused or broke off; message → ['VDI_IO_ERROR', message]."""


class _Body:
    """Exact reads from an HTTP body of known length; a short body fails."""

    def __init__(self, rfile, length):
        self._rfile = rfile
        self.length = length
        self.consumed = 0
        self._scratch = None

    @property
    def remaining(self):
        return self.length - self.consumed

    def readinto(self, view):
        size = len(view)
        self._check_left(size)
        got = 0
        while got < size:
            try:
                n = self._receive_into(view[got:])
            except OSError as e:
                raise ImportFailed("connection failed after %s: %s"
                                   % (self._progress(got), e)) from None
            if not n:
                raise ImportFailed("connection closed after %s" % self._progress(got))
            got += n
        self.consumed += size

    def _check_left(self, size):
        if size > self.remaining:
            raise ImportFailed("the body ends after %d bytes, %d more were needed"
                               % (self.length, size - self.remaining))

    def _receive_into(self, view):
        return self._rfile.readinto(view)

    def _progress(self, extra):
        if self.length == _UNBOUNDED:
            return "%d body bytes" % (self.consumed + extra)
        return "%d of %d body bytes" % (self.consumed + extra, self.length)

    def read(self, size):
        buf = bytearray(size)
        self.readinto(memoryview(buf))
        return bytes(buf)

    def skip(self, size):
        if self._scratch is None:
            self._scratch = memoryview(bytearray(1 << 20))
        while size > 0:
            step = min(size, len(self._scratch))
            self.readinto(self._scratch[:step])
            size -= step


class _SplicedBody(_Body):
    """A body from a plain socket (``splicein.usable``) whose data is spliced.

    ``splice`` moves body bytes into the VDI without Python buffers;
    ``readinto`` (chunk headers) still reads exactly what it is asked for.
    The body bytes the HTTP layer read along with the headers are taken out
    of its buffer first and served before anything from the socket.
    """

    def __init__(self, rfile, length):
        super().__init__(rfile, length)
        try:
            self._pending = memoryview(rfile.take_buffered(length))
        except OSError as e:
            raise ImportFailed("connection failed after %s: %s"
                               % (self._progress(0), e)) from None

    def _receive_into(self, view):
        if not self._pending:
            return self._rfile.readinto(view)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def splice(self, receiver, offset, size):
        """Receive the next ``size`` body bytes into the VDI at ``offset``."""
        self._check_left(size)
        prefix = self._pending[:size]
        self._pending = self._pending[len(prefix):]
        try:
            receiver.receive(prefix, offset, size)
        except splicein.Cut as e:
            if e.cause is None:
                raise ImportFailed("connection closed after %s"
                                   % self._progress(e.done)) from None
            raise ImportFailed("connection failed after %s: %s"
                               % (self._progress(e.done), e.cause)) from None
        except splicein.WriteFailed as e:
            raise ImportFailed("writing the VDI failed at offset %d: %s"
                               % (e.offset, e.cause)) from None
        self.consumed += size


class _VdiTarget:
    """The VDI file opened for an import, undone if it fails on a fresh VDI."""

    def __init__(self, vdi_path, vdi_size, thick=False):
        self.vdi_path = vdi_path
        self.vdi_size = vdi_size
        self.thick = thick

    def __enter__(self):
        self.fd = os.open(self.vdi_path, os.O_WRONLY)
        self.writer = sparsefile.SparseWriter(self.fd, self.vdi_size, self.thick)
        self._was_empty = self.writer.fresh
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None and self._was_empty:
                sparsefile.punch_hole(self.fd, 0, self.vdi_size)
        finally:
            os.close(self.fd)
        return False

    # The sink interface of vhd.decode_stream.
    def begin(self, virtual_size):
        # A VHD counts whole sectors, so a VDI whose size is not a multiple of
        # 512 (its own VHD export, say) may receive a VHD up to that multiple,
        # provided the bytes past the VDI's end are zeros (see write).
        if virtual_size > -(-self.vdi_size // SECTOR) * SECTOR:
            raise ImportFailed("the VHD's virtual size (%d bytes) is larger than the VDI "
                               "(%d bytes)" % (virtual_size, self.vdi_size))
        if not self.writer.fresh:
            # Sectors the VHD does not hold read as zeros, not as old data.
            sparsefile.punch_hole(self.fd, 0, min(virtual_size, self.vdi_size))
            self.writer.fresh = True

    def write(self, offset, view):
        end = offset + len(view)
        if end > self.vdi_size:
            beyond = view[max(self.vdi_size - offset, 0):]
            if end - self.vdi_size >= SECTOR or not sparsefile.is_zero(beyond):
                raise ImportFailed("write of %d bytes at offset %d passes the VDI's end (%d)"
                                   % (len(view), offset, self.vdi_size))
            view = view[:len(view) - len(beyond)]
        try:
            self.writer.write(offset, view)
        except OSError as e:
            raise ImportFailed("writing the VDI failed at offset %d: %s" % (offset, e)) from None


def import_raw(rfile, content_length, vdi_path, vdi_size, chunked, thick=False):
    """Write a raw body into the VDI file; returns the disk bytes imported.

    Plain: the body is the disk from offset 0. ``chunked``: XAPI's sparse
    framing, repeated ``<uint64 offset><uint32 length>`` (little-endian) and
    data, ended by a chunk of offset 0 and length 0. ``content_length`` None
    (no header) reads a plain body until the peer closes it. ``thick``: the
    VDI is a thick volume (an LVM SR), where every byte received is written,
    zeros too, and none is left a hole.
    """
    if chunked:
        # Without a Content-Length the terminating chunk alone ends the body.
        length = _UNBOUNDED if content_length is None else content_length
        with _VdiTarget(vdi_path, vdi_size, thick) as target, \
                _moving(rfile, length, target) as (body, copy):
            return _import_chunks(body, copy, vdi_size, content_length is not None)
    if content_length is None:
        with _VdiTarget(vdi_path, vdi_size, thick) as target:
            return _copy_until_eof(rfile, target, vdi_size)
    if content_length > vdi_size:
        raise ImportFailed("the body (%d bytes) is larger than the VDI (%d bytes)"
                           % (content_length, vdi_size))
    with _VdiTarget(vdi_path, vdi_size, thick) as target, \
            _moving(rfile, content_length, target) as (_, copy):
        copy(0, content_length)
    return content_length


@contextlib.contextmanager
def _moving(rfile, length, target):
    """``(body, copy)`` for a body of ``length`` bytes: ``copy(offset, size)``
    moves its next ``size`` bytes into the VDI at ``offset``, spliced from a
    plain socket (:mod:`splicein`), else through buffers that a second
    thread writes (:class:`_WriteBehind`)."""
    if splicein.usable(rfile):
        body = _SplicedBody(rfile, length)
        with splicein.Receiver(rfile.socket, target.fd, target.vdi_path,
                               target.thick) as receiver:
            yield body, functools.partial(body.splice, receiver)
    else:
        body = _Body(rfile, length)
        with _WriteBehind(target) as writer:
            yield body, functools.partial(writer.copy, body)


class _WriteBehind:
    """Writes received pieces on a second thread while the next one arrives.

    Receiving (socket to buffer) and writing (buffer to page cache) are both
    copies that release the GIL; overlapping them instead of alternating is
    what keeps a dense import near the speed of ``cp``. A few buffers
    circulate, so memory stays bounded: ``buffer`` lends one (waiting for a
    free one), ``write`` queues writes of views into it, ``release`` hands it
    back once those are done. A write error is raised in the receiving
    thread at its next call. Also the sink of :func:`vhd.decode_stream`.
    """

    DEPTH = 3

    def __init__(self, target):
        self._target = target
        self._free = queue.Queue()
        for _ in range(self.DEPTH):
            self._free.put(bytearray(PIECE))
        self._queue = queue.Queue()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="vdi-write-behind",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            offset, view = item
            if offset is None:
                self._free.put(view)
            elif self._error is None:
                try:
                    self._target.write(offset, view)
                except BaseException as e:  # handed to the receiving thread
                    self._error = e

    def _check(self):
        if self._error is not None:
            raise self._error

    def begin(self, virtual_size):
        self._target.begin(virtual_size)

    def buffer(self, size):
        buf = self._free.get()
        self._check()
        return memoryview(buf)[:size]

    def write(self, offset, view):
        self._queue.put((offset, view))

    def release(self, view):
        self._queue.put((None, view.obj))

    def copy(self, body, offset, size):
        """Receive ``size`` body bytes and have them written at ``offset``."""
        done = 0
        while done < size:
            piece = self.buffer(min(PIECE, size - done))
            try:
                body.readinto(piece)
                self.write(offset + done, piece)
            finally:
                self.release(piece)
            done += len(piece)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._check()
        return False


def _copy_until_eof(rfile, target, vdi_size):
    """A plain body without a Content-Length: read until the peer closes."""
    buf = memoryview(bytearray(PIECE))
    done = 0
    while True:
        try:
            got = rfile.readinto(buf)
        except OSError as e:
            raise ImportFailed("connection failed after %d body bytes: %s"
                               % (done, e)) from None
        if not got:
            return done
        if done + got > vdi_size:
            raise ImportFailed("the body (more than %d bytes) is larger than the VDI "
                               "(%d bytes)" % (done + got, vdi_size))
        target.write(done, buf[:got])
        done += got


def _import_chunks(body, copy, vdi_size, length_known):
    """Read a chunk stream from ``body``; ``copy(offset, length)`` moves each chunk's data."""
    imported = 0
    while True:
        if body.remaining == 0:
            raise ImportFailed("the chunk stream ends without its terminating chunk "
                               "(offset 0, length 0)")
        if body.remaining < _CHUNK_HEADER.size:
            raise ImportFailed("truncated chunk header: %d bytes left, a header has %d"
                               % (body.remaining, _CHUNK_HEADER.size))
        offset, length = _CHUNK_HEADER.unpack(body.read(_CHUNK_HEADER.size))
        if offset == 0 and length == 0:
            break
        if offset + length > vdi_size:
            raise ImportFailed("chunk at offset %d of %d bytes passes the VDI's end (%d)"
                               % (offset, length, vdi_size))
        if length > body.remaining:
            raise ImportFailed("chunk at offset %d declares %d bytes, the body has %d left"
                               % (offset, length, body.remaining))
        copy(offset, length)
        imported += length
    if length_known and body.remaining:
        raise ImportFailed("%d bytes follow the terminating chunk" % body.remaining)
    return imported


def import_vhd(rfile, content_length, vdi_path, vdi_size, thick=False):
    """Decode a dynamic or fixed VHD body into the VDI; returns disk bytes written."""
    if content_length is None:
        raise ImportFailed("a VHD body needs a Content-Length")
    body = _Body(rfile, content_length)
    with _VdiTarget(vdi_path, vdi_size, thick) as target, _WriteBehind(target) as writer:
        try:
            return vhd.decode_stream(body, content_length, writer)
        except VhdError as e:
            raise ImportFailed("malformed VHD: %s" % e) from None
