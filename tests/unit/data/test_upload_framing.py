"""What the uploader sends: zero detection and XAPI's sparse chunked framing.

The framing is decoded here from REFERENCE's description (little-endian
uint64 offset, uint32 length, data; a 0/0 header ends it).
"""

import os
import struct

from agent import upload

KiB = 1024
MiB = 1024 * KiB


def decode_chunked(body):
    frames, pos = [], 0
    while True:
        offset, length = struct.unpack_from("<QI", body, pos)
        pos += 12
        if offset == 0 and length == 0:
            assert pos == len(body), "bytes after the terminator"
            return frames
        frames.append((offset, body[pos:pos + length]))
        pos += length


def apply_frames(frames, size):
    disk = bytearray(size)
    for offset, data in frames:
        disk[offset:offset + len(data)] = data
    return bytes(disk)


def body_of(pieces):
    return b"".join(bytes(buf) for buffers in pieces for buf in buffers)


def test_zero_blocks_split_runs_and_neighbours_merge():
    buffer = bytearray(6 * 64 * KiB)
    buffer[5] = 1                      # block 0
    buffer[64 * KiB + 9] = 1           # block 1, merges with block 0
    buffer[4 * 64 * KiB] = 1           # block 4 alone
    runs = upload.nonzero_runs(buffer, len(buffer), base_offset=1000)

    assert runs == [(1000, 128 * KiB), (1000 + 256 * KiB, 64 * KiB)]


def test_a_short_last_block_is_kept_with_its_exact_length():
    buffer = bytearray(64 * KiB + 100)
    buffer[-1] = 7

    assert upload.nonzero_runs(buffer, len(buffer)) == [(64 * KiB, 100)]


def test_file_runs_skip_holes_and_written_zeros(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.write(bytes(8 * MiB))                     # allocated, but zeros
        f.seek(10 * MiB + 3)
        f.write(b"abc")
        f.seek(20 * MiB)
        f.write(os.urandom(5 * MiB))                # spans PIECE_BYTES reads
    with open(path, "rb") as f:
        runs = upload.file_data_runs(f.fileno(), 64 * MiB)

    assert list(runs) == [10 * MiB, 64 * KiB, 20 * MiB, 5 * MiB]


def test_data_extents_sharing_a_block_give_one_run(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.truncate(MiB)
        f.write(b"a")                      # extent at 0
        f.seek(40 * KiB)
        f.write(b"b")                      # another extent, same 64 KiB block
        f.seek(64 * KiB + 60 * KiB)
        f.write(b"c")                      # the next block
    with open(path, "rb") as f:
        runs = upload.file_data_runs(f.fileno(), MiB)

    assert list(runs) == [0, 128 * KiB]


def test_a_block_that_is_zero_only_at_its_start_is_data(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.write(bytes(64 * KiB - 1) + b"z")
    with open(path, "rb") as f:
        assert list(upload.file_data_runs(f.fileno(), 64 * KiB)) == [0, 64 * KiB]


def test_file_body_frames_rebuild_the_file(tmp_path):
    path = tmp_path / "d.raw"
    content = bytearray(12 * MiB + 512)
    content[100:200] = os.urandom(100)
    content[3 * MiB:9 * MiB] = os.urandom(6 * MiB)
    content[-512:] = os.urandom(512)
    path.write_bytes(content)
    with open(path, "rb") as f:
        flat = upload.file_data_runs(f.fileno(), len(content))
    runs = list(zip(flat[::2], flat[1::2], strict=True))

    body = body_of(upload._file_pieces(str(path), runs, framed=True))

    assert len(body) == upload.chunked_length(runs)
    frames = decode_chunked(body)
    assert max(len(data) for _, data in frames) <= upload.PIECE_BYTES
    assert apply_frames(frames, len(content)) == bytes(content)


def test_window_frames_carry_stream_offsets():
    window = bytearray(2 * MiB)
    window[MiB:MiB + 4] = b"data"
    view = memoryview(window)
    runs = upload.nonzero_runs(window, len(window), base_offset=64 * MiB)

    body = body_of(upload._frames(view, 64 * MiB, runs))

    assert len(body) == upload.chunked_length(runs)
    assert decode_chunked(body) == [(65 * MiB, b"data" + bytes(64 * KiB - 4))]


def test_a_batch_packs_runs_back_to_back_and_merges_neighbours():
    batch = upload._Batch(256 * KiB)
    batch.add(10 * MiB, memoryview(b"a" * (64 * KiB)))
    batch.add(10 * MiB + 64 * KiB, memoryview(b"b" * (64 * KiB)))
    batch.add(30 * MiB, memoryview(b"c" * 100))

    runs, pieces = batch.take()

    assert runs == [(10 * MiB, 128 * KiB), (30 * MiB, 100)]
    assert decode_chunked(body_of(pieces)) == [
        (10 * MiB, b"a" * (64 * KiB) + b"b" * (64 * KiB)), (30 * MiB, b"c" * 100)]
    assert batch.free == 256 * KiB


def test_progress_reports_done_and_total_to_the_callback():
    seen = []
    progress = upload.Progress("test", 300, lambda done, total: seen.append((done, total)))

    progress.advance(100)
    progress.advance(200)

    assert seen == [(100, 300), (300, 300)]
    assert "300 of 300 bytes (100.0%)" in progress.summary()


def test_progress_logs_bytes_percent_and_rate_once_per_interval(caplog):
    caplog.set_level("INFO", logger="agent.vdi_import")
    progress = upload.Progress("upload of disk.raw", 4 * MiB, interval=1e-9)
    quiet = upload.Progress("upload of disk.raw", 4 * MiB, interval=3600)

    progress.advance(MiB)
    quiet.advance(MiB)

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "upload of disk.raw: 1048576 of 4194304 bytes (25.0%)" in lines[0]
    assert "MB/s" in lines[0]
