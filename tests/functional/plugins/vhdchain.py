"""Build small VHD chains for the image plugin's tests, from the VHD spec.

A base is made with ``qemu-img convert -O vpc`` (an implementation we did
not write); a differencing child is written here because qemu cannot write
one. The child carries the three parent locators XenServer's tools write
(W2ku, W2ru, MacX), so re-linking them is exercised, and names its parent
by the parent's footer unique id, as the spec requires. (The simulator
tests' ``vhdtestlib`` builds children without locators; the numbered-chain
tests use it, the old-style and re-link tests use this.)
"""

import os
import struct
import subprocess
import time
import uuid

SECTOR = 512
BLOCK = 2 << 20
VHD_EPOCH = 946684800  # 2000-01-01 UTC, the VHD time origin


def _checksum(block):
    return (~sum(block)) & 0xFFFFFFFF


def _footer(size_bytes, disk_type, data_offset, unique_id):
    footer = bytearray(512)
    struct.pack_into(">8sIIQI4sI4sQQI", footer, 0, b"conectix", 2, 0x00010000,
                     data_offset, int(time.time()) - VHD_EPOCH, b"nxst", 0x00010000,
                     b"Wi2k", size_bytes, size_bytes, 0, )
    struct.pack_into(">I", footer, 60, disk_type)
    footer[68:84] = unique_id
    struct.pack_into(">I", footer, 64, _checksum(footer))
    return bytes(footer)


def unique_id_of(path):
    with open(path, "rb") as f:
        f.seek(-512, os.SEEK_END)
        return f.read(512)[68:84]


def make_base(raw_path, vhd_path):
    """A dynamic VHD of ``raw_path`` made by qemu-img (exact size kept)."""
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc",
                    "-o", "subformat=dynamic,force_size=on", raw_path, vhd_path],
                   check=True, capture_output=True, timeout=120)


def make_child(parent_content, child_content, parent_vhd, parent_name, vhd_path):
    """A differencing VHD holding the sectors where ``child_content`` differs.

    ``parent_content``/``child_content``: bytes of equal length (the virtual
    size). Sectors equal to the parent's stay unallocated, so reading the
    chain must fall through to the parent.
    """
    size = len(child_content)
    entries = -(-size // BLOCK)
    bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
    header_at, bat_at = 512, 1536
    locators_at = bat_at + bat_bytes
    data_at = locators_at + 3 * SECTOR
    bat = [0xFFFFFFFF] * entries
    blocks = []
    next_sector = data_at // SECTOR
    for index in range(entries):
        start = index * BLOCK
        new, old = child_content[start:start + BLOCK], parent_content[start:start + BLOCK]
        if new == old:
            continue
        bitmap = bytearray(SECTOR)
        data = bytearray(BLOCK)
        for sector in range(len(new) // SECTOR):
            a, b = sector * SECTOR, (sector + 1) * SECTOR
            if new[a:b] != old[a:b]:
                bitmap[sector // 8] |= 0x80 >> (sector % 8)
                data[a:b] = new[a:b]
        bat[index] = next_sector
        blocks.append(bytes(bitmap) + bytes(data))
        next_sector += (SECTOR + BLOCK) // SECTOR

    header = bytearray(1024)
    struct.pack_into(">8sQQIII", header, 0, b"cxsparse", 0xFFFFFFFFFFFFFFFF, bat_at,
                     0x00010000, entries, BLOCK)
    header[40:56] = unique_id_of(parent_vhd)
    struct.pack_into(">I", header, 56, int(os.stat(parent_vhd).st_mtime) - VHD_EPOCH)
    header[64:64 + 512] = parent_name.encode("utf-16-be").ljust(512, b"\0")
    locator_data = [
        (b"W2ku", os.path.abspath(parent_vhd).replace("/", "\\").encode("utf-16-le")),
        (b"W2ru", (".\\" + parent_name).encode("utf-16-le")),
        (b"MacX", ("file://./" + parent_name).encode("utf-8")),
    ]
    for slot, (code, data) in enumerate(locator_data):
        struct.pack_into(">4sIIIQ", header, 576 + 24 * slot, code, 1, len(data), 0,
                         locators_at + slot * SECTOR)
    struct.pack_into(">I", header, 36, _checksum(header))

    footer = _footer(size, 4, header_at, uuid.uuid4().bytes)
    with open(vhd_path, "wb") as f:
        f.write(footer)
        f.write(header)
        f.write(struct.pack(">%dI" % entries, *bat).ljust(bat_bytes, b"\xff"))
        for _, data in locator_data:
            f.write(data.ljust(SECTOR, b"\0"))
        for block in blocks:
            f.write(block)
        f.write(footer)
