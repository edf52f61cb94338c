"""Reading a stream ahead in a thread, keeping only its data.

The uploader sends one buffer while a thread fills the other from the
stream, so a fetch from the image service and an upload into XAPI overlap
instead of taking turns. The thread reads the stream in pieces of 1 MiB and
checks each piece's 64 KiB blocks for zeros at once, while the piece is
still in the CPU's cache: an all-zero block is dropped on the spot (the
next piece overwrites it), a data block is moved down to follow the data
kept before it. A buffer is handed over when it is full of data or the
stream has ended, so a dense stream gives buffers of consecutive bytes and a
sparse one buffers of many scattered runs: what is sent, and the number of
PUTs, follows the amount of data, not the size of the stream. Two buffers
circulate between the thread and the consumer and nothing else is allocated
per buffer, so memory stays at two buffers whatever the stream's size.
"""

import logging
import queue
import threading

from rpc import exceptions

LOG = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 1024
PIECE_BYTES = 1024 * 1024
_ZEROS = bytes(BLOCK_BYTES)
_JOIN_SECONDS = 120.0


class Window:
    """One buffer of kept data: ``view[:length]`` holds ``runs``, back to back.

    ``runs`` are ``(stream_offset, length)`` pairs in stream order, with
    neighbours merged; the stream bytes between runs (and between windows)
    were zero.
    """

    def __init__(self, buffer):
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.length = 0
        self.runs = []


def read_exactly(reader, view, stream_offset, size_bytes):
    """Fill ``view`` from ``reader`` (``readinto`` or ``read``); short → error."""
    filled = 0
    readinto = getattr(reader, "readinto", None)
    while filled < len(view):
        if readinto is not None:
            got = readinto(view[filled:])
        else:
            data = reader.read(len(view) - filled)
            got = len(data)
            view[filled:filled + got] = data
        if not got:
            raise exceptions.DiskOperationFailed(
                operation="upload", target="stream",
                reason="stream ended after %d of %d bytes" % (stream_offset + filled,
                                                             size_bytes))
        filled += got


def data_blocks(buffer, start, size):
    """``(begin, end)`` of each block of ``buffer[start:start + size]`` that
    holds a non-zero byte; blocks are ``BLOCK_BYTES`` from ``start`` (the
    last may be shorter). The comparison is a ``memcmp`` per block, which
    stops at the first non-zero byte of a data block."""
    stop = start + size
    for begin in range(start, stop, BLOCK_BYTES):
        end = min(begin + BLOCK_BYTES, stop)
        if not buffer.startswith(_ZEROS[:end - begin], begin):
            yield begin, end


def add_run(runs, offset, size):
    """Append ``(offset, size)`` to ``runs``, (offset, length) pairs in
    order, merged into the last run where the two touch."""
    if runs and runs[-1][0] + runs[-1][1] == offset:
        runs[-1] = (runs[-1][0], runs[-1][1] + size)
    else:
        runs.append((offset, size))


def keep_data(window, start, size, stream_offset):
    """Drop the all-zero blocks of ``window.view[start:start + size]``.

    The piece holds stream bytes from ``stream_offset`` (a multiple of the
    block size, so blocks line up with the disk's). Its data blocks are
    moved down to ``start`` and recorded in ``window.runs``; returns how
    many bytes were kept.
    """
    view = window.view
    kept = start
    for begin, end in data_blocks(window.buffer, start, size):
        if kept != begin:
            view[kept:kept + end - begin] = view[begin:end]
        add_run(window.runs, stream_offset + begin - start, end - begin)
        kept += end - begin
    return kept - start


class Ahead:
    """A thread that prepares windows ahead of their consumer.

    ``windows`` circulate between the thread and the consumer: the thread's
    :meth:`produce` takes a free one with :meth:`next_window` (None: stop),
    fills it and gives it with :meth:`hand_over`; the consumer iterates over
    the filled ones and hands each back with :meth:`release` once consumed.
    An error of :meth:`produce` is raised by the iteration; :meth:`abort`
    stops the thread from any side. Use as a context manager.
    """

    def __init__(self, windows, thread_name):
        self._free = queue.Queue()
        self._filled = queue.Queue()
        self._stop = threading.Event()
        for window in windows:
            self._free.put(window)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def produce(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._free.put(None)  # wakes the thread if it waits for a window
        self._thread.join(_JOIN_SECONDS)
        if self._thread.is_alive():
            LOG.warning("%s still blocked after %ss; leaving it", self._thread.name,
                        _JOIN_SECONDS)

    @property
    def stopped(self):
        return self._stop.is_set()

    def next_window(self):
        """A free window, emptied; None once the thread is to stop."""
        window = self._free.get()
        if window is None or self._stop.is_set():
            return None
        window.length = 0
        window.runs = []
        return window

    def hand_over(self, window):
        self._filled.put(window)

    def _run(self):
        try:
            self.produce()
            self._filled.put(None)
        except BaseException as e:  # handed to the consumer, raised there
            self._filled.put(e)

    def __iter__(self):
        """Filled windows, in order; raises the thread's error."""
        while True:
            item = self._filled.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, window):
        """The window has been consumed; the thread may refill it."""
        self._free.put(window)

    def abort(self, error):
        """Stop the thread; the iteration raises ``error`` (from any thread)."""
        self._stop.set()
        self._filled.put(error)
        self._free.put(None)


class ReadAhead(Ahead):
    """Windows of the data of ``size_bytes`` of ``reader``, read by a thread.

    Each buffer holds up to ``buffer_bytes`` of data (a multiple of 64 KiB).
    Use as a context manager; iterate over it and hand each window back
    with :meth:`release` once it has been consumed. An error of the reader
    is raised by the iteration. ``progress.advance(n)``, if given, is called
    from the thread with the stream bytes read.
    """

    def __init__(self, reader, size_bytes, buffer_bytes, progress=None):
        if buffer_bytes < BLOCK_BYTES or buffer_bytes % BLOCK_BYTES:
            raise ValueError("buffer_bytes must be a multiple of %d, got %d"
                             % (BLOCK_BYTES, buffer_bytes))
        # A stream smaller than the buffers does not get them whole.
        rounded = -(-max(size_bytes, 1) // BLOCK_BYTES) * BLOCK_BYTES
        capacity = min(buffer_bytes, rounded)
        count = 2 if size_bytes > capacity else 1
        super().__init__([Window(bytearray(capacity)) for _ in range(count)],
                         "stream-readahead")
        self._reader = reader
        self._size_bytes = size_bytes
        self._capacity = capacity
        self._piece = min(PIECE_BYTES, capacity)
        self._progress = progress

    def produce(self):
        window = self.next_window()
        offset = 0
        while window is not None and offset < self._size_bytes:
            if self.stopped:
                return
            if window.length == self._capacity:
                self.hand_over(window)
                window = self.next_window()
                if window is None:
                    return
            # Kept data is whole blocks (but for the stream's last), so
            # the room left is too: a smaller piece fills it exactly.
            start = window.length
            size = min(self._piece, self._capacity - start, self._size_bytes - offset)
            read_exactly(self._reader, window.view[start:start + size], offset,
                         self._size_bytes)
            window.length += keep_data(window, start, size, offset)
            offset += size
            if self._progress is not None:
                self._progress.advance(size)
        if window is not None and window.runs:
            self.hand_over(window)
