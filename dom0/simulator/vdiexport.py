"""The byte-level work behind ``GET /export_raw_vdi``: the VDI as raw or VHD.

Holes are found with ``SEEK_DATA``/``SEEK_HOLE`` and sent as zeros without
reading them (raw), or left out as absent blocks (VHD). The VHD's exact
length is known before streaming, for the response's Content-Length.
"""

import os
import struct

from dom0.simulator import sparsefile
from dom0.simulator.vhdformat import (
    DEFAULT_BLOCK_SIZE, DISK_DYNAMIC, FOOTER_SIZE, HEADER_SIZE, SECTOR,
    DynamicHeader, Footer, blocks_needed, new_unique_id)

PIECE = 4 << 20
# A VHD addresses blocks by 32-bit sector numbers; the specification's limit.
MAX_VHD_SIZE = 2040 << 30


def _write_zeros(wfile, size):
    while size > 0:
        step = min(size, len(sparsefile.ZEROS))
        wfile.write(sparsefile.ZEROS[:step])
        size -= step


def _send_range(fd, wfile, start, end, buf):
    """Send the file's bytes [start, end); past its end they read as zeros."""
    offset = start
    while offset < end:
        piece = buf[:min(len(buf), end - offset)]
        got = os.preadv(fd, [piece], offset)
        if got == 0:
            _write_zeros(wfile, end - offset)
            return
        wfile.write(piece[:got])
        offset += got


def export_raw(wfile, vdi_path, vdi_size):
    """Stream the VDI's ``vdi_size`` bytes; holes are sent as zeros unread."""
    buf = memoryview(bytearray(PIECE))
    fd = os.open(vdi_path, os.O_RDONLY)
    try:
        position = 0
        for start, end in sparsefile.data_extents(fd, vdi_size):
            _write_zeros(wfile, start - position)
            _send_range(fd, wfile, start, end, buf)
            position = end
        _write_zeros(wfile, vdi_size - position)
    finally:
        os.close(fd)


class _VhdLayout:
    """Where each part of the dynamic VHD export of a VDI goes."""

    def __init__(self, fd, vdi_size):
        if vdi_size > MAX_VHD_SIZE:
            raise ValueError("a VHD holds at most %d bytes, the VDI has %d"
                             % (MAX_VHD_SIZE, vdi_size))
        self.vdi_size = vdi_size
        self.virtual_size = -(-vdi_size // SECTOR) * SECTOR
        self.block_size = DEFAULT_BLOCK_SIZE
        entries = blocks_needed(self.virtual_size, self.block_size)
        self.table_offset = FOOTER_SIZE + HEADER_SIZE
        self.header = DynamicHeader(self.table_offset, entries, self.block_size)
        bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
        self.data_offset = self.table_offset + bat_bytes
        self.span = self.header.bitmap_size + self.block_size
        self.blocks = []
        for start, end in sparsefile.data_extents(fd, vdi_size):
            for index in range(start // self.block_size, (end - 1) // self.block_size + 1):
                if not self.blocks or self.blocks[-1] < index:
                    self.blocks.append(index)
        self.length = self.data_offset + len(self.blocks) * self.span + FOOTER_SIZE

    def bat(self):
        raw = bytearray(b"\xff" * (self.data_offset - self.table_offset))
        for slot, index in enumerate(self.blocks):
            struct.pack_into(">I", raw, index * 4,
                             (self.data_offset + slot * self.span) // SECTOR)
        return bytes(raw)

    def bitmap(self, index):
        inside = min(self.block_size, self.virtual_size - index * self.block_size) // SECTOR
        bits = bytearray(self.header.bitmap_size)
        bits[:inside // 8] = b"\xff" * (inside // 8)
        if inside % 8:
            bits[inside // 8] = (0xFF00 >> (inside % 8)) & 0xFF
        return bytes(bits)


def vhd_export_length(vdi_path, vdi_size):
    """The exact length of :func:`export_vhd`'s output for the VDI as it is now."""
    fd = os.open(vdi_path, os.O_RDONLY)
    try:
        return _VhdLayout(fd, vdi_size).length
    finally:
        os.close(fd)


def export_vhd(wfile, vdi_path, vdi_size):
    """Stream the VDI as a dynamic VHD; blocks holding no allocated byte are absent."""
    fd = os.open(vdi_path, os.O_RDONLY)
    try:
        layout = _VhdLayout(fd, vdi_size)
        footer = Footer(layout.virtual_size, DISK_DYNAMIC, FOOTER_SIZE,
                        new_unique_id()).build()
        wfile.write(footer)
        wfile.write(layout.header.build())
        wfile.write(layout.bat())
        buf = memoryview(bytearray(layout.block_size))
        for index in layout.blocks:
            wfile.write(layout.bitmap(index))
            start = index * layout.block_size
            end = min(start + layout.block_size, vdi_size)
            _send_range(fd, wfile, start, end, buf)
            _write_zeros(wfile, layout.block_size - (end - start))
        wfile.write(footer)
    finally:
        os.close(fd)
