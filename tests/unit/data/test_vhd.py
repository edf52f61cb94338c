"""The VHD encoder's structures, checked against the spec's field layout.

The parsing here is written for the test from the spec's tables (offsets
and sizes), not from the encoder's structs, so a wrong offset in either shows.
"""

import os
import struct

import pytest

from agent import vhd
from rpc import exceptions
from tests.diskfiles import make_disk

MiB = 1024 * 1024


def encode(stream):
    return b"".join(bytes(piece) for piece in stream)


def spec_checksum(structure, field_offset):
    without = structure[:field_offset] + b"\0\0\0\0" + structure[field_offset + 4:]
    return (~sum(without)) & 0xFFFFFFFF


def read_footer(raw):
    return {
        "cookie": raw[0:8],
        "features": struct.unpack(">I", raw[8:12])[0],
        "version": struct.unpack(">I", raw[12:16])[0],
        "data_offset": struct.unpack(">Q", raw[16:24])[0],
        "creator_app": raw[28:32],
        "original_size": struct.unpack(">Q", raw[40:48])[0],
        "current_size": struct.unpack(">Q", raw[48:56])[0],
        "geometry": struct.unpack(">HBB", raw[56:60]),
        "disk_type": struct.unpack(">I", raw[60:64])[0],
        "checksum": struct.unpack(">I", raw[64:68])[0],
        "unique_id": raw[68:84],
    }


def read_header(raw):
    return {
        "cookie": raw[0:8],
        "data_offset": struct.unpack(">Q", raw[8:16])[0],
        "table_offset": struct.unpack(">Q", raw[16:24])[0],
        "version": struct.unpack(">I", raw[24:28])[0],
        "max_entries": struct.unpack(">I", raw[28:32])[0],
        "block_size": struct.unpack(">I", raw[32:36])[0],
        "checksum": struct.unpack(">I", raw[36:40])[0],
    }


def test_chs_geometry_follows_the_spec_table():
    # Worked by hand from the spec's algorithm.
    assert vhd.chs_geometry(2 * 1024 * 1024) == (2080, 16, 63)       # 1 GiB
    assert vhd.chs_geometry(16384) == (240, 4, 17)                    # 8 MiB
    assert vhd.chs_geometry(200000) == (980, 12, 17)
    assert vhd.chs_geometry(300000) == (604, 16, 31)
    assert vhd.chs_geometry(65535 * 16 * 255 + 1000) == (65535, 16, 255)


def test_footer_and_dynamic_header_fields_and_checksums(tmp_path):
    disk = make_disk(tmp_path / "d.raw", 5 * MiB, [(3 * MiB, b"data")])
    image = encode(vhd.VhdStream.from_file(disk))

    head, tail = read_footer(image[:512]), read_footer(image[-512:])
    assert image[:512] == image[-512:]
    assert head["cookie"] == b"conectix"
    assert head["features"] == 2 and head["version"] == 0x00010000
    assert head["data_offset"] == 512
    assert head["current_size"] == head["original_size"] == 5 * MiB
    assert head["geometry"] == vhd.chs_geometry(5 * MiB // 512)
    assert head["disk_type"] == 3
    assert head["checksum"] == spec_checksum(image[:512], 64)
    assert tail["unique_id"] == head["unique_id"] != bytes(16)

    dyn = read_header(image[512:1536])
    assert dyn["cookie"] == b"cxsparse"
    assert dyn["data_offset"] == 0xFFFFFFFFFFFFFFFF
    assert dyn["table_offset"] == 1536
    assert dyn["version"] == 0x00010000
    assert dyn["max_entries"] == 3
    assert dyn["block_size"] == 2 * MiB
    assert dyn["checksum"] == spec_checksum(image[512:1536], 36)


def test_bat_points_at_the_only_block_with_data(tmp_path):
    disk = make_disk(tmp_path / "d.raw", 8 * MiB, [(5 * MiB + 7, b"\x01")])
    image = encode(vhd.VhdStream.from_file(disk))

    bat = struct.unpack(">4I", image[1536:1536 + 16])
    assert bat[0] == bat[1] == bat[3] == 0xFFFFFFFF
    block_start = bat[2] * 512
    assert image[block_start:block_start + 512] == b"\xff" * 512    # every sector present
    data = image[block_start + 512:block_start + 512 + 2 * MiB]
    assert data[MiB + 7] == 1 and data.count(0) == 2 * MiB - 1
    assert len(image) == block_start + 512 + 2 * MiB + 512


def test_length_is_known_before_streaming_and_pieces_are_bounded(tmp_path):
    disk = make_disk(tmp_path / "d.raw", 9 * MiB, [(0, os.urandom(9 * MiB))])
    stream = vhd.VhdStream.from_file(disk)
    pieces = list(stream)

    assert sum(len(p) for p in pieces) == stream.length
    assert max(len(p) for p in pieces) <= vhd.MAX_PIECE_BYTES


def test_blocks_of_written_zeros_are_left_out_like_holes(tmp_path):
    disk = make_disk(tmp_path / "d.raw", 6 * MiB,
                     [(0, bytes(4 * MiB)), (4 * MiB + 512, b"x")])
    stream = vhd.VhdStream.from_file(disk)

    assert list(stream.blocks) == [2]
    assert stream.length == 1536 + 512 + (512 + 2 * MiB) + 512


def test_partial_last_block_marks_only_sectors_inside_the_disk(tmp_path):
    size = 2 * MiB + 3 * 512
    disk = make_disk(tmp_path / "d.raw", size, [(size - 512, b"z" * 512)])
    image = encode(vhd.VhdStream.from_file(disk))

    block_start = struct.unpack(">I", image[1536 + 4:1536 + 8])[0] * 512
    assert image[block_start] == 0b11100000
    assert image[block_start + 1:block_start + 512] == bytes(511)


def test_virtual_size_may_exceed_the_source(tmp_path):
    disk = make_disk(tmp_path / "d.raw", MiB, [(0, b"boot")])
    stream = vhd.VhdStream.from_file(disk, virtual_size=64 * MiB)
    image = encode(stream)

    assert read_footer(image[-512:])["current_size"] == 64 * MiB
    assert read_header(image[512:1536])["max_entries"] == 32
    assert list(stream.blocks) == [0]


@pytest.mark.parametrize("size, words", [
    (0, "at least one sector"),
    (1000, "not a multiple of the 512-byte sector"),
    (vhd.MAX_VIRTUAL_SIZE_BYTES + 512, "exceeds the VHD limit"),
])
def test_sizes_a_vhd_cannot_hold_are_refused_naming_the_source(tmp_path, size, words):
    disk = make_disk(tmp_path / "d.raw", 512)

    with pytest.raises(exceptions.DiskOperationFailed) as err:
        vhd.VhdStream.from_file(disk, virtual_size=size)
    assert words in str(err.value) and disk in str(err.value)


def test_source_larger_than_the_disk_is_refused(tmp_path):
    disk = make_disk(tmp_path / "d.raw", 4 * MiB)

    with pytest.raises(exceptions.DiskOperationFailed, match="more than the disk size"):
        vhd.VhdStream.from_file(disk, virtual_size=2 * MiB)


def test_a_huge_sparse_source_is_mapped_without_reading_its_holes(tmp_path):
    size = 1024 * 1024 * MiB  # 1 TiB, nearly all hole
    disk = make_disk(tmp_path / "d.raw", size, [(size - MiB, b"last")])
    stream = vhd.VhdStream.from_file(disk)

    assert list(stream.blocks) == [size // (2 * MiB) - 1]
    assert stream.length == 1536 + (size // (2 * MiB)) * 4 + 512 + 2 * MiB + 512
