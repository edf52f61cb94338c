"""How much storage a VDI's file uses of its own.

XAPI's ``physical_utilisation`` of a VHD child counts the child's own blocks,
not its parent's: a fresh clone uses next to nothing. The simulator's clone
is a copy that a file system with shared extents (XFS with reflink, btrfs)
makes by sharing blocks, so a file's allocated size (``st_blocks``) overstates
it. The file's extents are read with the ``FS_IOC_FIEMAP`` ioctl, and those
marked shared are left out. Where the file system has no FIEMAP (tmpfs),
the allocated size stands.
"""

import errno
import fcntl
import os
import struct

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_HEADER = struct.Struct("=QQIIII")       # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")    # logical, physical, length, 2 reserved, flags, 3
_BATCH = 256
_NO_FIEMAP = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL)


def shared_bytes(fd):
    """Bytes of the open file's extents shared with another file, or None
    when the file system cannot tell (no FIEMAP)."""
    shared = 0
    start = 0
    while True:
        request = bytearray(_HEADER.size + _BATCH * _EXTENT.size)
        _HEADER.pack_into(request, 0, start, 0xFFFFFFFFFFFFFFFF - start, 0, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request, True)
        except OSError as e:
            if e.errno in _NO_FIEMAP:
                return None
            raise
        mapped = _HEADER.unpack_from(request, 0)[3]
        if not mapped:
            return shared
        for index in range(mapped):
            logical, _physical, length, _r1, _r2, flags, _a, _b, _c = _EXTENT.unpack_from(
                request, _HEADER.size + index * _EXTENT.size)
            if flags & FIEMAP_EXTENT_SHARED:
                shared += length
            if flags & FIEMAP_EXTENT_LAST:
                return shared
            start = logical + length


def own_bytes(path):
    """Allocated bytes of the file at ``path`` that no other file shares."""
    fd = os.open(path, os.O_RDONLY)
    try:
        allocated = os.fstat(fd).st_blocks * 512
        shared = shared_bytes(fd)
    finally:
        os.close(fd)
    return max(0, allocated - (shared or 0))
