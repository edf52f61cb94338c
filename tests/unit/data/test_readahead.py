"""Reading a stream one window ahead in a thread."""

import io
import threading

import pytest

from agent import readahead
from rpc import exceptions


def collect(reader, size, window):
    seen = []
    with readahead.ReadAhead(reader, size, window) as windows:
        for w in windows:
            seen.append((w.offset, bytes(w.view[:w.length])))
            windows.release(w)
    return seen


def test_windows_cover_the_stream_in_order():
    data = bytes(range(256)) * 40

    seen = collect(io.BytesIO(data), len(data), 4096)

    assert [offset for offset, _ in seen] == [0, 4096, 8192]
    assert b"".join(chunk for _, chunk in seen) == data


def test_readers_with_only_read_work_too():
    class ReadOnly:
        def __init__(self, data):
            self.inner = io.BytesIO(data)

        def read(self, n):
            return self.inner.read(min(n, 100))

    seen = collect(ReadOnly(b"x" * 1000), 1000, 512)

    assert b"".join(chunk for _, chunk in seen) == b"x" * 1000


def test_a_short_stream_raises_in_the_consumer():
    with pytest.raises(exceptions.DiskOperationFailed, match="ended after 3000 of 5000"):
        collect(io.BytesIO(b"a" * 3000), 5000, 1024)


def test_a_reader_error_reaches_the_consumer_and_the_thread_ends():
    class Broken:
        def readinto(self, view):
            raise exceptions.ImageFetchFailed(image_id="img", reason="cut")

    before = threading.active_count()
    with pytest.raises(exceptions.ImageFetchFailed, match="cut"):
        collect(Broken(), 4096, 1024)

    assert threading.active_count() == before


def test_leaving_early_stops_the_thread():
    reader = io.BytesIO(b"z" * 10000)
    with readahead.ReadAhead(reader, 10000, 1000) as windows:
        thread = windows._thread
        next(iter(windows))

    assert not thread.is_alive()
    assert reader.tell() <= 3000        # at most the two buffers were filled


def test_an_empty_stream_gives_no_windows():
    assert collect(io.BytesIO(b""), 0, 4096) == []
