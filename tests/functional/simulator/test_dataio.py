"""The simulator's import/export byte path, driven directly with real streams.

Bodies come from a socket pair (as the HTTP handler's ``rfile`` does), so a
sender that closes early is a real cut connection. Results are checked by
reading the VDI file back, its allocated size, and ``qemu-img`` for VHD
output.
"""

import io
import os
import socket
import struct
import threading

import pytest

from dom0.simulator import dataio
from tests.functional.simulator.vhdtestlib import qemu_img
from tests.diskfiles import allocated_bytes, make_disk, read_file

MiB = 1 << 20


class Sender:
    """A socket pair: a thread sends ``payload`` (then closes); ``rfile`` reads it."""

    def __init__(self, payload):
        self._ours, self._theirs = socket.socketpair()
        self.rfile = self._ours.makefile("rb")
        self._thread = threading.Thread(target=self._send, args=(payload,))
        self._thread.start()

    def _send(self, payload):
        try:
            self._theirs.sendall(payload)
        except OSError:
            pass  # the reader gave up first, as a server does on a bad body
        finally:
            self._theirs.close()

    def close(self):
        self.rfile.close()
        self._ours.close()
        self._thread.join(10)


@pytest.fixture
def send():
    senders = []

    def factory(payload):
        sender = Sender(payload)
        senders.append(sender)
        return sender.rfile

    yield factory
    for sender in senders:
        sender.close()


def chunk(offset, data):
    return struct.pack("<QI", offset, len(data)) + data


END = struct.pack("<QI", 0, 0)


# -- plain raw ---------------------------------------------------------------


def test_plain_raw_body_lands_at_offset_zero_and_zero_grains_stay_holes(tmp_path, send):
    disk = os.urandom(MiB) + bytes(4 * MiB) + os.urandom(MiB)
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)

    written = dataio.import_raw(send(disk), len(disk), vdi, 8 * MiB, chunked=False)

    assert written == len(disk)
    assert read_file(vdi) == disk + bytes(2 * MiB)
    assert allocated_bytes(vdi) == 2 * MiB


def test_body_larger_than_the_vdi_fails_and_writes_nothing(tmp_path, send):
    vdi = make_disk(tmp_path / "vdi", MiB)

    with pytest.raises(dataio.ImportFailed, match="larger than the VDI"):
        dataio.import_raw(send(os.urandom(MiB + 512)), MiB + 512, vdi, MiB, chunked=False)

    assert os.path.getsize(vdi) == MiB
    assert allocated_bytes(vdi) == 0


def test_connection_cut_mid_body_fails_and_a_fresh_vdi_stays_empty(tmp_path, send):
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)

    with pytest.raises(dataio.ImportFailed, match=r"connection closed after 5242880 of"):
        dataio.import_raw(send(os.urandom(5 * MiB)), 8 * MiB, vdi, 8 * MiB, chunked=False)

    assert allocated_bytes(vdi) == 0


def test_import_over_old_data_leaves_zeros_where_the_body_has_zeros(tmp_path, send):
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)
    with open(vdi, "r+b") as f:
        f.write(os.urandom(4 * MiB))
    disk = os.urandom(MiB) + bytes(3 * MiB)

    dataio.import_raw(send(disk), len(disk), vdi, 4 * MiB, chunked=False)

    assert read_file(vdi) == disk
    assert allocated_bytes(vdi) == MiB  # the zeros were punched out, not written


def test_plain_body_without_content_length_is_read_until_the_peer_closes(tmp_path, send):
    disk = os.urandom(3 * MiB + 100)
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)

    assert dataio.import_raw(send(disk), None, vdi, 4 * MiB, chunked=False) == len(disk)
    assert read_file(vdi)[:len(disk)] == disk


def test_disk_full_while_writing_fails_the_import(small_filesystem, send):
    vdi = make_disk(small_filesystem / "vdi", 16 * MiB)

    with pytest.raises(dataio.ImportFailed, match="writing the VDI failed .*No space left"):
        dataio.import_raw(send(os.urandom(8 * MiB)), 8 * MiB, vdi, 16 * MiB, chunked=False)

    assert allocated_bytes(vdi) == 0  # the fresh VDI was emptied again


# -- chunked -------------------------------------------------------------------


def test_chunked_body_writes_only_its_chunks(tmp_path, send):
    first, second = os.urandom(64 * 1024), os.urandom(3 * MiB + 7)
    body = chunk(MiB, first) + chunk(12 * MiB, second) + END
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)

    written = dataio.import_raw(send(body), len(body), vdi, 16 * MiB, chunked=True)

    assert written == len(first) + len(second)
    expected = bytearray(16 * MiB)
    expected[MiB:MiB + len(first)] = first
    expected[12 * MiB:12 * MiB + len(second)] = second
    assert read_file(vdi) == expected
    assert allocated_bytes(vdi) <= len(first) + len(second) + 128 * 1024


def test_chunked_import_keeps_data_outside_its_chunks(tmp_path, send):
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)
    old = os.urandom(4 * MiB)
    with open(vdi, "r+b") as f:
        f.write(old)
    new = os.urandom(4096)
    body = chunk(MiB, new) + END

    dataio.import_raw(send(body), len(body), vdi, 4 * MiB, chunked=True)

    assert read_file(vdi) == old[:MiB] + new + old[MiB + 4096:]


@pytest.mark.parametrize("body, message", [
    (chunk(15 * MiB, bytes(MiB + 1)) + END, "passes the VDI's end"),
    (chunk(0, b"abc") + b"\x00" * 5, "truncated chunk header"),
    (chunk(0, b"abc") + struct.pack("<QI", 4096, 100) + b"x" * 10, "declares 100 bytes"),
    (chunk(0, b"abc"), "without its terminating chunk"),
    (chunk(0, b"abc") + END + b"junk", "4 bytes follow the terminating chunk"),
], ids=["past-end", "truncated-header", "truncated-data", "no-terminator", "trailing"])
def test_malformed_chunk_stream_fails_and_a_fresh_vdi_stays_empty(tmp_path, send, body,
                                                                   message):
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)

    with pytest.raises(dataio.ImportFailed, match=message):
        dataio.import_raw(send(body), len(body), vdi, 16 * MiB, chunked=True)

    assert os.path.getsize(vdi) == 16 * MiB
    assert allocated_bytes(vdi) == 0


def test_chunked_body_without_content_length_ends_at_its_terminating_chunk(tmp_path, send):
    data = os.urandom(8192)
    vdi = make_disk(tmp_path / "vdi", MiB)

    written = dataio.import_raw(send(chunk(4096, data) + END), None, vdi, MiB, chunked=True)

    assert written == len(data)
    assert read_file(vdi)[4096:4096 + len(data)] == data


def test_chunked_stream_cut_mid_chunk_fails(tmp_path, send):
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)
    body = chunk(0, os.urandom(2 * MiB)) + END

    with pytest.raises(dataio.ImportFailed, match="connection closed after"):
        dataio.import_raw(send(body[:MiB]), len(body), vdi, 16 * MiB, chunked=True)
    assert allocated_bytes(vdi) == 0


# -- VHD import and export -------------------------------------------------------


def test_vhd_larger_than_the_vdi_fails_before_writing(tmp_path, send):
    src = make_disk(tmp_path / "src.raw", 8 * MiB)
    with open(src, "r+b") as f:
        f.write(os.urandom(MiB))
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
             src, str(tmp_path / "d.vhd"))
    body = read_file(tmp_path / "d.vhd")
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)

    with pytest.raises(dataio.ImportFailed, match=r"virtual size \(8388608 bytes\) is larger"):
        dataio.import_vhd(send(body), len(body), vdi, 4 * MiB)
    assert allocated_bytes(vdi) == 0


def test_vhd_body_without_content_length_is_refused(tmp_path, send):
    vdi = make_disk(tmp_path / "vdi", MiB)
    with pytest.raises(dataio.ImportFailed, match="needs a Content-Length"):
        dataio.import_vhd(send(b""), None, vdi, MiB)


def test_vhd_import_over_old_data_leaves_zeros_where_the_vhd_has_no_data(tmp_path, send):
    src = make_disk(tmp_path / "src.raw", 8 * MiB)
    with open(src, "r+b") as f:
        f.seek(3 * MiB)
        f.write(os.urandom(MiB))
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
             src, str(tmp_path / "d.vhd"))
    body = read_file(tmp_path / "d.vhd")
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)
    with open(vdi, "r+b") as f:
        f.write(os.urandom(8 * MiB))

    dataio.import_vhd(send(body), len(body), vdi, 8 * MiB)

    assert read_file(vdi) == read_file(src)
    assert allocated_bytes(vdi) == MiB


def sparse_vdi(tmp_path, size, extents):
    vdi = make_disk(tmp_path / "vdi", size)
    with open(vdi, "r+b") as f:
        for offset, length in extents:
            f.seek(offset)
            f.write(os.urandom(length))
    return vdi


@pytest.mark.parametrize("size, extents", [
    (8 * MiB, []),
    (8 * MiB, [(0, 8 * MiB)]),
    (10 * MiB + 512, [(MiB, 4096), (10 * MiB, 512)]),
    (64 * MiB, [(3 * MiB, 100 * 1024), (40 * MiB - 512, 1024)]),
], ids=["empty", "full", "odd-size", "sparse"])
def test_vhd_export_is_read_back_identically_by_qemu_img(tmp_path, size, extents):
    vdi = sparse_vdi(tmp_path, size, extents)
    out = io.BytesIO()

    dataio.export_vhd(out, vdi, size)

    assert len(out.getvalue()) == dataio.vhd_export_length(vdi, size)
    (tmp_path / "export.vhd").write_bytes(out.getvalue())
    qemu_img("convert", "-f", "vpc", "-O", "raw", str(tmp_path / "export.vhd"),
             str(tmp_path / "back.raw"))
    assert read_file(tmp_path / "back.raw") == read_file(vdi)


def test_vhd_export_holds_only_blocks_with_data(tmp_path):
    vdi = sparse_vdi(tmp_path, 64 * MiB, [(3 * MiB, 4096), (40 * MiB, 4096)])

    length = dataio.vhd_export_length(vdi, 64 * MiB)

    # footer copy + header + BAT (32 entries, one sector) + 2 blocks + footer
    assert length == 512 + 1024 + 512 + 2 * (512 + 2 * MiB) + 512


def test_vhd_export_imports_back_into_an_identical_sparse_vdi(tmp_path, send):
    vdi = sparse_vdi(tmp_path, 32 * MiB, [(MiB, 3 * MiB), (30 * MiB, 4096)])
    out = io.BytesIO()
    dataio.export_vhd(out, vdi, 32 * MiB)
    copy = make_disk(tmp_path / "copy", 32 * MiB)

    dataio.import_vhd(send(out.getvalue()), len(out.getvalue()), copy, 32 * MiB)

    assert read_file(copy) == read_file(vdi)
    assert allocated_bytes(copy) <= allocated_bytes(vdi) + 2 * 64 * 1024  # 64 KiB zero grains


def test_vdi_of_an_odd_byte_size_round_trips_through_its_vhd_export(tmp_path, send):
    size = 3 * MiB + 1000  # not a whole number of sectors
    vdi = sparse_vdi(tmp_path, size, [(0, 4096), (size - 200, 200)])
    out = io.BytesIO()
    dataio.export_vhd(out, vdi, size)
    copy = make_disk(tmp_path / "copy", size)

    dataio.import_vhd(send(out.getvalue()), len(out.getvalue()), copy, size)

    assert read_file(copy) == read_file(vdi)


def test_raw_export_sends_holes_as_zeros(tmp_path):
    vdi = sparse_vdi(tmp_path, 9 * MiB + 512, [(MiB, 4096), (9 * MiB, 512)])
    out = io.BytesIO()

    dataio.export_raw(out, vdi, 9 * MiB + 512)

    assert out.getvalue() == read_file(vdi)
