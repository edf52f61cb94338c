"""Checking and re-linking VHD files, written from the VHD format specification.

What dom0 used ``vhd-util check`` and ``vhd-util modify -p`` for, in pure
Python: the image plugin gives every file of a chain a new name, so each
child must name its parent anew — the parent's Unicode name in the dynamic
header (UTF-16BE) and the platform locators (W2ku, W2ru: UTF-16LE paths;
MacX: a UTF-8 file URL) — and the header checksum must follow.

Layouts (all integers big-endian). Footer, last 512 bytes (a copy heads
dynamic and differencing files): cookie ``conectix`` @0, data offset @16,
timestamp @24, current size @48, disk type @60 (2 fixed, 3 dynamic,
4 differencing), checksum @64, unique id @68. Dynamic header, 1024 bytes at
the footer's data offset: cookie ``cxsparse`` @0, BAT offset @16, version
@24, max BAT entries @28, block size @32, checksum @36, parent unique id
@40, parent timestamp @56, parent Unicode name @64 (512 bytes), eight
24-byte parent locators @576 (platform code, data space, data length,
reserved, data offset). A checksum is the ones' complement of the byte sum
with the checksum field taken as zero.
"""

import array
import os
import struct
import sys
import uuid

FOOTER_BYTES = 512
HEADER_BYTES = 1024
SECTOR = 512
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
VERSION = 0x00010000
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
DISK_TYPES = {FIXED: "fixed", DYNAMIC: "dynamic", DIFFERENCING: "differencing"}
MAX_VIRTUAL_BYTES = 2040 * 1024 ** 3  # the format's limit
BLOCK_BYTES = 2 * 1024 * 1024  # blktap (libvhd) refuses any other block size
MAX_TABLE_ENTRIES = MAX_VIRTUAL_BYTES // BLOCK_BYTES
_UINT32 = "I" if array.array("I").itemsize == 4 else "L"
UNUSED_BLOCK = 0xFFFFFFFF
LOCATOR = struct.Struct(">4sIII Q")
LOCATORS_AT = 576
NAME_AT, NAME_BYTES = 64, 512
W2KU, W2RU, MACX = b"W2ku", b"W2ru", b"MacX"


class InvalidVhd(Exception):
    """A file is not a VHD we accept; the message says which check failed."""


def checksum(block, field_offset):
    """Ones' complement of the byte sum, the 4-byte field at ``field_offset`` as zero."""
    total = sum(block) - sum(block[field_offset:field_offset + 4])
    return (~total) & 0xFFFFFFFF


def _read_exact(fd, size, offset, name, what):
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise InvalidVhd("%s: file ends inside the %s" % (name, what))
    return data


def inspect(path):
    """Check the VHD at ``path`` thoroughly; return what the chain logic needs.

    Returns ``{"type", "uuid", "virtual_size", "parent_uuid", "parent_name",
    "header_offset"}`` (parent fields None unless differencing). Raises
    InvalidVhd naming the first failed check.
    """
    name = os.path.basename(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        file_size = os.fstat(fd).st_size
        if file_size < FOOTER_BYTES:
            raise InvalidVhd("%s: %d bytes is too short for a VHD" % (name, file_size))
        footer = _read_exact(fd, FOOTER_BYTES, file_size - FOOTER_BYTES, name, "footer")
        info = _check_footer(footer, name)
        if info["type"] == "fixed":
            if file_size != info["virtual_size"] + FOOTER_BYTES:
                raise InvalidVhd("%s: fixed VHD of %d bytes holds %d bytes of data"
                                 % (name, info["virtual_size"], file_size - FOOTER_BYTES))
            info.update(parent_uuid=None, parent_name=None, header_offset=None)
            return info
        if _read_exact(fd, FOOTER_BYTES, 0, name, "footer copy") != footer:
            raise InvalidVhd("%s: the footer copy at the start differs from the footer"
                             % name)
        header_offset = struct.unpack_from(">Q", footer, 16)[0]
        if header_offset < FOOTER_BYTES or header_offset + HEADER_BYTES > file_size:
            raise InvalidVhd("%s: dynamic header offset %d is outside the file"
                             % (name, header_offset))
        header = _read_exact(fd, HEADER_BYTES, header_offset, name, "dynamic header")
        _check_header(fd, header, header_offset, info, file_size, name)
        info["header_offset"] = header_offset
        if info["type"] == "differencing":
            info["parent_uuid"] = str(uuid.UUID(bytes=header[40:56]))
            info["parent_name"] = _parent_name(header, name)
        else:
            info["parent_uuid"] = info["parent_name"] = None
        return info
    finally:
        os.close(fd)


def _check_footer(footer, name):
    if footer[:8] != FOOTER_COOKIE:
        raise InvalidVhd("%s: no VHD footer (cookie %r)" % (name, footer[:8]))
    stored = struct.unpack_from(">I", footer, 64)[0]
    if stored != checksum(footer, 64):
        raise InvalidVhd("%s: footer checksum mismatch" % name)
    version = struct.unpack_from(">I", footer, 12)[0]
    if version != VERSION:
        raise InvalidVhd("%s: unknown file format version 0x%08x" % (name, version))
    virtual_size, disk_type = struct.unpack_from(">Q", footer, 48)[0], \
        struct.unpack_from(">I", footer, 60)[0]
    if disk_type not in DISK_TYPES:
        raise InvalidVhd("%s: unsupported disk type %d" % (name, disk_type))
    if virtual_size == 0 or virtual_size > MAX_VIRTUAL_BYTES or virtual_size % SECTOR:
        raise InvalidVhd("%s: virtual size %d is not acceptable" % (name, virtual_size))
    return {"type": DISK_TYPES[disk_type], "virtual_size": virtual_size,
            "uuid": str(uuid.UUID(bytes=footer[68:84]))}


def _check_header(fd, header, header_offset, info, file_size, name):
    if header[:8] != HEADER_COOKIE:
        raise InvalidVhd("%s: no dynamic header (cookie %r)" % (name, header[:8]))
    if struct.unpack_from(">I", header, 36)[0] != checksum(header, 36):
        raise InvalidVhd("%s: dynamic header checksum mismatch" % name)
    bat_offset, version, entries, block_size = struct.unpack_from(">QIII", header, 16)
    if version != VERSION:
        raise InvalidVhd("%s: unknown header version 0x%08x" % (name, version))
    if block_size != BLOCK_BYTES:
        raise InvalidVhd("%s: block size %d is not %d, the only one blktap reads"
                         % (name, block_size, BLOCK_BYTES))
    if entries * block_size < info["virtual_size"]:
        raise InvalidVhd("%s: %d blocks of %d bytes do not cover %d bytes"
                         % (name, entries, block_size, info["virtual_size"]))
    # A table may be sized for a larger disk than this one (vhd-util create
    # -S), but never for more than a VHD can hold: this bounds the memory
    # and time the check takes, whatever the (sparse) file claims.
    if entries > MAX_TABLE_ENTRIES:
        raise InvalidVhd("%s: a block table of %d entries is larger than any VHD needs "
                         "(at most %d)" % (name, entries, MAX_TABLE_ENTRIES))
    data_end = file_size - FOOTER_BYTES
    if bat_offset < header_offset + HEADER_BYTES or bat_offset + 4 * entries > data_end:
        raise InvalidVhd("%s: block table at %d (%d entries) is outside the file"
                         % (name, bat_offset, entries))
    bitmap_bytes = -(-block_size // SECTOR // 8 // SECTOR) * SECTOR
    table = array.array(_UINT32, _read_exact(fd, 4 * entries, bat_offset, name, "block table"))
    if sys.byteorder == "little":
        table.byteswap()  # stored big-endian
    for index, sector in enumerate(table):
        if sector == UNUSED_BLOCK:
            continue
        if sector * SECTOR < bat_offset + 4 * entries or \
                sector * SECTOR + bitmap_bytes + block_size > data_end:
            raise InvalidVhd("%s: block %d at sector %d lies outside the data area"
                             % (name, index, sector))
    for slot in range(8):
        code, space, length, _, offset = LOCATOR.unpack_from(header, LOCATORS_AT + 24 * slot)
        if code in (W2KU, W2RU, MACX) and (offset < header_offset + HEADER_BYTES or
                                           offset + _space_bytes(space) > data_end or
                                           length > _space_bytes(space)):
            raise InvalidVhd("%s: parent locator %d lies outside the file" % (name, slot))


def _space_bytes(space):
    """Locator data space: the spec says sectors, some writers put bytes."""
    return space * SECTOR if space < SECTOR else space


def _parent_name(header, name):
    try:
        return header[NAME_AT:NAME_AT + NAME_BYTES].decode("utf-16-be").rstrip("\x00")
    except UnicodeDecodeError:
        raise InvalidVhd("%s: parent name is not UTF-16" % name) from None


def _locator_data(code, parent_name, parent_path):
    if code == W2KU:
        return parent_path.replace("/", "\\").encode("utf-16-le")
    if code == W2RU:
        return (".\\" + parent_name).encode("utf-16-le")
    return ("file://./" + parent_name).encode("utf-8")


def relink(path, parent_name, parent_path):
    """Make the differencing VHD at ``path`` name ``parent_name`` as its parent.

    ``parent_path`` is the parent's final absolute path (for W2ku). Rewrites
    the Unicode name, every W2ku/W2ru/MacX locator (in its own data space;
    locators of other platforms are cleared, they would name the old file)
    and the header checksum. The parent unique id is left as it is: the
    files are renamed, not changed.
    """
    info = inspect(path)
    if info["type"] != "differencing":
        raise InvalidVhd("%s: only a differencing VHD has a parent" % os.path.basename(path))
    offset = info["header_offset"]
    encoded_name = parent_name.encode("utf-16-be")
    if len(encoded_name) > NAME_BYTES:
        raise InvalidVhd("parent name %r is too long for a VHD header" % parent_name)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        header = bytearray(os.pread(fd, HEADER_BYTES, offset))
        header[NAME_AT:NAME_AT + NAME_BYTES] = encoded_name.ljust(NAME_BYTES, b"\x00")
        writes = []  # all checked before the first byte changes
        for slot in range(8):
            at = LOCATORS_AT + 24 * slot
            code, space, _, _, data_offset = LOCATOR.unpack_from(header, at)
            if code in (W2KU, W2RU, MACX):
                data = _locator_data(code, parent_name, parent_path)
                room = _space_bytes(space)
                if len(data) > room:
                    raise InvalidVhd("%s: parent locator %d has room for %d bytes, the new "
                                     "parent needs %d" % (os.path.basename(path), slot,
                                                          room, len(data)))
                writes.append((data.ljust(room, b"\x00"), data_offset))
                LOCATOR.pack_into(header, at, code, space, len(data), 0, data_offset)
            elif code != b"\x00\x00\x00\x00":
                header[at:at + 24] = bytes(24)
        struct.pack_into(">I", header, 36, checksum(header, 36))
        for data, data_offset in writes:
            os.pwrite(fd, data, data_offset)
        os.pwrite(fd, bytes(header), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
