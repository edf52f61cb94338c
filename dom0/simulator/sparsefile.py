"""Sparse-file primitives the data path is built on.

A VDI is a sparse file: regions never written are holes and read as zeros.
Imports keep them holes by not writing all-zero pieces (or punching them out
when the file already held data there); exports find them with
``SEEK_DATA``/``SEEK_HOLE`` instead of reading them.
"""

import ctypes
import ctypes.util
import errno
import os

# Zero detection and hole punching work on pieces of this size, aligned to
# absolute file offsets, so holes line up with filesystem blocks.
ZERO_GRAIN = 64 << 10
_ZERO_GRAIN_BYTES = bytes(ZERO_GRAIN)
_ZERO_GRAIN_WORDS = memoryview(_ZERO_GRAIN_BYTES).cast("Q")
ZEROS = memoryview(bytes(1 << 20))

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def is_zero(piece):
    """True when the memoryview ``piece`` holds only zero bytes.

    Comparing as 64-bit words stops at the first non-zero word and runs at
    memory speed on zeros; a byte-format memoryview comparison would unpack
    every byte in Python's slow path.
    """
    size = len(piece)
    if size == ZERO_GRAIN:
        return piece.cast("Q") == _ZERO_GRAIN_WORDS
    if size % 8 == 0 and size < ZERO_GRAIN:
        return piece.cast("Q") == _ZERO_GRAIN_WORDS[:size // 8]
    return piece.tobytes().count(0) == size


def punch_hole(fd, offset, length):
    """Deallocate [offset, offset+length) so it reads as zeros; size unchanged.

    Falls back to writing zeros where the filesystem cannot punch holes.
    """
    if length <= 0:
        return
    if _fallocate is not None:
        if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, "fallocate(PUNCH_HOLE): %s" % os.strerror(err))
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, ZEROS[:min(len(ZEROS), end - offset)], offset)


def has_data(fd):
    """True when any byte of the file is allocated."""
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return False
        raise
    return True


def data_extents(fd, limit):
    """Yield (start, end) of the allocated regions below ``limit``."""
    offset = 0
    while offset < limit:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        if start >= limit:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), limit)
        yield start, end
        offset = end


class SparseWriter:
    """Writes pieces at offsets, leaving all-zero grains unwritten.

    When the file held no data at all when opened (``fresh``), skipped zero
    grains are already holes; otherwise they are punched so stale data cannot
    show through. ``limit`` is the size nothing may be written past.
    """

    def __init__(self, fd, limit, thick=False):
        self.fd = fd
        self.limit = limit
        self.fresh = not has_data(fd)
        self.thick = thick  # write zeros as data: a thick volume has no holes

    def write(self, offset, data):
        """Write memoryview ``data`` at ``offset``; the caller checked the limit."""
        size = len(data)
        if offset < 0 or offset + size > self.limit:
            raise ValueError("write of %d bytes at %d passes the end (%d)"
                             % (size, offset, self.limit))
        pos = 0
        run_start, run_zero = 0, None
        while pos < size:
            step = min(ZERO_GRAIN - (offset + pos) % ZERO_GRAIN, size - pos)
            zero = is_zero(data[pos:pos + step])
            if zero is not run_zero and pos > run_start:
                self._flush(offset, data, run_start, pos, run_zero)
                run_start = pos
            run_zero = zero
            pos += step
        if pos > run_start:
            self._flush(offset, data, run_start, pos, run_zero)

    def _flush(self, offset, data, start, end, zero):
        if zero and not self.thick:
            if not self.fresh:
                punch_hole(self.fd, offset + start, end - start)
            return
        view = data[start:end]
        written = 0
        while written < len(view):
            written += os.pwrite(self.fd, view[written:], offset + start + written)
