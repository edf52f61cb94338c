"""Reading VHD disks: a streaming decoder and a chain reader for files.

:func:`decode_stream` turns a dynamic or fixed VHD arriving as a byte stream
of known length into writes at virtual offsets, with memory bounded by one
piece buffer and the BAT. The BAT is read first; the data blocks are then
visited in the order of their file offsets (a producer may store them in any
order), each dispatched when the stream reaches it. Absent blocks and sectors
unmarked in a block's bitmap are never written.

:func:`materialize_chain` reads a VHD file, including a differencing disk and
its ancestors (each found by the parent name in its child's header, a file in
the same directory), into a sparse raw file.

Malformed input raises :class:`VhdError` naming the fault.
"""

import os
import sys
from array import array

from dom0.simulator import private
from dom0.simulator import sparsefile
from dom0.simulator.vhdformat import (
    BAT_FREE, DISK_DIFFERENCING, DISK_FIXED, FOOTER_COOKIE, FOOTER_SIZE,
    HEADER_SIZE, SECTOR, DynamicHeader, Footer, VhdError, bitmap_mask,
    blocks_needed, mask_runs)

__all__ = ["VhdError", "decode_stream", "materialize_chain", "VhdFile"]

PIECE = 4 << 20
MAX_CHAIN_DEPTH = 64


def _parse_bat(raw, header, footer, where):
    """The BAT as an array of uint32 sector numbers (host order)."""
    bat = array("I")
    bat.frombytes(bytes(raw))
    if bat.itemsize != 4:
        raise RuntimeError("array('I') is not 32-bit on this platform")
    if sys.byteorder == "little":
        bat.byteswap()
    needed = blocks_needed(footer.current_size, header.block_size)
    if header.max_table_entries < needed:
        raise VhdError("%s: BAT has %d entries, a disk of %d bytes needs %d"
                       % (where, header.max_table_entries, footer.current_size, needed))
    for index in range(needed, len(bat)):
        if bat[index] != BAT_FREE:
            raise VhdError("%s: BAT entry %d is allocated but its block lies past the "
                           "virtual size (%d bytes)" % (where, index, footer.current_size))
    return bat


def _block_span(header):
    return header.bitmap_size + header.block_size


def _check_block_range(bat, header, data_start, data_end, where):
    """Every allocated block must lie within [data_start, data_end)."""
    span = _block_span(header)
    for index, sector in enumerate(bat):
        if sector == BAT_FREE:
            continue
        offset = sector * SECTOR
        if offset < data_start or offset + span > data_end:
            raise VhdError("%s: BAT entry %d points to offset %d, outside the data area "
                           "[%d, %d)" % (where, index, offset, data_start, data_end))


def _block_sectors(virtual_size, block_size, index):
    """Sectors of block ``index`` that lie inside the virtual disk."""
    start = index * block_size
    return max(min(block_size, virtual_size - start), 0) // SECTOR


# -- streaming ---------------------------------------------------------------

def decode_stream(reader, length, sink):
    """Decode a VHD of ``length`` bytes read from ``reader`` into ``sink``.

    ``reader`` offers ``read(n) -> bytes``, ``readinto(view)`` and
    ``skip(n)``, each exact (a short stream raises there). ``sink`` offers
    ``begin(virtual_size)``, called once the metadata is valid and before
    anything is written; ``buffer(n)``, a view of ``n`` bytes (at most
    :data:`PIECE`) lent for reading into; ``write(offset, view)`` of parts of
    such a view (or of other bytes the decoder owns); and
    ``release(view)``, after which the sink may reuse it (so writes may
    complete later, on another thread). Returns the number of disk bytes
    written.
    """
    if length < FOOTER_SIZE:
        raise VhdError("a VHD has at least %d bytes (its footer), got %d"
                       % (FOOTER_SIZE, length))
    first = reader.read(FOOTER_SIZE)
    if first[:8] != FOOTER_COOKIE:
        return _decode_fixed(reader, length, first, sink)
    copy = Footer.parse(first, "footer copy at offset 0")
    if copy.disk_type == DISK_FIXED:
        raise VhdError("footer copy at offset 0 says fixed disk; a fixed VHD starts with data")
    if copy.disk_type == DISK_DIFFERENCING:
        raise VhdError("differencing VHD: its parent is not part of the upload; "
                       "upload a self-contained dynamic or fixed VHD")
    end_of_data = length - FOOTER_SIZE
    if copy.data_offset < FOOTER_SIZE or copy.data_offset + HEADER_SIZE > end_of_data:
        raise VhdError("dynamic header offset %d is outside the file (%d bytes)"
                       % (copy.data_offset, length))
    reader.skip(copy.data_offset - FOOTER_SIZE)
    header = DynamicHeader.parse(reader.read(HEADER_SIZE))
    position = copy.data_offset + HEADER_SIZE
    bat_bytes = header.max_table_entries * 4
    if header.table_offset < position:
        raise VhdError("BAT at offset %d lies before the end of the dynamic header (%d); "
                       "a streamed VHD needs its BAT after the header"
                       % (header.table_offset, position))
    if header.table_offset + bat_bytes > end_of_data:
        raise VhdError("BAT at offset %d (%d bytes) passes the end of the data (%d)"
                       % (header.table_offset, bat_bytes, end_of_data))
    reader.skip(header.table_offset - position)
    bat = _parse_bat(reader.read(bat_bytes), header, copy, "VHD")
    position = header.table_offset + bat_bytes
    _check_block_range(bat, header, position, end_of_data, "VHD")
    sink.begin(copy.current_size)

    # File order; one int per block (sector << 32 | index) keeps a large BAT cheap.
    order = sorted(sector << 32 | index for index, sector in enumerate(bat)
                   if sector != BAT_FREE)
    written = 0
    for key in order:
        sector, index = key >> 32, key & 0xFFFFFFFF
        offset = sector * SECTOR
        if offset < position:
            raise VhdError("BAT entry %d: block at offset %d overlaps the data before it "
                           "(which ends at %d)" % (index, offset, position))
        reader.skip(offset - position)
        bitmap = reader.read(header.bitmap_size)
        written += _stream_block(reader, header, copy.current_size, index, bitmap, sink)
        position = offset + _block_span(header)
    reader.skip(end_of_data - position)
    trailer = Footer.parse(reader.read(FOOTER_SIZE), "footer at the end of the file")
    if (trailer.current_size, trailer.disk_type, trailer.unique_id) != (
            copy.current_size, copy.disk_type, copy.unique_id):
        raise VhdError("the footer at the end of the file does not match its copy at "
                       "offset 0 (size, type or unique id differ)")
    return written


def _stream_block(reader, header, virtual_size, index, bitmap, sink):
    """Read one block's data from the stream and write its marked sectors."""
    inside = _block_sectors(virtual_size, header.block_size, index)
    runs = list(mask_runs(bitmap_mask(bitmap, inside)))
    block_offset = index * header.block_size
    written = 0
    done = 0
    while done < header.block_size:
        piece = sink.buffer(min(PIECE, header.block_size - done))
        try:
            reader.readinto(piece)
            lo, hi = done // SECTOR, (done + len(piece)) // SECTOR
            for first, count in runs:
                start, end = max(first, lo), min(first + count, hi)
                if start < end:
                    sink.write(block_offset + start * SECTOR,
                               piece[(start - lo) * SECTOR:(end - lo) * SECTOR])
                    written += (end - start) * SECTOR
        finally:
            sink.release(piece)
        done += len(piece)
    return written


def _decode_fixed(reader, length, first, sink):
    """A fixed VHD: the disk's bytes, then the footer; checked at the end."""
    size = length - FOOTER_SIZE
    if size % SECTOR or size == 0:
        raise VhdError("no VHD footer copy at offset 0 (so not dynamic), and %d bytes "
                       "is not the length of a fixed VHD" % length)
    sink.begin(size)
    sink.write(0, memoryview(first))
    done = len(first)
    while done < size:
        piece = sink.buffer(min(PIECE, size - done))
        try:
            reader.readinto(piece)
            sink.write(done, piece)
        finally:
            sink.release(piece)
        done += len(piece)
    try:
        footer = Footer.parse(reader.read(FOOTER_SIZE), "footer at the end of the file")
    except VhdError as e:
        raise VhdError("not a VHD: no footer copy at offset 0 (so not dynamic) and %s"
                       % e) from None
    if footer.disk_type != DISK_FIXED or footer.current_size != size:
        raise VhdError("footer at the end of the file describes a %s disk of %d bytes, "
                       "but the file holds a fixed disk of %d bytes"
                       % (footer.type_name, footer.current_size, size))
    return size


# -- files and chains -----------------------------------------------------

class VhdFile:
    """One VHD file opened for random reads of its own sectors."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            raise

    def _pread(self, offset, size):
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise VhdError("%s: short read of %d bytes at %d" % (self.path, size, offset))
        return data

    def _load(self):
        file_size = os.fstat(self.fd).st_size
        if file_size < FOOTER_SIZE:
            raise VhdError("%s: %d bytes is too short for a VHD" % (self.path, file_size))
        where = "%s: footer" % self.path
        self.footer = Footer.parse(self._pread(file_size - FOOTER_SIZE, FOOTER_SIZE), where)
        self.virtual_size = self.footer.current_size
        self.header = None
        self._bitmap_cache = (None, 0)
        if self.footer.disk_type == DISK_FIXED:
            if self.virtual_size != file_size - FOOTER_SIZE:
                raise VhdError("%s: fixed disk of %d bytes in a file of %d bytes"
                               % (self.path, self.virtual_size, file_size))
            return
        copy = Footer.parse(self._pread(0, FOOTER_SIZE), "%s: footer copy" % self.path)
        if (copy.current_size, copy.disk_type, copy.unique_id) != (
                self.virtual_size, self.footer.disk_type, self.footer.unique_id):
            raise VhdError("%s: the footer copy at offset 0 does not match the footer"
                           % self.path)
        end_of_data = file_size - FOOTER_SIZE
        if self.footer.data_offset + HEADER_SIZE > end_of_data:
            raise VhdError("%s: dynamic header offset %d is outside the file"
                           % (self.path, self.footer.data_offset))
        self.header = DynamicHeader.parse(
            self._pread(self.footer.data_offset, HEADER_SIZE), "%s: dynamic header" % self.path)
        bat_bytes = self.header.max_table_entries * 4
        if self.header.table_offset + bat_bytes > end_of_data:
            raise VhdError("%s: BAT at offset %d passes the end of the data"
                           % (self.path, self.header.table_offset))
        self.bat = _parse_bat(self._pread(self.header.table_offset, bat_bytes),
                              self.header, self.footer, self.path)
        _check_block_range(self.bat, self.header, FOOTER_SIZE, end_of_data, self.path)

    @property
    def is_differencing(self):
        return self.footer.disk_type == DISK_DIFFERENCING

    def close(self):
        os.close(self.fd)

    def _bitmap(self, index):
        cached_index, mask = self._bitmap_cache
        if cached_index != index:
            sectors = _block_sectors(self.virtual_size, self.header.block_size, index)
            raw = self._pread(self.bat[index] * SECTOR, self.header.bitmap_size)
            mask = bitmap_mask(raw, sectors)
            self._bitmap_cache = (index, mask)
        return mask

    def mask(self, first_sector, count):
        """Sectors of [first_sector, first_sector+count) this file holds, as bits."""
        limit = self.virtual_size // SECTOR
        count = min(count, limit - first_sector)
        if count <= 0:
            return 0
        if self.header is None:
            return (1 << count) - 1
        per_block = self.header.block_size // SECTOR
        result = 0
        sector = first_sector
        while sector < first_sector + count:
            index = sector // per_block
            block_end = min((index + 1) * per_block, first_sector + count)
            if self.bat[index] != BAT_FREE:
                bits = self._bitmap(index) >> (sector - index * per_block)
                result |= (bits & ((1 << (block_end - sector)) - 1)) << (sector - first_sector)
            sector = block_end
        return result

    def read_into(self, first_sector, view):
        """Fill ``view`` with this file's sectors from ``first_sector`` on."""
        done = 0
        while done < len(view):
            sector = first_sector + done // SECTOR
            if self.header is None:
                offset, size = sector * SECTOR, len(view) - done
            else:
                per_block = self.header.block_size // SECTOR
                index, within = divmod(sector, per_block)
                offset = (self.bat[index] * SECTOR + self.header.bitmap_size
                          + within * SECTOR)
                size = min(len(view) - done, (per_block - within) * SECTOR)
            got = os.preadv(self.fd, [view[done:done + size]], offset)
            if got != size:
                raise VhdError("%s: short read at offset %d" % (self.path, offset))
            done += size


def open_chain(vhd_path):
    """[leaf, parent, ..., base] as open VhdFiles; the caller closes them."""
    chain = []
    seen = set()
    path = vhd_path
    try:
        while True:
            real = os.path.realpath(path)
            if real in seen:
                raise VhdError("%s: the parent chain loops back to %s" % (vhd_path, path))
            if len(chain) >= MAX_CHAIN_DEPTH:
                raise VhdError("%s: parent chain deeper than %d" % (vhd_path, MAX_CHAIN_DEPTH))
            seen.add(real)
            layer = VhdFile(path)
            chain.append(layer)
            if not layer.is_differencing:
                return chain
            path = _parent_path(layer)
    except BaseException:
        for layer in chain:
            layer.close()
        raise


def _parent_path(child):
    name = child.header.parent_name.replace("\\", "/")
    base = os.path.basename(name)
    if not base:
        raise VhdError("%s: differencing disk without a parent name" % child.path)
    path = os.path.join(os.path.dirname(os.path.abspath(child.path)), base)
    if not os.path.isfile(path):
        raise VhdError("%s: parent %r not found beside it (%s)" % (child.path, name, path))
    with open(path, "rb") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        footer = Footer.parse(f.read(FOOTER_SIZE), "%s: footer" % path)
    if footer.unique_id != child.header.parent_unique_id:
        raise VhdError("%s: parent %s has unique id %s, the child expects %s"
                       % (child.path, base, footer.unique_id.hex(),
                          child.header.parent_unique_id.hex()))
    return path


def materialize_chain(vhd_path, raw_path):
    """Write the disk the VHD (chain) at ``vhd_path`` describes to ``raw_path``.

    The raw file is sparse: sectors no layer holds, and all-zero pieces, stay
    holes. Returns ``(virtual_size, parent_path or None)``. On error the raw
    file is removed and VhdError (or OSError) is raised.
    """
    chain = open_chain(vhd_path)
    try:
        leaf = chain[0]
        size = leaf.virtual_size
        grid = leaf.header.block_size if leaf.header else sparsefile.ZERO_GRAIN * 32
        fd = private.open_fd(raw_path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.ftruncate(fd, size)
            writer = sparsefile.SparseWriter(fd, size)
            buf = memoryview(bytearray(min(grid, PIECE)))
            for start in range(0, size, grid):
                _materialize_region(chain, start // SECTOR, min(grid, size - start) // SECTOR,
                                    buf, writer)
        except BaseException:
            os.close(fd)
            os.unlink(raw_path)
            raise
        os.close(fd)
        return size, (chain[1].path if len(chain) > 1 else None)
    finally:
        for layer in chain:
            layer.close()


def _materialize_region(chain, first_sector, count, buf, writer):
    """Resolve each sector of the region to the nearest layer holding it."""
    missing = (1 << count) - 1
    for layer in chain:
        held = layer.mask(first_sector, count) & missing
        if not held:
            continue
        for first, run in mask_runs(held):
            done = 0
            while done < run:
                step = min(run - done, len(buf) // SECTOR)
                piece = buf[:step * SECTOR]
                sector = first_sector + first + done
                layer.read_into(sector, piece)
                writer.write(sector * SECTOR, piece)
                done += step
        missing &= ~held
        if not missing:
            return
