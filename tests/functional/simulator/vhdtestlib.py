"""Build VHD files for tests, independently of the simulator's own VHD code.

``qemu-img`` makes fixed and dynamic VHDs but cannot make differencing ones,
and always stores blocks in order. This module writes both, from the
Microsoft VHD specification, with its own struct code (sharing code with the
decoder under test would hide bugs both have):

* :func:`build_vhd` — a dynamic VHD, or a differencing child of an existing
  VHD, holding the given sector-aligned writes; blocks may be stored in any
  order, and a child's bitmaps mark only the sectors it writes.
* :func:`vhd_info` — the footer and header fields tests assert on.
* :func:`apply_writes` — the raw disk a set of writes should produce, the
  expected answer to compare a decoder with.
* :func:`qemu_img` — run ``qemu-img`` (skips without it; fails instead
  under ``NXS_REQUIRE_REAL=1``).

Example (a base made by qemu-img, a child changing one sector)::

    build_vhd(child, virtual_size, [(4096, b"x" * 512)], parent_path=base)
"""

import os
import shutil
import struct
import subprocess
import time
import uuid

from tests.conftest import need

SECTOR = 512
BLOCK_SIZE = 2 << 20
_FOOTER_FMT = ">8sIIQI4sIIQQHBBII16sB427s"
_HEADER_FMT = ">8sQQIIII16sI4s512s192s256s"
_FREE = 0xFFFFFFFF


def _sum_complement(raw, at):
    total = sum(raw[:at]) + sum(raw[at + 4:])
    return (~total) & 0xFFFFFFFF


def _footer(size, disk_type, unique_id, data_offset=SECTOR):
    cylinders = min(size // SECTOR // (16 * 63), 65535)
    raw = bytearray(struct.pack(
        _FOOTER_FMT, b"conectix", 2, 0x00010000, data_offset,
        int(time.time()) - 946684800, b"tap\0", 0x00010000, 0x5769326B,
        size, size, cylinders, 16, 63, disk_type, 0, unique_id, 0, b""))
    struct.pack_into(">I", raw, 64, _sum_complement(raw, 64))
    return bytes(raw)


def _header(table_offset, entries, parent_uid=bytes(16), parent_name=""):
    raw = bytearray(struct.pack(
        _HEADER_FMT, b"cxsparse", 0xFFFFFFFFFFFFFFFF, table_offset, 0x00010000,
        entries, BLOCK_SIZE, 0, parent_uid, 0, b"",
        parent_name.encode("utf-16-be"), b"", b""))
    struct.pack_into(">I", raw, 36, _sum_complement(raw, 36))
    return bytes(raw)


def vhd_info(path):
    """dict: size, disk_type (2/3/4), unique_id, parent_uid, parent_name."""
    with open(path, "rb") as f:
        f.seek(-SECTOR, os.SEEK_END)
        footer = struct.unpack(_FOOTER_FMT, f.read(SECTOR))
        info = {"size": footer[9], "disk_type": footer[13], "unique_id": footer[15],
                "parent_uid": None, "parent_name": None}
        if footer[13] != 2:
            f.seek(footer[3])
            header = struct.unpack(_HEADER_FMT, f.read(1024))
            info["parent_uid"] = header[7]
            info["parent_name"] = header[10].decode("utf-16-be").rstrip("\0")
    return info


def _sectors_by_block(writes):
    """{block index: {sector within block: 512 bytes}} from (offset, data) writes."""
    blocks = {}
    for offset, data in writes:
        if offset % SECTOR or len(data) % SECTOR:
            raise ValueError("writes must be sector-aligned (offset %d, %d bytes)"
                             % (offset, len(data)))
        for i in range(0, len(data), SECTOR):
            sector = (offset + i) // SECTOR
            index, within = divmod(sector, BLOCK_SIZE // SECTOR)
            blocks.setdefault(index, {})[within] = data[i:i + SECTOR]
    return blocks


def build_vhd(path, virtual_size, writes, parent_path=None, block_order="ascending",
              parent_name=None):
    """Write a dynamic VHD (or a differencing child of ``parent_path``).

    ``writes``: (offset, bytes), sector-aligned. ``block_order``:
    ``"ascending"``, ``"descending"`` or a list of block indexes giving the
    file order. ``parent_name`` defaults to the parent's file name. Returns
    the new file's unique id (16 bytes).
    """
    if virtual_size % SECTOR:
        raise ValueError("virtual size must be a multiple of 512")
    blocks = _sectors_by_block(writes)
    entries = -(-virtual_size // BLOCK_SIZE)
    if blocks and max(blocks) >= entries:
        raise ValueError("a write lies past the virtual size")
    if block_order == "ascending":
        order = sorted(blocks)
    elif block_order == "descending":
        order = sorted(blocks, reverse=True)
    else:
        order = list(block_order)
        if sorted(order) != sorted(blocks):
            raise ValueError("block_order must list exactly the written blocks")
    unique_id = uuid.uuid4().bytes
    if parent_path is None:
        disk_type, parent_uid, name = 3, bytes(16), ""
    else:
        disk_type = 4
        parent_uid = vhd_info(parent_path)["unique_id"]
        name = os.path.basename(parent_path) if parent_name is None else parent_name
    table_offset = 3 * SECTOR
    bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
    bat = [_FREE] * entries
    data_offset = table_offset + bat_bytes
    for slot, index in enumerate(order):
        bat[index] = (data_offset + slot * (SECTOR + BLOCK_SIZE)) // SECTOR
    footer = _footer(virtual_size, disk_type, unique_id)
    with open(path, "wb") as f:
        f.write(footer)
        f.write(_header(table_offset, entries, parent_uid, name))
        f.write(struct.pack(">%dI" % entries, *bat).ljust(bat_bytes, b"\xff"))
        for index in order:
            bitmap = bytearray(SECTOR)
            block = bytearray(BLOCK_SIZE)
            for within, data in blocks[index].items():
                bitmap[within // 8] |= 0x80 >> (within % 8)
                block[within * SECTOR:(within + 1) * SECTOR] = data
            f.write(bitmap)
            f.write(block)
        f.write(footer)
    return unique_id


def apply_writes(raw_path, writes):
    """Apply (offset, bytes) writes to a raw file in place (the expected disk)."""
    with open(raw_path, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def qemu_img(*args):
    """Run ``qemu-img`` with ``args``; its stdout. A failure carries its stderr."""
    need(shutil.which("qemu-img"), "qemu-img is not installed")
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, "qemu-img %s failed: %s" % (" ".join(args), proc.stderr)
    return proc.stdout
