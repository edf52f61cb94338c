"""The zero-copy receive of raw imports (``splicein``), driven through dataio.

The body comes as the HTTP handler hands it over: a ``SocketBody`` whose
buffered reader has already read the "headers" and, with them, the first
body bytes; the rest is spliced from a real socket. Results are checked by
reading the VDI file back, by its allocated size and by where its holes are.
Plain bodies come first, then XAPI's chunked framing.
"""

import errno
import os
import re
import socket
import struct
import threading
import time

import pytest

from dom0.simulator import dataio, splicein
from dom0.simulator.http_data import SocketBody
from tests.diskfiles import allocated_bytes, make_disk, read_file

MiB = 1 << 20
GRAIN = 64 << 10
HEADERS = b"PUT /import_raw_vdi HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\r\n"

pytestmark = pytest.mark.skipif(not splicein.AVAILABLE, reason="os.splice is Linux only")


def tcp_pair():
    """A connected loopback TCP pair: (server side, client side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server, client


@pytest.fixture
def body_after_headers():
    """Send headers + payload over loopback TCP; returns a SocketBody past the headers.

    Further pieces are sent after a pause each, so the receiver sees them in
    separate reads (a chunk header cut in two, say).
    """
    opened = []

    def factory(payload, *pieces):
        ours, theirs = tcp_pair()

        def send():
            try:
                theirs.sendall(HEADERS + payload)
                for piece in pieces:
                    time.sleep(0.1)
                    theirs.sendall(piece)
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
    """Records each Receiver.receive call (the real one runs): (prefix length, offset, size)."""
    calls = []
    real = splicein.Receiver.receive

    def recording(self, prefix, offset, size):
        calls.append((len(prefix), offset, size))
        return real(self, prefix, offset, size)

    monkeypatch.setattr(splicein.Receiver, "receive", recording)
    return calls


def test_body_lands_whole_including_bytes_the_header_reader_had_buffered(
        tmp_path, body_after_headers, spliced):
    disk = os.urandom(100_000) + bytes(4 * MiB) + os.urandom(MiB)
    vdi = make_disk(tmp_path / "vdi", 8 * MiB)

    written = dataio.import_raw(body_after_headers(disk), len(disk), vdi, 8 * MiB,
                                chunked=False)

    assert written == len(disk)
    assert read_file(vdi) == disk + bytes(8 * MiB - len(disk))
    [(prefix, offset, size)] = spliced
    assert 0 < prefix < len(disk) and offset == 0 and size == len(disk)  # both sources used


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


# -- chunked: XAPI's sparse framing -------------------------------------------------


def chunk(offset, data):
    return struct.pack("<QI", offset, len(data)) + data


END = struct.pack("<QI", 0, 0)


@pytest.fixture
def only_spliced(monkeypatch, spliced):
    """The buffered path fails if used; returns the recorded splices (see ``spliced``)."""

    class NoWriteBehind:
        def __init__(self, target):
            raise AssertionError("the buffered path was used")

    monkeypatch.setattr(dataio, "_WriteBehind", NoWriteBehind)
    return spliced


def data_grains(path):
    """Indices of the 64 KiB grains of the file that hold any allocated byte."""
    grains = set()
    with open(path, "rb") as f:
        fd, size, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                break  # no data past offset
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            grains.update(range(start // GRAIN, -(-offset // GRAIN)))
    return grains


def grains_with_bytes(content):
    """Indices of the grains of ``content`` that hold a non-zero byte."""
    grains = (content[start:start + GRAIN] for start in range(0, len(content), GRAIN))
    return {i for i, grain in enumerate(grains) if grain.count(0) != len(grain)}


def applied(old, *chunks):
    disk = bytearray(old)
    for offset, data in chunks:
        disk[offset:offset + len(data)] = data
    return bytes(disk)


def old_disk(path, size):
    old = os.urandom(size)
    make_disk(path, size, [(0, old)])
    return old


# Chunks at grain boundaries and off them, some with all-zero grains, one
# larger than the pipe, one of length 0 (not the terminator), one tiny.
MIXED = [
    (MiB, os.urandom(GRAIN) + bytes(2 * GRAIN) + os.urandom(GRAIN)),
    (5 * MiB + 1000, os.urandom(GRAIN - 1000) + bytes(2 * GRAIN) + os.urandom(500)),
    (7 * MiB + 4096, bytes(2 * GRAIN)),
    (9 * MiB + 512, os.urandom(3 * MiB)),
    (12 * MiB, b""),
    (13 * MiB + 100, os.urandom(10)),
]
MIXED_BODY = b"".join(chunk(offset, data) for offset, data in MIXED) + END
# The grains wholly inside a chunk and all zeros: they must end up holes.
MIXED_ZERO_GRAINS = {MiB // GRAIN + 1, MiB // GRAIN + 2, 5 * MiB // GRAIN + 1,
                     5 * MiB // GRAIN + 2, 7 * MiB // GRAIN + 1}


def test_chunks_land_at_their_offsets_and_zero_grains_stay_holes(
        tmp_path, body_after_headers, only_spliced):
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)

    written = dataio.import_raw(body_after_headers(MIXED_BODY), len(MIXED_BODY), vdi,
                                16 * MiB, chunked=True)

    assert written == sum(len(data) for _, data in MIXED)
    expected = applied(bytes(16 * MiB), *MIXED)
    assert read_file(vdi) == expected
    assert data_grains(vdi) == grains_with_bytes(expected)
    assert [(offset, size) for _, offset, size in only_spliced] == [
        (offset, len(data)) for offset, data in MIXED]


def test_chunks_over_old_data_punch_only_zero_grains_wholly_inside_a_chunk(
        tmp_path, body_after_headers, only_spliced):
    old = old_disk(tmp_path / "vdi", 16 * MiB)
    vdi = str(tmp_path / "vdi")

    dataio.import_raw(body_after_headers(MIXED_BODY), len(MIXED_BODY), vdi, 16 * MiB,
                      chunked=True)

    # Old bytes around each chunk, in the grains it covers only in part, are kept.
    assert read_file(vdi) == applied(old, *MIXED)
    assert data_grains(vdi) == set(range(16 * MiB // GRAIN)) - MIXED_ZERO_GRAINS


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "old-data"])
def test_spliced_and_buffered_chunked_imports_leave_the_same_disk(
        tmp_path, body_after_headers, monkeypatch, spliced, fresh):
    results, splices = [], []
    for name in ("spliced", "buffered"):
        vdi = str(tmp_path / name)
        if fresh:
            make_disk(vdi, 16 * MiB)
        else:
            make_disk(vdi, 16 * MiB, [(0, b"\xa5" * 16 * MiB)])
        if name == "buffered":
            monkeypatch.setattr(splicein, "usable", lambda body: False)
        written = dataio.import_raw(body_after_headers(MIXED_BODY), len(MIXED_BODY), vdi,
                                    16 * MiB, chunked=True)
        results.append((written, read_file(vdi), data_grains(vdi)))
        splices.append(len(spliced))

    assert results[0] == results[1]
    assert splices == [len(MIXED), len(MIXED)]  # the second import spliced nothing


def test_chunk_headers_split_across_reads_and_partly_buffered_are_read_whole(
        tmp_path, body_after_headers, only_spliced):
    first, second = os.urandom(300_000), os.urandom(70_000)
    body = chunk(GRAIN, first) + chunk(3 * MiB + 10, second) + END
    cut1 = 5  # the HTTP layer's buffer holds 5 bytes of the first header
    cut2 = 12 + 1000
    cut3 = 12 + len(first) + 7  # 7 bytes of the second header, then the rest
    cut4 = len(body) - 3  # the terminating chunk in two
    rfile = body_after_headers(body[:cut1], body[cut1:cut2], body[cut2:cut3],
                               body[cut3:cut4], body[cut4:])
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)

    written = dataio.import_raw(rfile, len(body), vdi, 4 * MiB, chunked=True)

    assert written == len(first) + len(second)
    assert read_file(vdi) == applied(bytes(4 * MiB), (GRAIN, first), (3 * MiB + 10, second))
    assert [(offset, size) for _, offset, size in only_spliced] == [
        (GRAIN, len(first)), (3 * MiB + 10, len(second))]


def test_small_chunks_the_http_layer_had_buffered_are_written_from_its_buffer(
        tmp_path, body_after_headers, only_spliced):
    body = chunk(100, b"a" * 100) + chunk(3 * GRAIN + 5, b"b" * 200) + END
    vdi = make_disk(tmp_path / "vdi", MiB)

    assert dataio.import_raw(body_after_headers(body), len(body), vdi, MiB,
                             chunked=True) == 300

    assert read_file(vdi) == applied(bytes(MiB), (100, b"a" * 100), (3 * GRAIN + 5, b"b" * 200))
    # Headers and data all came in with the HTTP headers: nothing from the socket.
    assert only_spliced == [(100, 100, 100), (200, 3 * GRAIN + 5, 200)]


def test_chunked_body_without_content_length_ends_at_its_terminating_chunk(
        tmp_path, body_after_headers, only_spliced):
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)

    written = dataio.import_raw(body_after_headers(MIXED_BODY), None, vdi, 16 * MiB,
                                chunked=True)

    assert written == sum(len(data) for _, data in MIXED)
    assert read_file(vdi) == applied(bytes(16 * MiB), *MIXED)
    assert len(only_spliced) == len(MIXED)


def test_zero_length_chunks_write_nothing_but_one_past_the_vdi_end_is_refused(
        tmp_path, body_after_headers, only_spliced):
    data = os.urandom(5000)
    body = chunk(4096, b"") + chunk(MiB, b"") + chunk(GRAIN, data) + END
    vdi = make_disk(tmp_path / "vdi", MiB)

    assert dataio.import_raw(body_after_headers(body), len(body), vdi, MiB,
                             chunked=True) == len(data)
    assert read_file(vdi) == applied(bytes(MiB), (GRAIN, data))

    body = chunk(GRAIN, data) + chunk(MiB + 1, b"") + END
    with pytest.raises(dataio.ImportFailed, match=re.escape(
            "chunk at offset 1048577 of 0 bytes passes the VDI's end (1048576)")):
        dataio.import_raw(body_after_headers(body), len(body), vdi, MiB, chunked=True)


def test_chunk_passing_the_vdi_end_fails_before_any_of_it_is_written(
        tmp_path, body_after_headers, only_spliced):
    old = old_disk(tmp_path / "vdi", 4 * MiB)
    vdi = str(tmp_path / "vdi")
    first = os.urandom(4096)
    body = chunk(0, first) + chunk(4 * MiB - 100, os.urandom(200)) + END

    with pytest.raises(dataio.ImportFailed, match=re.escape(
            "chunk at offset 4194204 of 200 bytes passes the VDI's end (4194304)")):
        dataio.import_raw(body_after_headers(body), len(body), vdi, 4 * MiB, chunked=True)

    # The chunk before it landed (the VDI held data, so nothing is undone); the
    # last 100 bytes, which the refused chunk would have overwritten, did not change.
    assert read_file(vdi) == applied(old, (0, first))
    assert [offset for _, offset, _ in only_spliced] == [0]


def test_chunk_passing_the_vdi_end_leaves_a_fresh_vdi_empty(
        tmp_path, body_after_headers, only_spliced):
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)
    body = chunk(0, os.urandom(MiB)) + chunk(3 * MiB, os.urandom(MiB + 1)) + END

    with pytest.raises(dataio.ImportFailed, match="passes the VDI's end"):
        dataio.import_raw(body_after_headers(body), len(body), vdi, 4 * MiB, chunked=True)

    assert allocated_bytes(vdi) == 0
    assert only_spliced  # the first chunk had been written, then undone


@pytest.mark.parametrize("body, message", [
    (chunk(0, b"abc") + b"\x00" * 5,
     "truncated chunk header: 5 bytes left, a header has 12"),
    (chunk(0, b"abc") + struct.pack("<QI", 4096, 100) + b"x" * 10,
     "chunk at offset 4096 declares 100 bytes, the body has 10 left"),
    (chunk(0, b"abc"),
     "the chunk stream ends without its terminating chunk (offset 0, length 0)"),
    (chunk(0, os.urandom(2 * MiB)) + END + b"junk",
     "4 bytes follow the terminating chunk"),
    (b"", "the chunk stream ends without its terminating chunk"),
], ids=["truncated-header", "truncated-data", "no-terminator", "trailing", "empty"])
def test_malformed_chunk_stream_fails_and_a_fresh_vdi_stays_empty(
        tmp_path, body_after_headers, only_spliced, body, message):
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)

    with pytest.raises(dataio.ImportFailed, match=re.escape(message)):
        dataio.import_raw(body_after_headers(body), len(body), vdi, 16 * MiB, chunked=True)

    assert allocated_bytes(vdi) == 0
    assert os.path.getsize(vdi) == 16 * MiB


@pytest.mark.parametrize("length, words", [
    (True, "connection closed after 1048581 of 2097176 body bytes"),
    (None, "connection closed after 1048581 body bytes"),
], ids=["content-length", "no-content-length"])
def test_stream_cut_mid_chunk_names_the_bytes_received_and_a_fresh_vdi_stays_empty(
        tmp_path, body_after_headers, only_spliced, length, words):
    body = chunk(0, os.urandom(2 * MiB)) + END  # 2097176 bytes
    vdi = make_disk(tmp_path / "vdi", 16 * MiB)

    with pytest.raises(dataio.ImportFailed, match=re.escape(words) + "$"):
        dataio.import_raw(body_after_headers(body[:MiB + 5]), length and len(body), vdi,
                          16 * MiB, chunked=True)

    assert allocated_bytes(vdi) == 0
    assert only_spliced


def test_stream_cut_inside_a_header_split_across_sends_names_the_bytes_received(
        tmp_path, body_after_headers, only_spliced):
    data = os.urandom(100_000)
    body = chunk(0, data) + chunk(MiB, data) + END
    sent = 12 + len(data) + 9  # 9 of the second header's 12 bytes, in two sends
    vdi = make_disk(tmp_path / "vdi", 4 * MiB)

    with pytest.raises(dataio.ImportFailed, match=re.escape(
            "connection closed after %d of %d body bytes" % (sent, len(body)))):
        dataio.import_raw(body_after_headers(body[:sent - 9], body[sent - 9:sent - 4],
                                             body[sent - 4:sent]),
                          len(body), vdi, 4 * MiB, chunked=True)

    assert allocated_bytes(vdi) == 0
    assert [offset for _, offset, _ in only_spliced] == [0]


def test_disk_full_while_splicing_a_chunk_names_the_offset_and_empties_the_fresh_vdi(
        small_filesystem, body_after_headers, only_spliced):
    vdi = make_disk(small_filesystem / "vdi", 16 * MiB)
    body = chunk(4 * MiB, os.urandom(8 * MiB)) + END

    with pytest.raises(dataio.ImportFailed,
                       match=r"writing the VDI failed at offset (\d+): .*No space left") as e:
        dataio.import_raw(body_after_headers(body), len(body), vdi, 16 * MiB, chunked=True)

    offset = int(re.search(r"offset (\d+)", str(e.value)).group(1))
    assert 4 * MiB <= offset <= 5 * MiB  # the chunk starts at 4 MiB; the tmpfs holds 1 MiB
    assert allocated_bytes(vdi) == 0
    assert only_spliced
