"""Reading a stream in fixed windows, one window ahead, in a thread.

The uploader sends a window while the next one is being read, so a fetch
from the image service and an upload into XAPI overlap instead of taking
turns. Two buffers circulate between the reading thread and the consumer;
nothing else is allocated per window, so memory stays at two windows.
"""

import logging
import queue
import threading

from rpc import exceptions

LOG = logging.getLogger(__name__)

_JOIN_SECONDS = 120.0


class Window:
    """One filled buffer: ``view[:length]`` holds stream bytes from ``offset``."""

    def __init__(self, buffer):
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.offset = 0
        self.length = 0


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


class ReadAhead:
    """Iterate over :class:`Window` objects covering ``size_bytes`` of ``reader``.

    Use as a context manager; hand each window back with :meth:`release` once
    it has been consumed. An error of the reader is raised by the iteration.
    """

    def __init__(self, reader, size_bytes, window_bytes):
        self._reader = reader
        self._size_bytes = size_bytes
        self._window_bytes = window_bytes
        self._free = queue.Queue()
        self._filled = queue.Queue()
        self._stop = threading.Event()
        for _ in range(2 if size_bytes > window_bytes else 1):
            self._free.put(Window(bytearray(window_bytes)))
        self._thread = threading.Thread(target=self._run, name="stream-readahead",
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._free.put(None)  # wakes the thread if it waits for a buffer
        self._thread.join(_JOIN_SECONDS)
        if self._thread.is_alive():
            LOG.warning("stream reader still blocked after %ss; leaving it", _JOIN_SECONDS)

    def _run(self):
        try:
            for offset in range(0, self._size_bytes, self._window_bytes):
                window = self._free.get()
                if window is None or self._stop.is_set():
                    return
                window.offset = offset
                window.length = min(self._window_bytes, self._size_bytes - offset)
                read_exactly(self._reader, window.view[:window.length], offset,
                             self._size_bytes)
                self._filled.put(window)
            self._filled.put(None)
        except BaseException as e:  # handed to the consumer, raised there
            self._filled.put(e)

    def __iter__(self):
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
