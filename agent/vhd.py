"""A streaming encoder of dynamic VHD images.

Written from Microsoft's "Virtual Hard Disk Image Format Specification"
(v1.0, 2006). It shares nothing with the simulator's decoder on purpose: the
two sides of ``PUT /import_raw_vdi?format=vhd`` are checked against each
other and against ``qemu-img``, and a shared bug would hide from both.

The image is laid out in the order it is sent, so it can go to a socket
without seeking::

    footer copy (512) | dynamic disk header (1024) | BAT (padded to 512)
    | block: sector bitmap (512) + data (2 MiB) | ... | footer (512)

Only blocks holding non-zero data are stored: the data regions come from
``SEEK_DATA``/``SEEK_HOLE`` and every candidate block is read once before
streaming to drop all-zero blocks, so the exact length is known before the
first byte is sent (HTTP needs ``Content-Length``).
"""

import array
import errno
import os
import struct
import sys
import time
import uuid

from rpc import exceptions

SECTOR_BYTES = 512
BLOCK_BYTES = 2 * 1024 * 1024
MAX_PIECE_BYTES = 4 * 1024 * 1024
# The spec's ceiling for a dynamic disk (BAT entries are 32-bit sector offsets
# and the CHS geometry tops out near 127 GiB anyway; 2040 GiB is what
# Hyper-V and XenServer accept).
MAX_VIRTUAL_SIZE_BYTES = 2040 * 1024 ** 3

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FEATURES_RESERVED = 0x00000002  # the spec says this bit is always set
FORMAT_VERSION = 0x00010000
DISK_TYPE_DYNAMIC = 3
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
BAT_UNUSED = 0xFFFFFFFF
# Readers (qemu among them) trust the footer's "current size" over the CHS
# geometry only for creators they know to store exact sizes; XenServer's own
# storage stack writes "tap\0" and our images are made for it, with exact
# sizes that the CHS geometry often cannot express (1 GiB, for one).
CREATOR_APP = b"tap\x00"
CREATOR_VERSION = 0x00010000
CREATOR_HOST_OS = b"Wi2k"
# VHD time stamps count seconds from 2000-01-01 00:00:00 UTC.
VHD_EPOCH = 946684800

# How much of a candidate block is read at a time when looking for data: a
# dense block is recognised after the first piece.
_PROBE_BYTES = 256 * 1024
_ZEROS = bytes(_PROBE_BYTES)

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427x")
_DYN_HEADER = struct.Struct(">8sQQIIII16sI4x512s192s256x")


def chs_geometry(total_sectors):
    """(cylinders, heads, sectors per track) for a disk, as the spec computes it."""
    total_sectors = min(total_sectors, 65535 * 16 * 255)
    if total_sectors >= 65535 * 16 * 63:
        sectors_per_track = 255
        heads = 16
        cylinder_times_heads = total_sectors // sectors_per_track
    else:
        sectors_per_track = 17
        cylinder_times_heads = total_sectors // sectors_per_track
        heads = max((cylinder_times_heads + 1023) // 1024, 4)
        if cylinder_times_heads >= heads * 1024 or heads > 16:
            sectors_per_track = 31
            heads = 16
            cylinder_times_heads = total_sectors // sectors_per_track
        if cylinder_times_heads >= heads * 1024:
            sectors_per_track = 63
            heads = 16
            cylinder_times_heads = total_sectors // sectors_per_track
    return cylinder_times_heads // heads, heads, sectors_per_track


def checksum(structure):
    """One's complement of the byte sum (the checksum field counted as zero)."""
    return ~sum(structure) & 0xFFFFFFFF


def footer(virtual_size, unique_id, timestamp, data_offset=SECTOR_BYTES):
    """The 512-byte hard disk footer of a dynamic disk of ``virtual_size`` bytes."""
    cylinders, heads, sectors = chs_geometry(virtual_size // SECTOR_BYTES)
    fields = [FOOTER_COOKIE, FEATURES_RESERVED, FORMAT_VERSION, data_offset,
              timestamp, CREATOR_APP, CREATOR_VERSION, CREATOR_HOST_OS,
              virtual_size, virtual_size, cylinders, heads, sectors,
              DISK_TYPE_DYNAMIC, 0, unique_id, 0]
    fields[14] = checksum(_FOOTER.pack(*fields))
    return _FOOTER.pack(*fields)


def dynamic_header(table_offset, max_table_entries):
    """The 1024-byte dynamic disk header (no parent: not a differencing disk)."""
    fields = [HEADER_COOKIE, NO_OFFSET, table_offset, FORMAT_VERSION,
              max_table_entries, BLOCK_BYTES, 0, bytes(16), 0, b"", b""]
    fields[6] = checksum(_DYN_HEADER.pack(*fields))
    return _DYN_HEADER.pack(*fields)


def sector_bitmap(sectors_in_block):
    """A block's bitmap, padded to a sector: one bit per sector, MSB first."""
    full, rest = divmod(sectors_in_block, 8)
    bitmap = b"\xff" * full
    if rest:
        bitmap += bytes([(0xFF << (8 - rest)) & 0xFF])
    return bitmap.ljust(SECTOR_BYTES, b"\x00")


def _size_error(path, reason):
    return exceptions.DiskOperationFailed(
        operation="VHD encoding", target=path, reason=reason)


def check_virtual_size(path, virtual_size):
    """Refuse a size a dynamic VHD cannot represent exactly."""
    if virtual_size <= 0:
        raise _size_error(path, "a disk needs at least one sector (size %d bytes)"
                          % virtual_size)
    if virtual_size % SECTOR_BYTES:
        raise _size_error(path, "size %d bytes is not a multiple of the %d-byte sector"
                          % (virtual_size, SECTOR_BYTES))
    if virtual_size > MAX_VIRTUAL_SIZE_BYTES:
        raise _size_error(path, "size %d bytes exceeds the VHD limit of %d bytes"
                          % (virtual_size, MAX_VIRTUAL_SIZE_BYTES))


def data_extents(fd, end):
    """(start, stop) byte ranges of ``fd`` below ``end`` that may hold data.

    Uses SEEK_DATA/SEEK_HOLE; where the file system (or a block device)
    cannot answer, the whole range counts as data.
    """
    offset = 0
    while offset < end:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, end
                return
            raise
        if start >= end:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        yield start, stop
        offset = stop


def nonzero_blocks(fd, file_size, block_bytes=BLOCK_BYTES):
    """Sorted indices of the ``block_bytes`` blocks that hold a non-zero byte."""
    found = array.array("I")
    probe = bytearray(_PROBE_BYTES)
    view = memoryview(probe)
    for start, stop in data_extents(fd, file_size):
        offset = start
        while offset < stop:
            index = offset // block_bytes
            block_end = min((index + 1) * block_bytes, stop)
            if found and found[-1] == index:
                offset = block_end
                continue
            while offset < block_end:
                want = min(_PROBE_BYTES, block_end - offset)
                got = os.preadv(fd, [view[:want]], offset)
                if got == 0:  # the file shrank under us: the rest reads as zeros
                    offset = block_end
                    break
                if not probe.startswith(_ZEROS[:got]):
                    found.append(index)
                    offset = block_end
                    break
                offset += got
    return found


class VhdStream:
    """A dynamic VHD of a raw disk, produced piece by piece.

    ``length`` is the exact number of bytes iteration yields. Iterating opens
    the source again and yields bytes-like pieces of at most 4 MiB; a piece is
    never reused, so a consumer may keep it. Memory stays at one block.
    """

    def __init__(self, path, virtual_size, blocks, unique_id=None, timestamp=None):
        check_virtual_size(path, virtual_size)
        self.path = path
        self.virtual_size = virtual_size
        self.blocks = blocks
        self.max_table_entries = -(-virtual_size // BLOCK_BYTES)
        self.unique_id = unique_id or uuid.uuid4().bytes
        if timestamp is None:
            timestamp = max(int(time.time()) - VHD_EPOCH, 0)
        self.timestamp = timestamp & 0xFFFFFFFF
        bat_bytes = self.max_table_entries * 4
        self.bat_offset = 3 * SECTOR_BYTES
        self.first_block_offset = self.bat_offset + _round_up(bat_bytes, SECTOR_BYTES)
        self.block_stride = SECTOR_BYTES + BLOCK_BYTES
        self.length = (self.first_block_offset + len(blocks) * self.block_stride
                       + SECTOR_BYTES)

    @classmethod
    def from_file(cls, path, virtual_size=None):
        """Map the data of the raw disk at ``path`` (a file or block device).

        ``virtual_size`` defaults to the source's size and may exceed it (the
        rest reads as zeros). Raises DiskOperationFailed for a size that a VHD
        cannot hold exactly or a source larger than ``virtual_size``.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            source_size = os.lseek(fd, 0, os.SEEK_END)
            if virtual_size is None:
                virtual_size = source_size
            check_virtual_size(path, virtual_size)
            if source_size > virtual_size:
                raise _size_error(path, "source holds %d bytes, more than the disk size %d"
                                  % (source_size, virtual_size))
            blocks = nonzero_blocks(fd, source_size)
        finally:
            os.close(fd)
        return cls(path, virtual_size, blocks)

    @property
    def data_bytes(self):
        """Bytes of disk data carried (whole blocks), for progress and logs."""
        return len(self.blocks) * BLOCK_BYTES

    def header_bytes(self):
        """Footer copy, dynamic header and BAT: everything before the first block."""
        bat = array.array("I", [BAT_UNUSED]) * self.max_table_entries
        sector = self.first_block_offset // SECTOR_BYTES
        sectors_per_block = self.block_stride // SECTOR_BYTES
        for index in self.blocks:
            bat[index] = sector
            sector += sectors_per_block
        if sys.byteorder == "little":
            bat.byteswap()
        head = (footer(self.virtual_size, self.unique_id, self.timestamp)
                + dynamic_header(self.bat_offset, self.max_table_entries))
        return (head + bat.tobytes()).ljust(self.first_block_offset, b"\xff")

    def __iter__(self):
        head = self.header_bytes()
        for offset in range(0, len(head), MAX_PIECE_BYTES):
            yield head[offset:offset + MAX_PIECE_BYTES]
        del head
        full_bitmap = sector_bitmap(BLOCK_BYTES // SECTOR_BYTES)
        with open(self.path, "rb", buffering=0) as source:
            fd = source.fileno()
            for index in self.blocks:
                start = index * BLOCK_BYTES
                sectors = min(BLOCK_BYTES, self.virtual_size - start) // SECTOR_BYTES
                piece = bytearray(self.block_stride)
                piece[:SECTOR_BYTES] = (full_bitmap if sectors * SECTOR_BYTES == BLOCK_BYTES
                                        else sector_bitmap(sectors))
                pread_into(fd, memoryview(piece)[SECTOR_BYTES:], start)
                yield piece
        yield footer(self.virtual_size, self.unique_id, self.timestamp)


def pread_into(fd, view, offset):
    """Fill ``view`` from ``offset``; returns the bytes read, which are fewer
    only at the end of the file (what lies past it is left as it was)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _round_up(value, multiple):
    return -(-value // multiple) * multiple
