"""What the uploader sends: zero detection and XAPI's sparse chunked framing.

The framing is decoded here from REFERENCE's description (little-endian
uint64 offset, uint32 length, data; a 0/0 header ends it).
"""

import io
import os
import random
import struct

import pytest

from agent import upload
from rpc import exceptions

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


class _Counted:
    done = 0

    def advance(self, count):
        self.done += count


def file_data_runs(path, file_size, window_bytes=1 << 40):
    """Runs of the file's data as the uploader finds them, windows flattened
    (neighbouring runs of two windows stay apart) as [offset, length, ...]."""
    flat, counted = [], _Counted()
    with open(path, "rb", buffering=0) as f, \
            upload._FileWindows(f.fileno(), file_size, window_bytes, counted) as windows:
        for window in windows:
            assert window.length == sum(length for _, length in window.runs)
            for run in window.runs:
                flat.extend(run)
            windows.release(window)
    assert counted.done == file_size  # every byte was scanned once
    return flat


def body_of(pieces):
    return b"".join(bytes(buf) for buffers in pieces for buf in buffers)


def test_file_runs_skip_holes_and_written_zeros(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.write(bytes(8 * MiB))                     # allocated, but zeros
        f.seek(10 * MiB + 3)
        f.write(b"abc")
        f.seek(20 * MiB)
        f.write(os.urandom(5 * MiB))                # spans PIECE_BYTES reads
    runs = file_data_runs(path, 64 * MiB)

    assert runs == [10 * MiB, 64 * KiB, 20 * MiB, 5 * MiB]


def test_data_extents_sharing_a_block_give_one_run(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.truncate(MiB)
        f.write(b"a")                      # extent at 0
        f.seek(40 * KiB)
        f.write(b"b")                      # another extent, same 64 KiB block
        f.seek(64 * KiB + 60 * KiB)
        f.write(b"c")                      # the next block
    runs = file_data_runs(path, MiB)

    assert runs == [0, 128 * KiB]


def test_a_block_that_is_zero_only_at_its_start_is_data(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.write(bytes(64 * KiB - 1) + b"z")
    assert file_data_runs(path, 64 * KiB) == [0, 64 * KiB]


def test_file_windows_hold_at_most_a_window_of_data_each(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.truncate(40 * MiB)
        f.write(os.urandom(5 * MiB))
        f.seek(30 * MiB)
        f.write(os.urandom(3 * MiB + 5))
    windows = []
    with open(path, "rb", buffering=0) as f, \
            upload._FileWindows(f.fileno(), 40 * MiB, 2 * MiB, _Counted()) as ahead:
        for window in ahead:
            windows.append(list(window.runs))
            ahead.release(window)

    assert [sum(length for _, length in runs) for runs in windows] == \
        [2 * MiB, 2 * MiB, 2 * MiB, 2 * MiB, 64 * KiB]  # windows fill across runs
    merged = file_data_runs(path, 40 * MiB)
    assert merged == [0, 5 * MiB, 30 * MiB, 3 * MiB + 64 * KiB]


def test_file_windows_double_up_to_the_largest(tmp_path):
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.write(os.urandom(9 * MiB))
        f.seek(20 * MiB)
        f.write(os.urandom(11 * MiB))
    sizes = []
    with open(path, "rb", buffering=0) as f, \
            upload._FileWindows(f.fileno(), 31 * MiB, MiB, _Counted(),
                                largest_bytes=4 * MiB) as ahead:
        for window in ahead:
            sizes.append(window.length)
            ahead.release(window)

    # 1, 2, 4, then 4 MiB each: 20 MiB of data in seven windows, not twenty.
    assert sizes == [MiB, 2 * MiB, 4 * MiB, 4 * MiB, 4 * MiB, 4 * MiB, MiB]


def test_file_body_frames_rebuild_the_file(tmp_path):
    path = tmp_path / "d.raw"
    content = bytearray(12 * MiB + 512)
    content[100:200] = os.urandom(100)
    content[3 * MiB:9 * MiB] = os.urandom(6 * MiB)
    content[-512:] = os.urandom(512)
    path.write_bytes(content)
    flat = file_data_runs(path, len(content))
    runs = list(zip(flat[::2], flat[1::2], strict=True))

    with open(path, "rb", buffering=0) as f:
        body = body_of(upload._framed_ranges(f, str(path), runs))

    assert len(body) == upload.chunked_length(runs)
    frames = decode_chunked(body)
    assert max(len(data) for _, data in frames) <= upload.PIECE_BYTES
    assert apply_frames(frames, len(content)) == bytes(content)


# -- a stream's PUTs, recorded instead of sent (the functional tests send them
# to the simulator; here every layout and PUT length can be tried quickly)

class _RecordedPut:
    def __init__(self, length):
        self.length = length
        self.body = bytearray()
        self.finished = self.abandoned = False

    broken = False

    def send(self, pieces, progress):
        for parts in pieces:
            for part in parts:
                self.body += bytes(part)
                progress.advance(len(part))

    def finish(self):
        assert len(self.body) == self.length, "body differs from its Content-Length"
        self.finished = True

    def abandon(self):
        self.abandoned = True


def stream_through_puts(content, buffer_bytes, first, largest):
    """The PUTs (recorded) that upload a stream of ``content``."""
    puts = []

    def open_put(length, on_broken=None):
        puts.append(_RecordedPut(length))
        return puts[-1]

    sender = upload._send_stream(io.BytesIO(content), len(content), buffer_bytes, open_put,
                                 first, largest)
    assert sender.puts == len(puts)
    assert sender.sent_bytes == sum(put.length for put in puts)
    return puts


def random_disk(rng, size):
    """Blocks of data and zeros, a run of small data now and then, an odd tail."""
    disk = bytearray(size)
    offset = 0
    while offset < size:
        length = min(rng.choice([1, 7, 13, 64 * KiB, 3 * 64 * KiB, 200 * KiB]),
                     size - offset)
        if rng.random() < 0.45:
            disk[offset:offset + length] = rng.randbytes(length).replace(b"\0", b"x")
        offset += length
    return bytes(disk)


@pytest.mark.parametrize("seed", range(120))
def test_stream_puts_land_the_stream_whatever_their_lengths(seed):
    rng = random.Random(seed)
    size = rng.choice([1, 13, 64 * KiB + rng.randrange(1, 40), rng.randrange(1, 2 * MiB)])
    content = random_disk(rng, size)
    first = rng.choice([13, 14, 25, 26, 37, 100, 64 * KiB + 11, 300 * KiB, 4 * MiB])

    puts = stream_through_puts(content, 128 * KiB, first, 4 * first)

    frames = []
    for put in puts:
        assert put.finished and not put.abandoned
        frames += decode_chunked(put.body)   # each body ends right at its terminator
    assert apply_frames(frames, size) == content
    # Only the 64 KiB blocks that hold data are sent, with their headers,
    # and zeros to fill the last PUT: never more than one PUT's length more.
    blocks = range(0, size, 64 * KiB)
    kept = sum(len(content[b:b + 64 * KiB]) for b in blocks if any(content[b:b + 64 * KiB]))
    assert sum(len(put.body) for put in puts) <= \
        kept + 12 * (len(frames) + len(puts)) + max([0] + [put.length for put in puts])


@pytest.mark.parametrize("tail", [1, 5, 12, 13])
@pytest.mark.parametrize("before", ["data", "zeros"])
def test_a_last_block_shorter_than_a_frame_keeps_the_bytes_before_it(tail, before):
    # The stream's last, partial block, alone in its buffer: sent with the
    # bytes before it, which are the previous buffer's data or zeros.
    block = 64 * KiB
    content = os.urandom(2 * block) + (os.urandom(block) if before == "data"
                                       else bytes(block)) + os.urandom(tail)
    for first in (13, 14, 20, 25, 26, 31, 40, block + 11, 4 * block):
        puts = stream_through_puts(content, block, first, 4 * first)
        frames = [frame for put in puts for frame in decode_chunked(put.body)]
        assert apply_frames(frames, len(content)) == content, first


def test_stream_puts_grow_and_do_not_follow_the_buffers():
    content = os.urandom(20 * MiB)

    puts = stream_through_puts(content, upload.PIECE_BYTES, upload.PIECE_BYTES,
                               16 * MiB)

    # 4 MiB, 8 MiB, then the rest exactly (and each PUT's end frame): three
    # PUTs for five buffers of data; a dense stream leaves nothing to pad.
    assert [put.length for put in puts[:2]] == [4 * MiB + 12, 8 * MiB + 12]
    assert len(puts) == 3
    frames = [frame for put in puts for frame in decode_chunked(put.body)]
    assert all(any(data) for _, data in frames)
    assert apply_frames(frames, len(content)) == content


def test_a_stream_of_zeros_takes_no_put():
    assert stream_through_puts(bytes(3 * MiB + 5), 1 * MiB, MiB, MiB) == []


def test_a_put_the_stream_cannot_fill_is_completed_with_zeros_over_its_zeros():
    # 100 KiB of data, then 2 MiB of zeros: the only PUT takes 1 MiB, the
    # stream ends first, and the rest of it is zeros over the zero range.
    content = os.urandom(100 * KiB) + bytes(2 * MiB)

    [put] = stream_through_puts(content, 1 * MiB, MiB, MiB)

    assert put.length == MiB + 12
    frames = decode_chunked(put.body)
    assert apply_frames(frames, len(content)) == content
    assert all(offset >= 128 * KiB for offset, data in frames if not any(data))


def test_a_failing_put_stops_the_stream_and_is_raised():
    failure = exceptions.XapiFailure(details=["VDI_IO_ERROR", "full"])

    class FailingPut(_RecordedPut):
        def finish(self):
            raise failure

    opened = []

    def open_put(length, on_broken=None):
        opened.append(FailingPut(length))
        return opened[-1]

    content = os.urandom(8 * MiB)
    with pytest.raises(exceptions.XapiFailure) as raised:
        upload._send_stream(io.BytesIO(content), len(content), MiB, open_put, MiB, MiB)
    assert raised.value is failure
    assert len(opened) < 8          # stopped, not every PUT tried


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
