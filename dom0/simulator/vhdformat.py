"""The VHD on-disk structures, written from Microsoft's VHD specification.

Everything in a VHD is big-endian. A dynamic or differencing file is laid out
as: a copy of the footer (512 bytes) at offset 0, the dynamic disk header
(1024 bytes, cookie ``cxsparse``), the block allocation table (one uint32 per
block: the sector where the block starts, ``0xFFFFFFFF`` when absent), the
data blocks, each a sector bitmap followed by ``block_size`` bytes of data,
and the footer (cookie ``conectix``) in the last 512 bytes. A fixed file is
the raw disk followed by the footer.

This module only parses, checks and builds those structures; reading a whole
disk is :mod:`dom0.simulator.vhd`'s job.
"""

import struct
import time
import uuid

SECTOR = 512
FOOTER_SIZE = 512
HEADER_SIZE = 1024
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
BAT_FREE = 0xFFFFFFFF
DEFAULT_BLOCK_SIZE = 2 << 20
# Hyper-V uses up to 256 MiB blocks; anything larger is not a VHD we accept.
MAX_BLOCK_SIZE = 256 << 20
# The BAT is held in memory: 16 M entries cover 32 TiB at 2 MiB blocks.
MAX_BAT_ENTRIES = 16 << 20

DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
DISK_TYPE_NAMES = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic",
                   DISK_DIFFERENCING: "differencing"}
FILE_FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
# Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00 UTC).
VHD_EPOCH = 946684800

_FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII16sB427s")
_HEADER = struct.Struct(">8sQQIIII16sI4s512s192s256s")
_FOOTER_CHECKSUM_AT = 64
_HEADER_CHECKSUM_AT = 36


class VhdError(ValueError):
    """The input is not a VHD we can read; the message names what is wrong."""


def checksum(raw, checksum_at):
    """One's complement of the byte sum, the checksum field counted as zero."""
    total = sum(raw) - sum(raw[checksum_at:checksum_at + 4])
    return ~total & 0xFFFFFFFF


def chs_geometry(size_bytes):
    """(cylinders, heads, sectors per track) as the specification computes it."""
    total = min(size_bytes // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


class Footer:
    """The 512-byte footer (its copy heads dynamic and differencing files)."""

    def __init__(self, current_size, disk_type, data_offset, unique_id,
                 original_size=None, creator_app=b"tap\0", timestamp=None):
        self.current_size = current_size
        self.original_size = current_size if original_size is None else original_size
        self.disk_type = disk_type
        self.data_offset = data_offset
        self.unique_id = unique_id
        self.creator_app = creator_app
        self.timestamp = timestamp

    @classmethod
    def parse(cls, raw, where="footer"):
        """Parse and check 512 bytes; VhdError names the first fault found."""
        if len(raw) != FOOTER_SIZE:
            raise VhdError("%s: %d bytes, a footer has %d" % (where, len(raw), FOOTER_SIZE))
        (cookie, _features, version, data_offset, timestamp, creator_app, _cver,
         _cos, original_size, current_size, _cyl, _heads, _spt, disk_type,
         stored_sum, unique_id, _saved, _reserved) = _FOOTER.unpack(raw)
        if cookie != FOOTER_COOKIE:
            raise VhdError("%s: bad cookie %r (expected %r)" % (where, cookie, FOOTER_COOKIE))
        wanted = checksum(raw, _FOOTER_CHECKSUM_AT)
        if stored_sum != wanted:
            raise VhdError("%s: bad checksum 0x%08x (computed 0x%08x)"
                           % (where, stored_sum, wanted))
        if version >> 16 != 1:
            raise VhdError("%s: unsupported file format version 0x%08x" % (where, version))
        if disk_type not in DISK_TYPE_NAMES:
            raise VhdError("%s: unsupported disk type %d" % (where, disk_type))
        if current_size % SECTOR:
            raise VhdError("%s: disk size %d is not a multiple of %d"
                           % (where, current_size, SECTOR))
        return cls(current_size, disk_type, data_offset, unique_id,
                   original_size=original_size, creator_app=creator_app,
                   timestamp=timestamp)

    @property
    def type_name(self):
        return DISK_TYPE_NAMES[self.disk_type]

    def build(self):
        """The footer's 512 bytes, checksum included."""
        cyl, heads, spt = chs_geometry(self.current_size)
        timestamp = self.timestamp
        if timestamp is None:
            timestamp = max(int(time.time()) - VHD_EPOCH, 0)
        fields = [FOOTER_COOKIE, 2, FILE_FORMAT_VERSION, self.data_offset,
                  timestamp & 0xFFFFFFFF, self.creator_app, 0x00010000,
                  0x5769326B,  # "Wi2k", the host OS most producers record
                  self.original_size, self.current_size, cyl, heads, spt,
                  self.disk_type, 0, self.unique_id, 0, b""]
        raw = bytearray(_FOOTER.pack(*fields))
        struct.pack_into(">I", raw, _FOOTER_CHECKSUM_AT, checksum(raw, _FOOTER_CHECKSUM_AT))
        return bytes(raw)


class DynamicHeader:
    """The 1024-byte dynamic disk header of dynamic and differencing files."""

    def __init__(self, table_offset, max_table_entries, block_size,
                 parent_unique_id=bytes(16), parent_timestamp=0, parent_name=""):
        self.table_offset = table_offset
        self.max_table_entries = max_table_entries
        self.block_size = block_size
        self.parent_unique_id = parent_unique_id
        self.parent_timestamp = parent_timestamp
        self.parent_name = parent_name

    @classmethod
    def parse(cls, raw, where="dynamic header"):
        """Parse and check 1024 bytes; VhdError names the first fault found."""
        if len(raw) != HEADER_SIZE:
            raise VhdError("%s: %d bytes, a header has %d" % (where, len(raw), HEADER_SIZE))
        (cookie, _data_offset, table_offset, version, max_entries, block_size,
         stored_sum, parent_uid, parent_ts, _res, name_raw, _locators,
         _reserved) = _HEADER.unpack(raw)
        if cookie != HEADER_COOKIE:
            raise VhdError("%s: bad cookie %r (expected %r)" % (where, cookie, HEADER_COOKIE))
        wanted = checksum(raw, _HEADER_CHECKSUM_AT)
        if stored_sum != wanted:
            raise VhdError("%s: bad checksum 0x%08x (computed 0x%08x)"
                           % (where, stored_sum, wanted))
        if version >> 16 != 1:
            raise VhdError("%s: unsupported header version 0x%08x" % (where, version))
        if (block_size < SECTOR or block_size > MAX_BLOCK_SIZE
                or block_size & (block_size - 1)):
            raise VhdError("%s: unsupported block size %d (a power of two from %d to %d)"
                           % (where, block_size, SECTOR, MAX_BLOCK_SIZE))
        if max_entries > MAX_BAT_ENTRIES:
            raise VhdError("%s: %d BAT entries is more than the %d supported"
                           % (where, max_entries, MAX_BAT_ENTRIES))
        try:
            parent_name = name_raw.decode("utf-16-be").split("\0", 1)[0]
        except UnicodeDecodeError as e:
            raise VhdError("%s: parent name is not UTF-16: %s" % (where, e)) from None
        return cls(table_offset, max_entries, block_size, parent_uid, parent_ts,
                   parent_name)

    @property
    def bitmap_size(self):
        """Bytes of a block's sector bitmap, padded to a whole sector."""
        bits_bytes = (self.block_size // SECTOR + 7) // 8
        return -(-bits_bytes // SECTOR) * SECTOR

    def build(self):
        """The header's 1024 bytes, checksum included (no parent locators)."""
        name = self.parent_name.encode("utf-16-be")
        if len(name) > 512:
            raise VhdError("parent name %r is longer than 256 UTF-16 units" % self.parent_name)
        raw = bytearray(_HEADER.pack(
            HEADER_COOKIE, NO_DATA_OFFSET, self.table_offset, HEADER_VERSION,
            self.max_table_entries, self.block_size, 0, self.parent_unique_id,
            self.parent_timestamp, b"", name, b"", b""))
        struct.pack_into(">I", raw, _HEADER_CHECKSUM_AT, checksum(raw, _HEADER_CHECKSUM_AT))
        return bytes(raw)


def blocks_needed(size_bytes, block_size):
    return -(-size_bytes // block_size)


# Bit k of a sector bitmap byte counts from the most significant bit; this
# table reverses each byte so ``int.from_bytes(..., "little")`` puts sector k
# at bit k of a Python int, where runs of set bits are cheap to find.
_REVERSE_BITS = bytes(int("{:08b}".format(b)[::-1], 2) for b in range(256))


def bitmap_mask(bitmap, sectors):
    """The bitmap's first ``sectors`` bits as an int, sector k at bit k."""
    mask = int.from_bytes(bytes(bitmap).translate(_REVERSE_BITS), "little")
    return mask & ((1 << sectors) - 1)


def mask_runs(mask):
    """Yield (first_sector, count) for each run of set bits, lowest first."""
    pos = 0
    while mask:
        skip = (mask & -mask).bit_length() - 1
        mask >>= skip
        pos += skip
        ones = (~mask & (mask + 1)).bit_length() - 1
        yield pos, ones
        mask >>= ones
        pos += ones


def new_unique_id():
    return uuid.uuid4().bytes
