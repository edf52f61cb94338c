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

A download checked against its checksum is hashed from the windows
themselves (:class:`WindowHasher`), on a thread of its own: a data block
where the window keeps it, a zero block from a buffer of zeros. Nothing is
copied for the hash, and hashlib lets go of the interpreter lock while it
sums, so hashing runs beside reading and sending; a window is refilled only
once it has been summed.
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


def keep_data(window, start, size, stream_offset, pieces=None):
    """Drop the all-zero blocks of ``window.view[start:start + size]``.

    The piece holds stream bytes from ``stream_offset`` (a multiple of the
    block size, so blocks line up with the disk's). Its data blocks are
    moved down to ``start`` and recorded in ``window.runs``; returns how
    many bytes were kept. With ``pieces`` (a list), the piece's bytes in
    stream order are appended to it: ``(position, length)`` of data where
    the window now holds it, ``(None, length)`` of zeros.
    """
    view = window.view
    kept = start
    position = start   # where the next block not yet accounted for begins
    for begin, end in data_blocks(window.buffer, start, size):
        if pieces is not None:
            if begin > position:
                _add_piece(pieces, None, begin - position)
            _add_piece(pieces, kept, end - begin)
            position = end
        if kept != begin:
            view[kept:kept + end - begin] = view[begin:end]
        add_run(window.runs, stream_offset + begin - start, end - begin)
        kept += end - begin
    if pieces is not None and start + size > position:
        _add_piece(pieces, None, start + size - position)
    return kept - start


def _add_piece(pieces, position, length):
    """Append to ``pieces``, merged with the last one where they follow on."""
    if pieces:
        last_position, last_length = pieces[-1]
        if position is None and last_position is None:
            pieces[-1] = (None, last_length + length)
            return
        if position is not None and last_position is not None \
                and last_position + last_length == position:
            pieces[-1] = (last_position, last_length + length)
            return
    pieces.append((position, length))


class WindowHasher:
    """Sums a stream's bytes from the windows that keep them, on a thread.

    :meth:`add` queues a window's pieces (see :func:`keep_data`); the
    thread hashes data where the window holds it and zeros from a buffer.
    :meth:`settle` waits until a window is summed (call it before the
    window is refilled); :meth:`hexdigest` until everything is.
    """

    _ZEROS = memoryview(bytes(PIECE_BYTES))

    def __init__(self, hasher):
        self._hasher = hasher
        self._queue = queue.Queue()
        self._pending = {}
        self._done = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="stream-checksum",
                                        daemon=True)
        self._thread.start()

    def add(self, window, pieces):
        with self._done:
            self._pending[id(window)] = self._pending.get(id(window), 0) + 1
        self._queue.put((window, pieces))

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            window, pieces = item
            if not self._stopped:
                for position, length in pieces:
                    if position is None:
                        while length > 0:
                            step = min(length, len(self._ZEROS))
                            self._hasher.update(self._ZEROS[:step])
                            length -= step
                    else:
                        self._hasher.update(window.view[position:position + length])
            with self._done:
                self._pending[id(window)] -= 1
                self._done.notify_all()

    def settle(self, window):
        """Wait until the thread has summed everything given of ``window``."""
        with self._done:
            self._done.wait_for(lambda: self._stopped or not self._pending.get(id(window)))

    def hexdigest(self):
        self._queue.put(None)
        self._thread.join()
        return self._hasher.hexdigest()

    def stop(self):
        """Give up: the thread ends without summing what is left."""
        with self._done:
            self._stopped = True
            self._done.notify_all()
        self._queue.put(None)


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
        # A checked download hands its checksum over: the windows are
        # hashed where they are instead of being copied for the hash.
        take = getattr(reader, "hash_elsewhere", None)
        checksum = take() if take is not None else None
        self._hash = None
        self._verify = None
        if checksum is not None:
            hasher, self._verify = checksum
            self._hash = WindowHasher(hasher)

    def next_window(self):
        window = super().next_window()
        if window is not None and self._hash is not None:
            self._hash.settle(window)   # summed before it is refilled
        return window

    def __exit__(self, *exc):
        if self._hash is not None:
            self._hash.stop()
        return super().__exit__(*exc)

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
            pieces = [] if self._hash is not None else None
            window.length += keep_data(window, start, size, offset, pieces)
            if pieces:
                self._hash.add(window, pieces)
            offset += size
            if self._progress is not None:
                self._progress.advance(size)
        if self._hash is not None and offset >= self._size_bytes and not self.stopped:
            # Before the last window goes: a mismatch fails the upload.
            self._verify(self._hash.hexdigest())
        if window is not None and window.runs:
            self.hand_over(window)
