"""The zero-copy receive of plain raw imports (``splicein``), driven through dataio.

The body comes as the HTTP handler hands it over: a ``SocketBody`` whose
buffered reader has already read the "headers" and, with them, the first
body bytes; the rest is spliced from a real socket. Results are checked by
reading the VDI file back and by its allocated size.
"""

import os
import socket
import threading

import pytest

from dom0.simulator import dataio, splicein
from dom0.simulator.http_data import SocketBody
from tests.diskfiles import allocated_bytes, make_disk, read_file

MiB = 1 << 20
GRAIN = 64 << 10
HEADERS = b"PUT /import_raw_vdi HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\r\n"

pytestmark = pytest.mark.skipif(not splicein.AVAILABLE, reason="os.splice is Linux only")


@pytest.fixture
def body_after_headers():
    """Send headers + payload over a socket pair; returns a SocketBody past the headers."""
    opened = []

    def factory(payload):
        ours, theirs = socket.socketpair()

        def send():
            try:
                theirs.sendall(HEADERS + payload)
            except OSError:
                pass  # the reader gave up first, as the server does on a bad body
            finally:
                theirs.close()

        thread = threading.Thread(target=send)
        thread.start()
        rfile = ours.makefile("rb")
        while rfile.readline() not in (b"\r\n", b""):
            pass
        opened.append((rfile, ours, thread))
        return SocketBody(rfile, ours)

    yield factory
    for rfile, ours, thread in opened:
        rfile.close()
        ours.close()
        thread.join(10)


@pytest.fixture
def spliced(monkeypatch):
    """Records each splicein.receive call (the real one runs): (prefix length, size)."""
    calls = []
    real = splicein.receive

    def recording(sock, prefix, fd, vdi_path, size):
        calls.append((len(prefix), size))
        return real(sock, prefix, fd, vdi_path, size)

    monkeypatch.setattr(splicein, "receive", recording)
    return calls


def test_body_lands_whole_including_bytes_the_header_reader_had_buffered(
        tmp_path, body_after_headers, spliced):
    disk = os.urandom(100_000) + bytes(4 * MiB) + os.urandom(MiB)
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)

    written = dataio.import_raw(body_after_headers(disk), len(disk), vdi, 8 * MiB,
                                chunked=False)

    assert written == len(disk)
    assert read_file(vdi) == disk + bytes(8 * MiB - len(disk))
    [(prefix, size)] = spliced
    assert 0 < prefix < len(disk) and size == len(disk)  # both sources were used


def test_all_zero_grains_of_the_body_end_up_holes(tmp_path, body_after_headers, spliced):
    # Data in the first and last grain only; everything between is zeros.
    disk = os.urandom(GRAIN) + bytes(6 * MiB) + os.urandom(GRAIN)
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)

    dataio.import_raw(body_after_headers(disk), len(disk), vdi, 8 * MiB, chunked=False)

    assert read_file(vdi)[:len(disk)] == disk
    assert allocated_bytes(vdi) == 2 * GRAIN
    assert spliced


def test_import_over_old_data_leaves_zeros_where_the_body_has_zeros(
        tmp_path, body_after_headers, spliced):
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)
    with open(vdi, "r+b") as f:
        f.write(os.urandom(4 * MiB))
    disk = os.urandom(MiB) + bytes(3 * MiB)

    dataio.import_raw(body_after_headers(disk), len(disk), vdi, 4 * MiB, chunked=False)

    assert read_file(vdi) == disk
    assert allocated_bytes(vdi) == MiB
    assert spliced


def test_body_of_an_odd_size_ending_in_zeros_is_written_up_to_its_last_byte(
        tmp_path, body_after_headers):
    disk = os.urandom(3 * MiB + 100) + bytes(GRAIN + 7)
    vdi = make_disk(tmp_path / "vdi", len(disk))
    with open(vdi, "r+b") as f:
        f.write(b"\xff" * len(disk))  # old data that must not show through

    assert dataio.import_raw(body_after_headers(disk), len(disk), vdi, len(disk),
                             chunked=False) == len(disk)

    assert read_file(vdi) == disk


def test_empty_body_imports_nothing(tmp_path, body_after_headers):
    vdi = make_disk(tmp_path / "vdi", MiB)

    assert dataio.import_raw(body_after_headers(b""), 0, vdi, MiB, chunked=False) == 0
    assert allocated_bytes(vdi) == 0


def test_body_cut_short_fails_naming_the_bytes_received_and_a_fresh_vdi_stays_empty(
        tmp_path, body_after_headers, spliced):
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)

    with pytest.raises(dataio.ImportFailed,
                       match=r"connection closed after 5242880 of 8388608 body bytes"):
        dataio.import_raw(body_after_headers(os.urandom(5 * MiB)), 8 * MiB, vdi, 8 * MiB,
                          chunked=False)

    assert allocated_bytes(vdi) == 0
    assert spliced


def test_body_larger_than_the_vdi_is_refused_before_anything_is_written(
        tmp_path, body_after_headers, spliced):
    vdi = make_disk(tmp_path / "vdi", MiB)

    with pytest.raises(dataio.ImportFailed, match="larger than the VDI"):
        dataio.import_raw(body_after_headers(os.urandom(MiB + 512)), MiB + 512, vdi, MiB,
                          chunked=False)

    assert allocated_bytes(vdi) == 0
    assert not spliced


def test_disk_full_while_splicing_fails_the_import_and_empties_the_fresh_vdi(
        small_filesystem, body_after_headers, spliced):
    vdi = make_disk(small_filesystem / "vdi", 16 * MiB)

    with pytest.raises(dataio.ImportFailed, match="writing the VDI failed .*No space left"):
        dataio.import_raw(body_after_headers(os.urandom(8 * MiB)), 8 * MiB, vdi, 16 * MiB,
                          chunked=False)

    assert allocated_bytes(vdi) == 0
    assert spliced
