"""Zero-copy receive of raw import bodies: socket → pipe → VDI file.

``os.splice`` moves body bytes from the socket into a pipe and from the pipe
into the VDI file at explicit offsets, so they never pass through a Python
buffer: the only copy left is the kernel's, from the socket's pages into the
page cache. A :class:`Receiver` holds the one pipe of an import and receives
pieces of the body into ranges of the VDI: the whole disk for a plain body,
each chunk's data for XAPI's chunked framing (whose headers ``dataio`` reads
itself). Zero detection then reads what was just written through a read-only
``mmap`` of the file (page-cache memory, no copy) and punches the all-zero
64 KiB grains, so they end up holes as on the buffered path.

Linux only; :data:`AVAILABLE` says whether it can be used at all. Errors are
raised as :class:`Cut` (the body ended or the connection failed) or
:class:`WriteFailed`, which ``dataio`` words as its ``ImportFailed``.
"""

import fcntl
import mmap
import os
import select
import ssl

from dom0.simulator import sparsefile

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
# The pipe is the unit of each splice pair: 1 MiB is the default
# /proc/sys/fs/pipe-max-size, large enough that the per-call cost vanishes.
PIPE_SIZE = 1 << 20
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_MORE", 0)
GRAIN = sparsefile.ZERO_GRAIN


def usable(body):
    """True when ``body`` (``http_data.SocketBody``) can be spliced from.

    A TLS socket's file descriptor carries ciphertext, so it never is.
    """
    return (AVAILABLE and hasattr(body, "take_buffered")
            and not isinstance(body.socket, ssl.SSLSocket))


class Cut(Exception):
    """The body stopped after ``done`` bytes: closed (``cause`` None) or failed."""

    def __init__(self, done, cause=None):
        super().__init__(done, cause)
        self.done = done
        self.cause = cause


class WriteFailed(Exception):
    """Writing into the VDI failed at ``offset`` with the OSError ``cause``."""

    def __init__(self, offset, cause):
        super().__init__(offset, cause)
        self.offset = offset
        self.cause = cause


class Receiver:
    """Splices pieces of a body from ``sock`` into the VDI open (for writing) as ``fd``.

    One pipe serves every piece of an import; use it as a context manager so
    the pipe is closed. ``vdi_path`` is opened read-only for the zero check.
    """

    def __init__(self, sock, fd, vdi_path):
        self._sock = sock
        self._fd = fd
        self._read_fd = os.open(vdi_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._pipe_r, self._pipe_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(self._read_fd)
            raise
        try:
            fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # an unprivileged process over pipe-max-size: keep the default
        self._step = fcntl.fcntl(self._pipe_w, fcntl.F_GETPIPE_SZ)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        for fd in (self._pipe_r, self._pipe_w, self._read_fd):
            os.close(fd)
        return False

    def receive(self, prefix, offset, size):
        """Write ``size`` body bytes at ``offset`` of the VDI.

        ``prefix`` holds the first of them, already read from the connection
        (at most ``size``); the rest comes from the socket, and not one byte
        more is taken from it. The caller checked that ``offset + size`` is
        within the VDI (and so its file). All-zero grains of the range,
        clipped to it, are punched; bytes outside the range are never
        touched. Raises :class:`Cut` with ``done`` counting the bytes of this
        piece that had arrived.
        """
        if size == 0:
            return
        end = offset + size
        # A mapping starts on a page: map from the page that holds ``offset``.
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        disk = mmap.mmap(self._read_fd, end - base, mmap.MAP_SHARED, mmap.PROT_READ,
                         offset=base)
        try:
            _pwrite_all(self._fd, prefix, offset)
            done = offset + len(prefix)
            checked = _punch_zero_grains(disk, base, self._fd, offset,
                                         _complete(offset, done, end))
            while done < end:
                moved = _from_socket(self._sock, self._pipe_w, min(self._step, end - done),
                                     done - offset)
                _to_file(self._pipe_r, self._fd, moved, done)
                done += moved
                checked = _punch_zero_grains(disk, base, self._fd, checked,
                                             _complete(checked, done, end))
        finally:
            disk.close()


def _complete(checked, done, end):
    """Where the grains whose bytes have all arrived end (never before ``checked``)."""
    if done == end:
        return end
    return max(checked, done - done % GRAIN)


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)
    except OSError as e:
        raise WriteFailed(offset + written, e) from None


def _from_socket(sock, pipe_w, count, done):
    """Splice up to ``count`` bytes from the socket into the empty pipe."""
    while True:
        try:
            moved = os.splice(sock.fileno(), pipe_w, count, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            # A socket with a timeout is non-blocking underneath: wait as recv would.
            timeout = sock.gettimeout()
            ready, _, _ = select.select([sock], [], [], timeout)
            if not ready:
                raise Cut(done, TimeoutError("timed out")) from None
            continue
        except OSError as e:
            raise Cut(done, e) from None
        if not moved:
            raise Cut(done)
        return moved


def _to_file(pipe_r, fd, count, offset):
    """Drain ``count`` bytes from the pipe into the file at ``offset``."""
    while count:
        try:
            moved = os.splice(pipe_r, fd, count, offset_dst=offset, flags=_SPLICE_FLAGS)
        except OSError as e:
            raise WriteFailed(offset, e) from None
        if not moved:
            raise WriteFailed(offset, OSError("splice into the VDI wrote nothing"))
        count -= moved
        offset += moved


def _punch_zero_grains(disk, base, fd, start, end):
    """Punch the all-zero pieces of [start, end); returns end.

    ``disk`` maps the file from offset ``base``. The pieces are the 64 KiB
    grains of the file clipped to [start, end), as ``SparseWriter`` cuts a
    write: a grain only partly inside loses nothing outside the range.
    """
    try:
        with memoryview(disk) as view:
            _punch_zero_runs(view, base, fd, start, end)
    except OSError as e:
        raise WriteFailed(start, e) from None
    return end


def _punch_zero_runs(view, base, fd, start, end):
    run_start = None
    pos = start
    while pos < end:
        piece_end = min(pos - pos % GRAIN + GRAIN, end)
        if sparsefile.is_zero(view[pos - base:piece_end - base]):
            if run_start is None:
                run_start = pos
        elif run_start is not None:
            sparsefile.punch_hole(fd, run_start, pos - run_start)
            run_start = None
        pos = piece_end
    if run_start is not None:
        sparsefile.punch_hole(fd, run_start, end - run_start)
