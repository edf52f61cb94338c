"""Zero-copy receive of raw import bodies: socket → pipe → VDI file.

``os.splice`` moves body bytes from the socket into a pipe and from the pipe
into the VDI file at explicit offsets, so they never pass through a Python
buffer: the only copy left is the kernel's, from the socket's pages into the
page cache. A :class:`Receiver` holds the one pipe of an import and receives
pieces of the body into ranges of the VDI: the whole disk for a plain body,
each chunk's data for XAPI's chunked framing (whose headers ``dataio`` reads
itself). Zero detection then reads back what was just written, from the page
cache, a few hundred bytes per 64 KiB grain (a grain that starts with zeros
is read whole), and punches the all-zero grains, so they end up holes as on
the buffered path. (Mapping the file instead costs a page fault per grain and
an unmap per piece, which in the simulator's threaded server means TLB
shootdowns on every core.)

Linux only; :data:`AVAILABLE` says whether it can be used at all. Errors are
raised as :class:`Cut` (the body ended or the connection failed) or
:class:`WriteFailed`, which ``dataio`` words as its ``ImportFailed``.
"""

import fcntl
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
# Bytes read first from a grain to tell data from zeros (four cache lines:
# data rarely starts with 256 zero bytes, and a grain that does is then read
# whole).
PROBE_BYTES = 256


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

    def __init__(self, sock, fd, vdi_path, thick=False):
        self._thick = thick  # keep zeros as written: a thick volume has no holes
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
        self._probe = memoryview(bytearray(GRAIN))

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
        _pwrite_all(self._fd, prefix, offset)
        done = offset + len(prefix)
        checked = self._punch_zero_grains(offset, _complete(offset, done, end))
        while done < end:
            moved = _from_socket(self._sock, self._pipe_w, min(self._step, end - done),
                                 done - offset)
            _to_file(self._pipe_r, self._fd, moved, done)
            done += moved
            checked = self._punch_zero_grains(checked, _complete(checked, done, end))

    def _punch_zero_grains(self, start, end):
        """Punch the all-zero pieces of [start, end); returns end.

        The pieces are the 64 KiB grains of the file clipped to [start, end),
        as ``SparseWriter`` cuts a write: a grain only partly inside loses
        nothing outside the range. Each piece is read back from the page
        cache through a reused buffer, its first bytes first: data shows at
        once, and only a piece that starts with zeros is read whole.
        """
        if self._thick:
            return end
        try:
            _punch_zero_runs(self._read_fd, self._probe, self._fd, start, end)
        except OSError as e:
            raise WriteFailed(start, e) from None
        return end


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


def _is_zero_on_disk(read_fd, buffer, offset, size):
    """True when the ``size`` bytes at ``offset`` of the file read as zeros."""
    probe = min(PROBE_BYTES, size)
    if os.preadv(read_fd, [buffer[:probe]], offset) != probe \
            or not sparsefile.is_zero(buffer[:probe]):
        return False
    if probe == size:
        return True
    rest = size - probe
    return (os.preadv(read_fd, [buffer[probe:size]], offset + probe) == rest
            and sparsefile.is_zero(buffer[:size]))


def _punch_zero_runs(read_fd, buffer, fd, start, end):
    run_start = None
    pos = start
    while pos < end:
        piece_end = min(pos - pos % GRAIN + GRAIN, end)
        if _is_zero_on_disk(read_fd, buffer, pos, piece_end - pos):
            if run_start is None:
                run_start = pos
        elif run_start is not None:
            sparsefile.punch_hole(fd, run_start, pos - run_start)
            run_start = None
        pos = piece_end
    if run_start is not None:
        sparsefile.punch_hole(fd, run_start, end - run_start)
