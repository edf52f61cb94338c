"""Reading a stream ahead in a thread, keeping only its non-zero blocks."""

import io
import os
import threading

import pytest

from agent import readahead
from rpc import exceptions

KiB = 1024
BLOCK = 64 * KiB


def collect(reader, size, buffer_bytes):
    """(runs, data) of every window handed over, in order."""
    seen = []
    with readahead.ReadAhead(reader, size, buffer_bytes) as windows:
        for w in windows:
            seen.append((list(w.runs), bytes(w.view[:w.length])))
            windows.release(w)
    return seen


def rebuild(seen, size):
    disk = bytearray(size)
    for runs, data in seen:
        position = 0
        for offset, length in runs:
            disk[offset:offset + length] = data[position:position + length]
            position += length
        assert position == len(data)
    return bytes(disk)


def test_dense_stream_comes_in_full_buffers_of_consecutive_bytes():
    data = os.urandom(10 * BLOCK)

    seen = collect(io.BytesIO(data), len(data), 4 * BLOCK)

    assert [runs for runs, _ in seen] == [[(0, 4 * BLOCK)], [(4 * BLOCK, 4 * BLOCK)],
                                          [(8 * BLOCK, 2 * BLOCK)]]
    assert b"".join(chunk for _, chunk in seen) == data


def test_zero_blocks_are_dropped_and_data_blocks_packed_back_to_back():
    size = 40 * BLOCK + 100                      # a short last block
    disk = bytearray(size)
    disk[5] = 1                                  # block 0
    disk[BLOCK + 9] = 2                          # block 1: merges with block 0
    disk[7 * BLOCK] = 3                          # block 7 alone
    disk[33 * BLOCK + BLOCK - 1] = 4             # the last byte of block 33
    disk[-1] = 5                                 # the short block

    seen = collect(io.BytesIO(bytes(disk)), size, 2 * readahead.PIECE_BYTES)

    runs = [run for window_runs, _ in seen for run in window_runs]
    assert runs == [(0, 2 * BLOCK), (7 * BLOCK, BLOCK), (33 * BLOCK, BLOCK),
                    (40 * BLOCK, 100)]
    assert len(seen) == 1                        # 4 blocks and a bit fit one buffer
    assert rebuild(seen, size) == bytes(disk)


def test_sparse_data_fills_buffers_whatever_the_stream_size():
    size = 512 * BLOCK
    disk = bytearray(size)
    for index in range(0, 512, 8):               # one data block in eight
        disk[index * BLOCK:(index + 1) * BLOCK] = os.urandom(BLOCK)

    seen = collect(io.BytesIO(bytes(disk)), size, 32 * BLOCK)

    assert [len(data) for _, data in seen] == [32 * BLOCK, 32 * BLOCK]
    assert rebuild(seen, size) == bytes(disk)


def test_an_all_zero_stream_gives_no_windows_but_is_read_to_the_end():
    reader = io.BytesIO(bytes(64 * BLOCK))

    assert collect(reader, 64 * BLOCK, 16 * BLOCK) == []
    assert reader.tell() == 64 * BLOCK


def test_progress_counts_every_stream_byte_read():
    class Count:
        done = 0

        def advance(self, n):
            self.done += n

    count = Count()
    size = 3 * readahead.PIECE_BYTES + 5
    with readahead.ReadAhead(io.BytesIO(bytes(size)), size, 2 * readahead.PIECE_BYTES,
                             count) as windows:
        assert list(windows) == []

    assert count.done == size


def test_readers_with_only_read_work_too():
    class ReadOnly:
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def read(self, n):
            return self.inner.read(min(n, 100))

    seen = collect(ReadOnly(b"x" * 1000), 1000, BLOCK)

    assert seen == [([(0, 1000)], b"x" * 1000)]


def test_a_short_stream_raises_in_the_consumer():
    with pytest.raises(exceptions.DiskOperationFailed, match="ended after 3000 of 5000"):
        collect(io.BytesIO(b"a" * 3000), 5000, BLOCK)


def test_a_reader_error_reaches_the_consumer_and_the_thread_ends():
    class Broken:
        def readinto(self, view):
            raise exceptions.ImageFetchFailed(image_id="img", reason="cut")

    before = threading.active_count()
    with pytest.raises(exceptions.ImageFetchFailed, match="cut"):
        collect(Broken(), 4 * BLOCK, BLOCK)

    assert threading.active_count() == before


def test_leaving_early_stops_the_thread():
    reader = io.BytesIO(b"z" * (100 * BLOCK))
    with readahead.ReadAhead(reader, 100 * BLOCK, 10 * BLOCK) as windows:
        thread = windows._thread
        next(iter(windows))

    assert not thread.is_alive()
    assert reader.tell() <= 21 * BLOCK           # the two buffers and one piece at most


def test_an_empty_stream_gives_no_windows():
    assert collect(io.BytesIO(b""), 0, 4 * BLOCK) == []


def test_buffers_must_hold_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 65536"):
        readahead.ReadAhead(io.BytesIO(b""), 0, BLOCK + 1)


class CheckedStream(io.BytesIO):
    """A download that hands its checksum over, as agent.images.ImageReader does."""

    def __init__(self, data, expected_hex):
        super().__init__(data)
        self.expected_hex = expected_hex
        self.verified = []

    def hash_elsewhere(self):
        import hashlib

        def verify(read_hex):
            self.verified.append(read_hex)
            if read_hex != self.expected_hex:
                raise exceptions.ImageFetchFailed(image_id="img", reason="mismatch")
        return hashlib.sha512(), verify


def _mixed_stream(size):
    disk = bytearray(size)
    for index in range(0, size // BLOCK, 3):     # every third block holds data
        disk[index * BLOCK:index * BLOCK + 100] = os.urandom(100)
    disk[-7:] = b"tail!!!"
    return bytes(disk)


def test_a_checked_stream_is_hashed_from_the_windows_across_reuses():
    import hashlib
    data = _mixed_stream(8 * readahead.PIECE_BYTES + 3 * BLOCK + 7)
    stream = CheckedStream(data, hashlib.sha512(data).hexdigest())
    # Windows of two pieces: each is refilled several times while hashing.
    seen = collect(stream, len(data), 2 * readahead.PIECE_BYTES)
    assert stream.verified == [hashlib.sha512(data).hexdigest()]
    assert rebuild(seen, len(data)) == data


def test_a_checked_stream_that_does_not_match_fails_before_its_last_window():
    data = _mixed_stream(4 * readahead.PIECE_BYTES)
    stream = CheckedStream(data, "0" * 128)
    handed = []
    with pytest.raises(exceptions.ImageFetchFailed):
        with readahead.ReadAhead(stream, len(data), readahead.PIECE_BYTES) as windows:
            for w in windows:
                handed.append(list(w.runs))
                windows.release(w)
    # The window holding the stream's end was never handed over.
    assert all(offset + length < len(data) for runs in handed for offset, length in runs)
