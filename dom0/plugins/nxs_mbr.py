"""Reading and writing msdos (MBR) partition tables, in pure Python.

Why not sfdisk: dom0 on XenServer 8 / XCP-ng 8.x has util-linux 2.23, whose
sfdisk has neither ``--json`` nor the ``label: dos`` script format, and
older ones miscount cylinders. A one-partition MBR is 66 bytes we can write
exactly; the tests check the result with the current sfdisk.
"""

import os
import struct

from nxs_pluginlib import DeviceError, SECTOR_BYTES, check_sector_size, open_device

SIGNATURE = b"\x55\xaa"
TABLE_OFFSET = 446
ENTRY = struct.Struct("<B3sB3sII")  # boot flag, CHS first, type, CHS last, LBA start, sectors
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
GPT_PROTECTIVE = 0xEE
MAX_SECTORS = 0xFFFFFFFF  # 32-bit LBA fields
MAX_LOGICAL = 60          # a bound on the EBR chain walk
WIPE_GAP_SECTORS = 2048   # a fresh label clears up to 1 MiB before the partition


def _chs(lba):
    """CHS bytes for ``lba`` in the usual 255-head, 63-sector geometry."""
    cylinder, rest = divmod(lba, 255 * 63)
    if cylinder > 1023:
        return b"\xfe\xff\xff"  # beyond CHS: the conventional "use LBA" marker
    head, sector = divmod(rest, 63)
    sector += 1
    return bytes([head, ((cylinder >> 2) & 0xC0) | sector, cylinder & 0xFF])


def _entry(start, sectors, part_type, bootable):
    return ENTRY.pack(0x80 if bootable else 0, _chs(start), part_type,
                      _chs(start + sectors - 1), start, sectors)


def _read_sector(fd, lba):
    data = os.pread(fd, SECTOR_BYTES, lba * SECTOR_BYTES)
    if len(data) != SECTOR_BYTES:
        raise DeviceError("short read at sector %d" % lba)
    return data


def _entries(sector):
    for slot in range(4):
        offset = TABLE_OFFSET + 16 * slot
        flag, _, part_type, _, start, sectors = ENTRY.unpack_from(sector, offset)
        yield slot, flag, part_type, start, sectors


def read_table(path):
    """The table of disk ``path``.

    Returns ``{"label": "dos"|"gpt"|None, "size_sectors": N, "disk_id": int,
    "partitions": [{"num", "start", "end", "size", "type", "bootable"}]}``;
    ``type`` is two hex digits as sfdisk prints them, ``end`` inclusive.
    GPT disks are reported with no partitions: we never write them.
    """
    fd = open_device(path)
    try:
        check_sector_size(fd, path)
        size_sectors = os.lseek(fd, 0, os.SEEK_END) // SECTOR_BYTES
        mbr = _read_sector(fd, 0)
        table = {"label": None, "size_sectors": size_sectors, "disk_id": 0,
                 "partitions": []}
        if mbr[510:512] != SIGNATURE:
            return table
        entries = list(_entries(mbr))
        if any(e[2] == GPT_PROTECTIVE for e in entries):
            table["label"] = "gpt"
            return table
        table["label"] = "dos"
        table["disk_id"] = struct.unpack_from("<I", mbr, 440)[0]
        for slot, flag, part_type, start, sectors in entries:
            if part_type == 0 or sectors == 0:
                continue
            table["partitions"].append(_partition(slot + 1, flag, part_type, start, sectors))
            if part_type in EXTENDED_TYPES:
                table["partitions"].extend(_logicals(fd, start, size_sectors))
        return table
    finally:
        os.close(fd)


def _partition(num, flag, part_type, start, sectors):
    return {"num": num, "start": start, "end": start + sectors - 1, "size": sectors,
            "type": "%02x" % part_type, "bootable": flag == 0x80}


def _logicals(fd, extended_start, size_sectors):
    """Walk the chain of extended boot records (logical partitions 5, 6, ...)."""
    found = []
    ebr_lba = extended_start
    seen = set()
    while len(found) < MAX_LOGICAL and ebr_lba not in seen and ebr_lba < size_sectors:
        seen.add(ebr_lba)
        ebr = _read_sector(fd, ebr_lba)
        if ebr[510:512] != SIGNATURE:
            break
        entries = list(_entries(ebr))
        _, flag, part_type, start, sectors = entries[0]
        if part_type and sectors:
            found.append(_partition(5 + len(found), flag, part_type, ebr_lba + start, sectors))
        _, _, next_type, next_start, next_sectors = entries[1]
        if not next_type or not next_sectors:
            break
        ebr_lba = extended_start + next_start
    return found


def write_single_partition(path, start, end, part_type):
    """A fresh msdos label on ``path`` with one primary partition [start, end].

    Clears the boot code and the gap before the partition (up to 1 MiB) so
    no signature of an earlier filesystem or boot loader survives to confuse
    blkid, and a GPT header left behind (primary and backup). Keeps the disk
    identifier if there was one. Flushes before returning.

    The kernel is not asked to re-read the table (BLKRRPART): partition
    devices come from udev/partx or kpartx on the hosts we run on, and a
    re-read by a kernel without the msdos parser drops what they added.
    """
    fd = open_device(path, writable=True)
    try:
        check_sector_size(fd, path)
        size_sectors = os.lseek(fd, 0, os.SEEK_END) // SECTOR_BYTES
        old = _read_sector(fd, 0)
        disk_id = struct.unpack_from("<I", old, 440)[0] if old[510:512] == SIGNATURE else 0
        if disk_id == 0:
            disk_id = struct.unpack("<I", os.urandom(4))[0] or 1
        gpt_backup = _read_sector(fd, size_sectors - 1)[:8] == b"EFI PART"
        mbr = bytearray(SECTOR_BYTES)
        struct.pack_into("<I", mbr, 440, disk_id)
        mbr[TABLE_OFFSET:TABLE_OFFSET + 16] = _entry(start, end - start + 1, part_type, False)
        mbr[510:512] = SIGNATURE
        gap = min(start, WIPE_GAP_SECTORS) - 1
        if gap > 0:
            os.pwrite(fd, bytes(gap * SECTOR_BYTES), SECTOR_BYTES)
        if gpt_backup:
            os.pwrite(fd, bytes(SECTOR_BYTES), (size_sectors - 1) * SECTOR_BYTES)
        os.pwrite(fd, bytes(mbr), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return disk_id


def set_primary_end(path, num, new_end):
    """Move the end of primary partition ``num`` (1..4), nothing else.

    Start, type, boot flag, the other entries and the disk id stay as they
    are: only that entry's 16 bytes are rewritten.
    """
    fd = open_device(path, writable=True)
    try:
        mbr = _read_sector(fd, 0)
        offset = TABLE_OFFSET + 16 * (num - 1)
        flag, _, part_type, _, start, _ = ENTRY.unpack_from(mbr, offset)
        entry = _entry(start, new_end - start + 1, part_type, flag == 0x80)
        os.pwrite(fd, entry, offset)
        os.fsync(fd)
    finally:
        os.close(fd)

