"""Zero-copy receive of a plain raw import body: socket → pipe → VDI file.

``os.splice`` moves the body from the socket into a pipe and from the pipe
into the VDI file at explicit offsets, so the bytes never pass through a
Python buffer: the only copy left is the kernel's, from the socket's pages
into the page cache. Zero detection then reads what was just written through
a read-only ``mmap`` of the file (page-cache memory, no copy) and punches the
all-zero 64 KiB grains, so they end up holes as on the buffered path.

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


def receive(sock, prefix, fd, vdi_path, size):
    """Write ``size`` body bytes at offset 0 of the VDI open as ``fd``.

    ``prefix`` holds the body's first bytes, already read by the HTTP layer
    (at most ``size``); the rest comes from ``sock``. Nothing is written past
    ``size``, which the caller checked against the VDI's size.
    """
    if size == 0:
        return
    read_fd = os.open(vdi_path, os.O_RDONLY)
    try:
        disk = mmap.mmap(read_fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(read_fd)  # the mapping keeps its own reference
    try:
        _pwrite_all(fd, prefix, 0)
        checked = _punch_zero_grains(disk, fd, 0, len(prefix) // GRAIN * GRAIN)
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # an unprivileged process over pipe-max-size: keep the default
            step = fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ)
            done = len(prefix)
            while done < size:
                moved = _from_socket(sock, pipe_w, min(step, size - done), done)
                _to_file(pipe_r, fd, moved, done)
                done += moved
                grains_end = size if done == size else done // GRAIN * GRAIN
                checked = _punch_zero_grains(disk, fd, checked, grains_end)
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
    finally:
        disk.close()


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


def _punch_zero_grains(disk, fd, start, end):
    """Punch the all-zero grains of [start, end) (start grain-aligned); returns end."""
    try:
        _punch_zero_runs(disk, fd, start, end)
    except OSError as e:
        raise WriteFailed(start, e) from None
    return end


def _punch_zero_runs(disk, fd, start, end):
    run_start = None
    pos = start
    while pos < end:
        grain_end = min(pos + GRAIN, end)
        if sparsefile.is_zero(memoryview(disk)[pos:grain_end]):
            if run_start is None:
                run_start = pos
        elif run_start is not None:
            sparsefile.punch_hole(fd, run_start, pos - run_start)
            run_start = None
        pos = grain_end
    if run_start is not None:
        sparsefile.punch_hole(fd, run_start, end - run_start)
