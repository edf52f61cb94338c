"""The simulator's VHD decoder against qemu-img, an independent VHD producer.

Each layout is made as a raw file, converted with ``qemu-img convert -O vpc``,
decoded (from a file with materialize_chain, and as a stream through
import_vhd), and compared byte for byte with what ``qemu-img`` itself reads
back. Differencing chains, which qemu-img cannot write, are built by
``vhdtestlib``.
"""

import os
import struct

import pytest

from dom0.simulator import dataio, vhd, vhdformat
from tests.functional.simulator import vhdtestlib
from tests.diskfiles import allocated_bytes, read_file

MiB = 1 << 20

def make_raw(path, size, extents):
    """A sparse raw file of ``size`` with random data at (offset, length) extents."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(os.urandom(length))
    return path


def qemu_vhd(raw, vhd_path, options="subformat=dynamic"):
    vhdtestlib.qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", options, str(raw),
                        str(vhd_path))
    return vhd_path


def qemu_read(vhd_path, out):
    """What qemu-img reads from the VHD, as a raw file."""
    vhdtestlib.qemu_img("convert", "-f", "vpc", "-O", "raw", str(vhd_path), str(out))
    return out


def stream_decode(vhd_path, out, vdi_size):
    """Decode through the streaming path (import_vhd) into a fresh sparse file."""
    with open(out, "wb") as f:
        f.truncate(vdi_size)
    with open(vhd_path, "rb") as body:
        return dataio.import_vhd(body, os.path.getsize(vhd_path), out, vdi_size)


LAYOUTS = {
    # name: (size, extents of random data, qemu-img -o options)
    "empty": (8 * MiB, [], "subformat=dynamic"),
    "full": (8 * MiB, [(0, 8 * MiB)], "subformat=dynamic"),
    "sparse": (32 * MiB, [(0, 4096), (5 * MiB + 4096, 3 * MiB), (31 * MiB, MiB)],
               "subformat=dynamic"),
    "odd-size-chs-rounded": (10 * MiB + 512, [(10 * MiB - 100 * 512, 100 * 512 + 512)],
                             "subformat=dynamic"),
    "odd-size-forced": (10 * MiB + 512, [(MiB, 512), (10 * MiB, 512)],
                        "subformat=dynamic,force_size=on"),
    "fixed": (6 * MiB, [(MiB, 2 * MiB)], "subformat=fixed"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_materialize_matches_qemu_img_byte_for_byte(tmp_path, layout):
    size, extents, options = LAYOUTS[layout]
    src = make_raw(tmp_path / "src.raw", size, extents)
    image = qemu_vhd(src, tmp_path / "disk.vhd", options)
    expected = qemu_read(image, tmp_path / "qemu.raw")

    virtual_size, parent = vhd.materialize_chain(str(image), str(tmp_path / "out.raw"))

    assert parent is None
    assert virtual_size == os.path.getsize(expected)
    assert read_file(tmp_path / "out.raw") == read_file(expected)
    # qemu may round the size up to a CHS geometry; the source is a prefix.
    assert read_file(expected)[:size] == read_file(src)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_stream_decode_matches_qemu_img_byte_for_byte(tmp_path, layout):
    size, extents, options = LAYOUTS[layout]
    src = make_raw(tmp_path / "src.raw", size, extents)
    image = qemu_vhd(src, tmp_path / "disk.vhd", options)
    expected = read_file(qemu_read(image, tmp_path / "qemu.raw"))
    vdi_size = len(expected) + 3 * MiB  # a VDI larger than the disk is fine

    stream_decode(image, tmp_path / "vdi.raw", vdi_size)

    assert read_file(tmp_path / "vdi.raw") == expected + bytes(3 * MiB)


def test_decoded_sparse_disk_keeps_its_holes(tmp_path):
    size, extents, options = LAYOUTS["sparse"]
    src = make_raw(tmp_path / "src.raw", size, extents)
    image = qemu_vhd(src, tmp_path / "disk.vhd", options)
    data_bytes = sum(length for _, length in extents)

    vhd.materialize_chain(str(image), str(tmp_path / "out.raw"))
    stream_decode(image, tmp_path / "vdi.raw", size + 4 * MiB)  # CHS rounding

    # Zero-skipping works on 64 KiB grains: at most one extra grain per extent end.
    slack = 2 * len(extents) * 64 * 1024
    assert allocated_bytes(tmp_path / "out.raw") <= data_bytes + slack
    assert allocated_bytes(tmp_path / "vdi.raw") <= data_bytes + slack


def test_empty_disk_decodes_to_no_allocated_blocks(tmp_path):
    src = make_raw(tmp_path / "src.raw", 64 * MiB, [])
    image = qemu_vhd(src, tmp_path / "disk.vhd", "subformat=dynamic,force_size=on")

    vhd.materialize_chain(str(image), str(tmp_path / "out.raw"))
    stream_decode(image, tmp_path / "vdi.raw", 64 * MiB)

    assert allocated_bytes(tmp_path / "out.raw") == 0
    assert allocated_bytes(tmp_path / "vdi.raw") == 0


@pytest.mark.parametrize("order", ["descending", [3, 0, 7, 1]])
def test_stream_decoder_accepts_blocks_stored_in_any_order(tmp_path, order):
    size = 16 * MiB
    writes = [(i * 2 * MiB + 1024, os.urandom(4096)) for i in (0, 1, 3, 7)]
    image = tmp_path / "shuffled.vhd"
    vhdtestlib.build_vhd(image, size, writes, block_order=order)
    expected = make_raw(tmp_path / "expected.raw", size, [])
    vhdtestlib.apply_writes(expected, writes)

    stream_decode(image, tmp_path / "vdi.raw", size)
    vhd.materialize_chain(str(image), str(tmp_path / "out.raw"))

    assert read_file(tmp_path / "vdi.raw") == read_file(expected)
    assert read_file(tmp_path / "out.raw") == read_file(expected)
    assert read_file(qemu_read(image, tmp_path / "qemu.raw")) == read_file(expected)


# -- differencing chains -------------------------------------------------


def test_differencing_child_takes_unmarked_sectors_from_its_parent(tmp_path):
    size = 12 * MiB
    src = make_raw(tmp_path / "base.raw", size, [(0, 12 * MiB)])
    base = qemu_vhd(src, tmp_path / "base.vhd", "subformat=dynamic,force_size=on")
    writes = [(512, os.urandom(512)),              # one sector inside a parent block
              (2 * MiB - 1024, os.urandom(2048)),  # across a block boundary
              (8 * MiB, bytes(4096))]              # zeros that must hide the parent's data
    child = tmp_path / "child.vhd"
    vhdtestlib.build_vhd(child, size, writes, parent_path=base)
    vhdtestlib.apply_writes(src, writes)

    virtual_size, parent = vhd.materialize_chain(str(child), str(tmp_path / "out.raw"))

    assert (virtual_size, parent) == (size, str(base))
    assert read_file(tmp_path / "out.raw") == read_file(src)


def test_three_level_chain_resolves_each_sector_to_the_nearest_layer(tmp_path):
    size = 8 * MiB
    expected = make_raw(tmp_path / "expected.raw", size, [(MiB, 2 * MiB)])
    base = qemu_vhd(expected, tmp_path / "base.vhd", "subformat=dynamic,force_size=on")
    middle_writes = [(MiB, os.urandom(MiB)), (6 * MiB, os.urandom(8192))]
    vhdtestlib.build_vhd(tmp_path / "middle.vhd", size, middle_writes, parent_path=base,
                         block_order="descending")
    leaf_writes = [(MiB + 512, os.urandom(512)), (6 * MiB + 4096, os.urandom(512))]
    vhdtestlib.build_vhd(tmp_path / "leaf.vhd", size, leaf_writes,
                         parent_path=tmp_path / "middle.vhd")
    vhdtestlib.apply_writes(expected, middle_writes + leaf_writes)

    _, parent = vhd.materialize_chain(str(tmp_path / "leaf.vhd"), str(tmp_path / "out.raw"))

    assert parent == str(tmp_path / "middle.vhd")
    assert read_file(tmp_path / "out.raw") == read_file(expected)


def test_child_refuses_a_parent_whose_unique_id_differs(tmp_path):
    size = 4 * MiB
    base = qemu_vhd(make_raw(tmp_path / "b.raw", size, []), tmp_path / "base.vhd",
                    "subformat=dynamic,force_size=on")
    vhdtestlib.build_vhd(tmp_path / "child.vhd", size, [(0, b"x" * 512)], parent_path=base)
    qemu_vhd(make_raw(tmp_path / "b.raw", size, []), base,
             "subformat=dynamic,force_size=on")  # a new base: another unique id

    with pytest.raises(vhd.VhdError, match="unique id .* the child expects"):
        vhd.materialize_chain(str(tmp_path / "child.vhd"), str(tmp_path / "out.raw"))
    assert not os.path.exists(tmp_path / "out.raw")


def test_child_whose_parent_file_is_missing_is_refused(tmp_path):
    size = 4 * MiB
    base = qemu_vhd(make_raw(tmp_path / "b.raw", size, []), tmp_path / "base.vhd",
                    "subformat=dynamic,force_size=on")
    vhdtestlib.build_vhd(tmp_path / "child.vhd", size, [], parent_path=base,
                         parent_name="gone.vhd")

    with pytest.raises(vhd.VhdError, match="parent 'gone.vhd' not found"):
        vhd.materialize_chain(str(tmp_path / "child.vhd"), str(tmp_path / "out.raw"))


# -- malformed input -----------------------------------------------------------


@pytest.fixture
def good_vhd(tmp_path):
    src = make_raw(tmp_path / "src.raw", 8 * MiB, [(0, MiB), (4 * MiB, MiB)])
    return qemu_vhd(src, tmp_path / "good.vhd", "subformat=dynamic,force_size=on")


def corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def fix_footer_checksums(path):
    """Recompute both footers' checksums after a deliberate field change."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for at in (0, size - 512):
            f.seek(at)
            raw = bytearray(f.read(512))
            raw[64:68] = bytes(4)
            raw[64:68] = struct.pack(">I", ~sum(raw) & 0xFFFFFFFF)
            f.seek(at)
            f.write(raw)


def bat_offset(path):
    with open(path, "rb") as f:
        f.seek(512 + 16)
        return struct.unpack(">Q", f.read(8))[0]


def expect_refused(image, tmp_path, pattern):
    with pytest.raises(vhd.VhdError, match=pattern):
        vhd.materialize_chain(str(image), str(tmp_path / "out.raw"))
    assert not os.path.exists(tmp_path / "out.raw")
    with pytest.raises(dataio.ImportFailed, match=pattern):
        stream_decode(image, tmp_path / "vdi.raw", 16 * MiB)
    assert allocated_bytes(tmp_path / "vdi.raw") == 0  # nothing written to the fresh VDI


def test_bad_footer_cookie_is_refused(good_vhd, tmp_path):
    size = os.path.getsize(good_vhd)
    corrupt(good_vhd, 0, b"notavhd!")
    corrupt(good_vhd, size - 512, b"notavhd!")
    expect_refused(good_vhd, tmp_path, "bad cookie|not a VHD")


def test_bad_footer_checksum_is_refused(good_vhd, tmp_path):
    size = os.path.getsize(good_vhd)
    corrupt(good_vhd, 100, b"\x01")
    corrupt(good_vhd, size - 512 + 100, b"\x01")
    expect_refused(good_vhd, tmp_path, "footer.*bad checksum")


def test_bad_dynamic_header_checksum_is_refused(good_vhd, tmp_path):
    corrupt(good_vhd, 512 + 100, b"\x01")
    expect_refused(good_vhd, tmp_path, "dynamic header: bad checksum")


def test_bat_entry_pointing_past_the_file_is_refused(good_vhd, tmp_path):
    corrupt(good_vhd, bat_offset(good_vhd), struct.pack(">I", 0x00FFFFF0))
    expect_refused(good_vhd, tmp_path, "BAT entry 0 points to offset .* outside")


def test_allocated_block_past_the_virtual_size_is_refused(good_vhd, tmp_path):
    size = os.path.getsize(good_vhd)
    for at in (0, size - 512):  # shrink the disk to 2 MiB: blocks 1.. now lie outside
        corrupt(good_vhd, at + 40, struct.pack(">QQ", 2 * MiB, 2 * MiB))
    fix_footer_checksums(good_vhd)
    expect_refused(good_vhd, tmp_path, "BAT entry 2 is allocated but .* past the virtual size")


def test_footer_copy_disagreeing_with_the_footer_is_refused(good_vhd, tmp_path):
    corrupt(good_vhd, 68, os.urandom(16))  # the copy's unique id
    fix_footer_checksums(good_vhd)
    expect_refused(good_vhd, tmp_path, "does not match")


def test_fixed_vhd_whose_footer_size_disagrees_with_the_file_is_refused(tmp_path):
    src = make_raw(tmp_path / "src.raw", 4 * MiB, [(0, MiB)])
    image = qemu_vhd(src, tmp_path / "fixed.vhd", "subformat=fixed,force_size=on")
    size = os.path.getsize(image)
    corrupt(image, size - 512 + 40, struct.pack(">QQ", 2 * MiB, 2 * MiB))
    fix_footer_checksums(image)
    expect_refused(image, tmp_path, "fixed disk of")


def test_truncated_vhd_is_refused(good_vhd, tmp_path):
    with open(good_vhd, "r+b") as f:
        f.truncate(os.path.getsize(good_vhd) - 4096)
    expect_refused(good_vhd, tmp_path, "bad cookie|outside|passes the end")


def test_stream_refuses_a_differencing_disk(tmp_path, good_vhd):
    vhdtestlib.build_vhd(tmp_path / "child.vhd", 8 * MiB, [(0, b"y" * 512)],
                         parent_path=good_vhd)
    with pytest.raises(dataio.ImportFailed, match="differencing VHD"):
        stream_decode(tmp_path / "child.vhd", tmp_path / "vdi.raw", 8 * MiB)


def test_stream_refuses_overlapping_blocks(tmp_path):
    image = tmp_path / "overlap.vhd"
    vhdtestlib.build_vhd(image, 8 * MiB, [(0, b"a" * 512), (2 * MiB, b"b" * 512)])
    table = bat_offset(image)
    with open(image, "rb") as f:
        f.seek(table)
        first = f.read(4)
    corrupt(image, table + 4, first)  # block 1 now shares block 0's place
    with pytest.raises(dataio.ImportFailed, match="overlaps the data before it"):
        stream_decode(image, tmp_path / "vdi.raw", 8 * MiB)


@pytest.mark.parametrize("size_mib", [10, 127, 1024, 40 * 1024, 120 * 1024])
def test_chs_geometry_matches_the_one_qemu_img_records(tmp_path, size_mib):
    # Without force_size qemu-img rounds the size to a geometry and records both.
    image = tmp_path / "g.vhd"
    vhdtestlib.qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=dynamic",
                        str(image), "%dM" % size_mib)
    with open(image, "rb") as f:
        f.seek(48)
        current_size, cylinders, heads, sectors = struct.unpack(">QHBB", f.read(12))

    assert vhdformat.chs_geometry(current_size) == (cylinders, heads, sectors)
