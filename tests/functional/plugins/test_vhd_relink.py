"""The image plugin's VHD checks and re-linking, on files built independently.

These call the plugin's module directly: the check and the re-link are pure
functions of a file, and the end-to-end path (tarball → SR.scan → exported
content) is covered through the simulator in test_vhd_images.py.
"""

import importlib.util
import os
import struct

import pytest

from tests.functional.plugins import vhdchain

PLUGIN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "dom0", "plugins")
SIZE = 6 << 20


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(PLUGIN_DIR, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nxs_vhd = _load("nxs_vhd")


@pytest.fixture
def chain(tmp_path):
    """1.vhd (dynamic, by qemu-img) under 0.vhd (differencing) in tmp_path."""
    base = bytearray(SIZE)
    base[:200000] = os.urandom(200000)
    child = bytearray(base)
    child[4096:8192] = os.urandom(4096)
    (tmp_path / "base.raw").write_bytes(base)
    vhdchain.make_base(str(tmp_path / "base.raw"), str(tmp_path / "1.vhd"))
    vhdchain.make_child(bytes(base), bytes(child), str(tmp_path / "1.vhd"), "1.vhd",
                        str(tmp_path / "0.vhd"))
    return tmp_path


def _header(path):
    data = path.read_bytes()
    return data[512:1536], data


def _independent_checksum(block, at):
    zeroed = block[:at] + b"\0\0\0\0" + block[at + 4:]
    return 0xFFFFFFFF - (sum(zeroed) & 0xFFFFFFFF)


def test_inspect_reads_the_chain_link_from_the_child(chain):
    child = nxs_vhd.inspect(str(chain / "0.vhd"))
    base = nxs_vhd.inspect(str(chain / "1.vhd"))
    assert (child["type"], base["type"]) == ("differencing", "dynamic")
    assert child["parent_uuid"] == base["uuid"]
    assert child["parent_name"] == "1.vhd"
    assert child["virtual_size"] == base["virtual_size"] == SIZE


def test_relink_rewrites_name_locators_and_checksum(chain):
    new_name = "0b4f5e6a-1c2d-4e3f-8a9b-0c1d2e3f4a5b.vhd"
    before_header, before = _header(chain / "0.vhd")

    nxs_vhd.relink(str(chain / "0.vhd"), new_name, "/var/run/sr-mount/sr/" + new_name)

    header, after = _header(chain / "0.vhd")
    assert header[64:576].decode("utf-16-be").rstrip("\0") == new_name
    assert struct.unpack_from(">I", header, 36)[0] == _independent_checksum(header, 36)
    locators = {}
    for slot in range(8):
        code, _, length, _, offset = struct.unpack_from(">4sIIIQ", header, 576 + 24 * slot)
        if code != b"\0\0\0\0":
            locators[code] = after[offset:offset + length]
    assert locators == {
        b"W2ku": ("\\var\\run\\sr-mount\\sr\\" + new_name).encode("utf-16-le"),
        b"W2ru": (".\\" + new_name).encode("utf-16-le"),
        b"MacX": ("file://./" + new_name).encode("utf-8"),
    }
    # Parent uuid, block table and data are untouched: only names changed.
    assert header[40:56] == before_header[40:56]
    assert after[:512] == before[:512] and after[-512:] == before[-512:]
    assert nxs_vhd.inspect(str(chain / "0.vhd"))["parent_name"] == new_name


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-1], "footer"),
    (lambda d: d[:-512] + b"x" + d[-511:], "no VHD footer"),
    (lambda d: d[:-448] + bytes([d[-448] ^ 1]) + d[-447:], "footer checksum"),
    (lambda d: d[:600] + bytes([d[600] ^ 1]) + d[601:], "dynamic header checksum"),
    (lambda d: d[:1] + b"\0" + d[2:], "footer copy"),
])
def test_inspect_refuses_damaged_files(chain, damage, message):
    path = chain / "1.vhd"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(nxs_vhd.InvalidVhd, match=message):
        nxs_vhd.inspect(str(path))


def test_inspect_refuses_a_block_pointing_past_the_data(chain):
    path = chain / "1.vhd"
    data = bytearray(path.read_bytes())
    bat_offset = struct.unpack_from(">Q", data, 512 + 16)[0]
    struct.pack_into(">I", data, bat_offset, len(data) // 512)
    path.write_bytes(bytes(data))
    with pytest.raises(nxs_vhd.InvalidVhd, match="outside the data area"):
        nxs_vhd.inspect(str(path))


def _rewrite_header(path, **fields):
    """Set dynamic header fields (entries, block_size) of ``path`` and its checksum."""
    data = bytearray(path.read_bytes())
    at = {"entries": 512 + 28, "block_size": 512 + 32}
    for name, value in fields.items():
        struct.pack_into(">I", data, at[name], value)
    struct.pack_into(">I", data, 512 + 36, 0)
    struct.pack_into(">I", data, 512 + 36, _independent_checksum(bytes(data[512:1536]), 36))
    path.write_bytes(bytes(data))


def test_inspect_refuses_blocks_that_blktap_cannot_read(chain):
    path = chain / "1.vhd"
    _rewrite_header(path, block_size=1 << 20, entries=2 * SIZE // (1 << 20))
    with pytest.raises(nxs_vhd.InvalidVhd, match="block size 1048576 is not 2097152"):
        nxs_vhd.inspect(str(path))


def test_inspect_refuses_a_table_larger_than_any_vhd_needs(chain):
    # A sparse file can claim a table of billions of entries in a few KiB of
    # disk; reading it would take gigabytes of dom0's memory.
    path = chain / "1.vhd"
    _rewrite_header(path, entries=nxs_vhd.MAX_TABLE_ENTRIES + 1)
    footer = path.read_bytes()[-512:]
    with open(str(path), "r+b") as f:
        f.truncate(8 << 30)                 # a hole, then the footer again
        f.seek((8 << 30) - 512)
        f.write(footer)
    with pytest.raises(nxs_vhd.InvalidVhd, match="larger than any VHD needs"):
        nxs_vhd.inspect(str(path))


def test_a_table_sized_for_a_larger_disk_is_accepted(chain):
    # vhd-util create -S sizes the table for the largest size the disk may
    # grow to; the entries past the disk's end are unused.
    path = chain / "1.vhd"
    data = bytearray(path.read_bytes())
    bat_offset, _, entries = struct.unpack_from(">QII", data, 512 + 16)
    first_block = min(s for s in struct.unpack_from(">%dI" % entries, data, bat_offset)
                      if s != 0xFFFFFFFF) * 512
    spare = (first_block - bat_offset) // 4 - entries   # unused table room before the data
    assert spare > 0
    _rewrite_header(path, entries=entries + spare)
    data = bytearray(path.read_bytes())
    data[bat_offset + 4 * entries:bat_offset + 4 * (entries + spare)] = b"\xff" * 4 * spare
    path.write_bytes(bytes(data))
    assert nxs_vhd.inspect(str(path))["virtual_size"] == SIZE


def test_relink_refuses_a_name_that_does_not_fit_the_locator_space(chain):
    with pytest.raises(nxs_vhd.InvalidVhd, match="room for"):
        nxs_vhd.relink(str(chain / "0.vhd"), "x" * 250 + ".vhd", "/sr/" + "y" * 300)
