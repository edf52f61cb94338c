"""Uploading disk contents into a VDI with XAPI's ``PUT /import_raw_vdi``.

Every upload is one or more PUTs, each with its own XAPI task: the handler
answers 200 before it reads the body, so the only proof that the data
landed is the task ending in ``success``; a failed task raises XapiFailure
with the task's ``error_info``. Bodies always carry ``Content-Length`` (XAPI
refuses ``Transfer-Encoding``) and go out in pieces, so memory stays bounded
whatever the disk size: file data goes out with ``sendfile`` (no buffer at
all), a stream's through one window.

Empty space is not sent: files are mapped with SEEK_DATA/SEEK_HOLE and
all-zero 64 KiB blocks are dropped, then sent either as a dynamic VHD
(:mod:`agent.vhd`) or in XAPI's sparse ``chunked`` framing (repeated
little-endian ``uint64 offset, uint32 length, data``, ended by ``0, 0``).
The PUT itself (its task, XAPI's early answer, the checks) is
:mod:`agent.vdi_import`.
"""

import contextlib
import logging
import os
import struct
import time
from concurrent import futures

from agent import readahead, vdi_import, vhd
from agent.vdi_import import Progress
from rpc import exceptions

LOG = logging.getLogger(__name__)

WINDOW_BYTES = 64 * 1024 * 1024
# Real XAPI attaches the VDI to dom0 for every PUT (a VBD plug and a
# vhd-tool run), which costs far more than the simulator's import of the
# same bytes, so PUTs grow: each may carry twice the previous one's data,
# up to this. A 1 GiB dense image goes in five PUTs instead of sixteen.
MAX_PUT_BYTES = 1024 * 1024 * 1024
# A stream's PUT gets its length before the data that fills it is read, and
# the one the stream ends in is filled up with zeros: this bounds that
# waste (a PUT's length is also bounded by what the rest of the stream
# could hold).
MAX_STREAM_PUT_BYTES = 256 * 1024 * 1024
ZERO_BLOCK_BYTES = readahead.BLOCK_BYTES
PIECE_BYTES = 4 * 1024 * 1024
_MiB = 1024 * 1024
FORMATS = ("vhd", "chunked", "raw")

# How often a stream being read asks whether its upload is still wanted.
CHECK_SECONDS = 1.0

_FRAME_HEADER = struct.Struct("<QI")
_END_OF_FRAMES = _FRAME_HEADER.pack(0, 0)
SCAN_BYTES = 1024 * 1024  # reads of a file's data while looking for zeros


# -- finding data -------------------------------------------------------------

def _data_blocks(fd, file_size):
    """(offset, size) of each 64 KiB block of the file that holds data.

    The ranges SEEK_DATA reports are read in order, ``SCAN_BYTES`` at a time,
    and their blocks checked in memory: a sequential reader, which the kernel
    reads ahead for (probing a little of each block instead defeats its
    read-ahead and reads a cold file one small request at a time).
    """
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass  # advice only
    buffer = bytearray(SCAN_BYTES)
    view = memoryview(buffer)
    scanned = 0  # the blocks before this offset have been looked at
    for start, stop in vhd.data_extents(fd, file_size):
        offset = max(start - start % ZERO_BLOCK_BYTES, scanned)
        stop = min(-(-stop // ZERO_BLOCK_BYTES) * ZERO_BLOCK_BYTES, file_size)
        while offset < stop:
            want = min(SCAN_BYTES, stop - offset)
            got = vhd.pread_into(fd, view[:want], offset)
            for begin, end in readahead.data_blocks(buffer, 0, got):
                yield offset + begin, end - begin
            if got < want:
                return  # the file shrank: nothing lies past its end
            offset += got
        scanned = max(scanned, stop)


def _split(offset, length):
    """A run as frames of at most PIECE_BYTES."""
    end = offset + length
    while offset < end:
        size = min(PIECE_BYTES, end - offset)
        yield offset, size
        offset += size


def chunked_length(runs):
    """Body length of the chunked framing of ``runs`` ((offset, length) pairs)."""
    data_bytes = frames = 0
    for _, length in runs:
        data_bytes += length
        frames += -(-length // PIECE_BYTES)
    return data_bytes + (frames + 1) * _FRAME_HEADER.size


# -- files --------------------------------------------------------------------

def upload_file(xapi_session, vdi_ref, path, fmt="vhd", progress=None,
                progress_interval=None, window_bytes=WINDOW_BYTES, opened=None,
                max_window_bytes=MAX_PUT_BYTES):
    """Write the raw disk image at ``path`` into VDI ``vdi_ref``.

    ``fmt``: ``vhd`` (dynamic VHD of the data blocks, one PUT), ``chunked``
    (sparse framing of the non-zero data: a first PUT of up to
    ``window_bytes`` of data, each next one of up to twice the previous,
    at most ``max_window_bytes``; see :func:`_upload_file_windows`) or
    ``raw`` (every byte, one PUT).
    The VDI must be fresh (all zero): skipped regions are not written.
    ``progress(done, total)`` is called with body bytes (``chunked``: file
    bytes scanned). ``opened``: ``path`` already open for reading (a binary
    file object), sent instead of opening ``path`` again, so the file sent
    is the one the caller checked; left open (``chunked`` and ``raw`` only).
    Raises XapiFailure (HTTP status or the task's error info),
    DiskOperationFailed (a size VHD cannot hold).
    """
    if fmt not in FORMATS:
        raise ValueError("unknown upload format %r (one of %s)" % (fmt, ", ".join(FORMATS)))
    if fmt == "vhd":
        if opened is not None:
            raise ValueError("an open file can be sent as chunked or raw, not vhd")
        stream = vhd.VhdStream.from_file(path)
        _put_whole(xapi_session, vdi_ref, path, fmt, {"format": "vhd"}, stream.length,
                   ([piece] for piece in stream), progress, progress_interval)
        return
    with (open(path, "rb", buffering=0) if opened is None
          else contextlib.nullcontext(opened)) as source:
        if fmt == "chunked":
            _upload_file_windows(xapi_session, vdi_ref, source, path, window_bytes,
                                 max_window_bytes, progress, progress_interval)
            return
        file_size = os.lseek(source.fileno(), 0, os.SEEK_END)  # block devices too
        _put_whole(xapi_session, vdi_ref, path, fmt, {"format": "raw"}, file_size,
                   _file_pieces(source, path, file_size), progress, progress_interval)


def _put_whole(xapi_session, vdi_ref, path, fmt, query, length, pieces, progress,
               progress_interval):
    """One PUT of ``length`` bytes of ``pieces``, with progress and a log line."""
    tracker = Progress("upload of %s as %s" % (os.path.basename(path), fmt),
                       length, progress, progress_interval)
    vdi_import.put(xapi_session, vdi_ref, query, length, pieces, tracker)
    LOG.info("%s: done, %s", tracker.label, tracker.summary())


def _upload_file_windows(xapi_session, vdi_ref, source, path, window_bytes,
                         max_window_bytes, progress, progress_interval):
    """The file's data as chunked PUTs, one per window of data.

    A thread finds the data (:func:`_data_blocks`) one window ahead of the
    PUT that sends the previous window, so reading
    a cold file overlaps with sending; each window's body length is known
    before its PUT starts, as Content-Length requires. The first window
    holds up to ``window_bytes`` of data, so sending starts soon, and each
    next one up to twice as much, at most ``max_window_bytes``, so a large
    file takes few PUTs. Data goes out with ``sendfile``; memory does not
    grow with the file (a window is a list of runs).
    """
    file_size = os.lseek(source.fileno(), 0, os.SEEK_END)  # block devices too
    tracker = Progress("upload of %s as chunked" % os.path.basename(path),
                       file_size, progress, progress_interval)

    def frames(window):
        return _framed_ranges(source, path, window.runs)

    _send_windows(xapi_session, vdi_ref,
                  _FileWindows(source.fileno(), file_size, window_bytes, tracker,
                               max_window_bytes),
                  frames, tracker)


class _RunWindow:
    """Runs of a file holding up to one window of data."""

    def __init__(self):
        self.runs = []
        self.length = 0


class _FileWindows(readahead.Ahead):
    """Windows of the data runs of a file, found by a thread (see
    :class:`agent.readahead.Ahead` for the protocol). The file is read only
    to check blocks for zeros; at most two windows are ahead of the sender."""

    def __init__(self, fd, file_size, window_bytes, progress, largest_bytes=None):
        super().__init__([_RunWindow(), _RunWindow()], "file-data-scan")
        self._fd = fd
        self._file_size = file_size
        # The first window's data, and the most any window's may grow to.
        self._first = window_bytes
        self._largest = max(window_bytes, largest_bytes or window_bytes)
        self._progress = progress

    def produce(self):
        window = self.next_window()
        limit = self._first
        scanned = 0
        for offset, size in _data_blocks(self._fd, self._file_size):
            if self.stopped:
                return
            if window.length + size > limit and window.runs:
                self.hand_over(window)
                window = self.next_window()
                if window is None:
                    return
                limit = min(2 * limit, self._largest)
            readahead.add_run(window.runs, offset, size)
            window.length += size
            self._progress.advance(offset + size - scanned)
            scanned = offset + size
        if window is not None:
            self._progress.advance(self._file_size - scanned)
            if window.runs:
                self.hand_over(window)


def _framed_ranges(source, path, runs):
    """Frames of ``runs`` whose data are file ranges of ``source``."""
    for run_offset, run_length in runs:
        for offset, size in _split(run_offset, run_length):
            yield [_FRAME_HEADER.pack(offset, size), FileRange(source, offset, size, path)]
    yield [_END_OF_FRAMES]


class FileRange:
    """``count`` bytes of an open file from ``offset``, as one element of a
    piece: :mod:`agent.vdi_import` sends it with ``sendfile``, so file data
    goes from the page cache to the socket without passing through Python.
    ``bytes()`` reads it (for tests and for transports that need a buffer).
    """

    def __init__(self, file, offset, count, path):
        self.file = file
        self.offset = offset
        self.count = count
        self.path = path

    def __len__(self):
        return self.count

    def __bytes__(self):
        data = os.pread(self.file.fileno(), self.count, self.offset)
        self.check_sent(len(data))
        return data

    def send(self, sock):
        """Send the range on ``sock``; raises OSError as sockets do."""
        self.check_sent(sock.sendfile(self.file, self.offset, self.count))

    def check_sent(self, count):
        if count < self.count:
            raise exceptions.DiskOperationFailed(
                operation="upload", target=self.path,
                reason="file shrank while being sent (offset %d)" % (self.offset + count))


def _file_pieces(source, path, file_size):
    """A plain body of the whole file: :class:`FileRange` s of at most PIECE_BYTES."""
    for offset, size in _split(0, file_size):
        yield [FileRange(source, offset, size, path)]


# -- streams ------------------------------------------------------------------

def upload_stream(xapi_session, vdi_ref, reader, size_bytes, window_bytes=WINDOW_BYTES,
                  progress=None, progress_interval=None, first_put_bytes=None,
                  max_put_bytes=MAX_STREAM_PUT_BYTES, still_wanted=None):
    """Write ``size_bytes`` read from ``reader`` into VDI ``vdi_ref``.

    ``window_bytes`` bounds the memory, whatever the stream's size: a thread
    (:mod:`agent.readahead`) reads the stream into two buffers of half of
    it, taking turns, and keeps only the non-zero 64 KiB blocks; each buffer
    full of data is sent while the other fills. Zero runs send nothing.
    The data goes out in chunked PUTs whose lengths are fixed before they
    start and need not match a buffer (see :class:`_StreamPuts`): the first
    carries up to ``first_put_bytes`` of body, each next one up to twice as
    much, at most ``max_put_bytes``, so a large image takes few PUTs (real
    XAPI attaches the VDI to dom0 for each). Every PUT has its own task,
    checked; a PUT that XAPI ends early (or XAPI dying) stops the reading
    at once. ``reader`` has ``readinto`` or ``read``; ``progress(done,
    total)`` counts stream bytes read (from the reading thread). Raises
    XapiFailure (HTTP status or a task's error info), DiskOperationFailed
    (stream shorter than ``size_bytes``), and whatever the reader raises
    (ImageFetchFailed for image downloads).

    ``still_wanted()``, if given, is called from the reading thread every
    ``CHECK_SECONDS`` of reading and raises to stop it (XAPI gone, the VDI
    destroyed, the caller gone): filling a window from a slow image service
    takes long, and no PUT is open meanwhile to notice anything.
    """
    if window_bytes < _MiB or window_bytes % _MiB:
        raise ValueError("window_bytes must be a whole number of MiB, got %d" % window_bytes)
    first_put_bytes = first_put_bytes or window_bytes // 2
    tracker = Progress("upload of a %d-byte stream" % size_bytes, size_bytes,
                       progress, progress_interval)

    def open_put(length, on_broken=None):
        return vdi_import.Import(xapi_session, vdi_ref, {"format": "raw", "chunked": "true"},
                                 length, on_broken=on_broken).start()

    reading = tracker if still_wanted is None else _Checked(tracker, still_wanted)
    puts = _send_stream(reader, size_bytes, window_bytes // 2, open_put, first_put_bytes,
                        max_put_bytes, reading)
    LOG.info("%s: done, %s; sent %d bytes in %d PUT(s)",
             tracker.label, tracker.summary(), puts.sent_bytes, puts.puts)


def _send_stream(reader, size_bytes, buffer_bytes, open_put, first, largest,
                 progress=None):
    """Read ``reader`` ahead into two buffers of ``buffer_bytes`` and send
    its data in the PUTs ``open_put(length)`` starts (:class:`_StreamPuts`,
    ``first`` and ``largest`` its lengths); returns the :class:`_StreamPuts`,
    which counts them."""
    with readahead.ReadAhead(reader, size_bytes, buffer_bytes, progress) as windows, \
            _StreamPuts(open_put, size_bytes, windows.abort, first, largest) as puts:
        for window in windows:
            puts.send_window(window)
            windows.release(window)  # sent: the kernel holds the bytes
        puts.end()
    return puts


_HEADER_BYTES = _FRAME_HEADER.size
# A frame is a header and at least one byte: what a PUT still takes is
# either nothing or at least this.
_MIN_FRAME = _HEADER_BYTES + 1


def _frame_size(offset, length):
    """The first frame of ``length`` stream bytes at ``offset``: up to the
    next PIECE_BYTES boundary of the stream, or all of them when what would
    be left is shorter than a frame."""
    size = min(PIECE_BYTES - offset % PIECE_BYTES, length)
    return length if length - size < _MIN_FRAME else size


def _frame_count(offset, length):
    """How many frames :func:`_frame_size` cuts ``length`` bytes at ``offset`` into."""
    count = 0
    while length > 0:
        size = _frame_size(offset, length)
        offset, length, count = offset + size, length - size, count + 1
    return count


class _StreamPuts:
    """A stream's data as chunked PUTs whose lengths are fixed in advance.

    XAPI needs a PUT's Content-Length before its body, and a stream's data
    is only known once read. Rather than one PUT per buffer of data, each
    PUT is given a length when it opens (``first`` body bytes, then twice
    the previous, at most ``largest``) and filled with frames as the data
    comes, across buffers; the frame that reaches its end is cut, and the
    rest opens the next PUT. A frame is cut so that what the PUT still
    takes is never 1..12 bytes, less than a frame.

    The stream may end before the open PUT is full. What it still takes is
    then filled with frames of zeros written where the stream had zeros
    (the VDI is zero there already, so they change nothing). Enough such
    zeros exist: a PUT takes at most the stream bytes from its first frame
    on, plus one header, and each of them is either data it carries or a
    zero. The largest zero range seen serves every such frame.

    Finishing a PUT (waiting for XAPI to close it, checking its task) runs
    on a thread, overlapping the next PUT's body. ``open_put(length,
    on_broken)`` returns a started :class:`agent.vdi_import.Import`; ``abort(error)``
    stops the reading side when a finishing PUT fails. Leaving waits for
    every PUT, so none is left running or unchecked whatever happened.
    """

    def __init__(self, open_put, stream_size, abort, first, largest):
        self._open_put = open_put
        self._stream_size = stream_size
        self._abort = abort
        self._next_length = first
        self._largest = max(first, largest)
        self._put = None
        self._sent = None       # the open PUT's body bytes sent
        self._left = 0          # body bytes the open PUT still takes, end frame aside
        self._position = 0      # stream offset up to which runs have been taken in
        self._recent = b""      # the last bytes of the run that ends there
        self._zeros = (0, 0)    # (offset, length): the largest zero range seen
        self._finishing = []
        self._pool = futures.ThreadPoolExecutor(1, thread_name_prefix="vdi-put-finish")
        self.sent_bytes = 0
        self.puts = 0

    def send_window(self, window):
        """Send the data of ``window`` (a :class:`readahead.Window`)."""
        start = 0
        for run_offset, run_length in window.runs:
            self._note_zeros(run_offset)
            data = window.view[start:start + run_length]
            if run_length < _MIN_FRAME and run_offset >= _MIN_FRAME:
                # Only the stream's last, partial block can be this small; a
                # frame that short might not fit what a PUT still takes, so
                # it goes with the bytes before it: the end of the run sent
                # last if it ends here (runs are whole blocks), else zeros.
                lead = _MIN_FRAME - run_length
                before = (self._recent[-lead:] if self._position == run_offset
                          else bytes(lead))
                self._send_run(run_offset - lead, memoryview(before + bytes(data)))
            else:
                self._send_run(run_offset, data)
            start += run_length
            self._position = run_offset + run_length
            self._recent = bytes(data[-_HEADER_BYTES:])

    def _send_run(self, offset, data):
        """Send ``data``, the stream's bytes at ``offset``, in frames
        (:func:`_frame_size`), across PUTs."""
        done, end = 0, len(data)
        while done < end:
            self._check_finished()
            size = _frame_size(offset + done, end - done)
            if self._put is None:
                self._open(offset + done, size)
            size = self._fit(size)
            self._send(offset + done, data[done:done + size])
            done += size

    def end(self):
        """The stream has ended: fill and close the open PUT, wait for every
        PUT and raise the first failure."""
        self._note_zeros(self._stream_size)
        if self._put is not None:
            self._pad()
        self._wait_all()

    def _fit(self, size):
        """How much of a ``size``-byte frame goes into the open PUT now.

        What the PUT still takes stays 0 or at least a frame (13 bytes). A
        frame of at least 13 bytes always fits some way: whole, cut to fill
        the PUT, or cut to leave room for one more byte's frame. A shorter
        one opens a PUT (:meth:`_open` sizes it to fit) or is never sent
        (see :meth:`send_window`)."""
        left = self._left
        if _HEADER_BYTES + size >= left:
            return left - _HEADER_BYTES                 # fills it: the rest opens the next
        if left - _HEADER_BYTES - size >= _MIN_FRAME:
            return size
        # Sent whole, it would leave less than a frame: leave one frame's room.
        fit = left - _HEADER_BYTES - _MIN_FRAME
        if fit < 1:
            raise exceptions.DiskOperationFailed(
                operation="upload", target="stream",
                reason="a %d-byte frame fits no PUT that still takes %d bytes"
                % (size, left))
        return fit

    def _pad(self):
        """Fill the open PUT with frames of zeros over the largest zero range."""
        offset, length = self._zeros
        if not length:
            raise exceptions.DiskOperationFailed(
                operation="upload", target="stream",
                reason="no zero range to complete a PUT with (%d bytes short)" % self._left)
        zeros = memoryview(bytes(min(length, PIECE_BYTES)))
        while self._put is not None:
            self._send(offset, zeros[:self._fit(len(zeros))])

    def _note_zeros(self, offset):
        """The stream is zero from the last run's end up to ``offset``."""
        length = offset - self._position
        if length > self._zeros[1]:
            self._zeros = (self._position, length)

    def _open(self, offset, first_frame):
        """Open a PUT whose first frame is ``first_frame`` bytes at ``offset``."""
        # At most what the rest of the stream takes if it is all data, so
        # that a PUT the stream cannot fill is short of zeros it has.
        rest = self._stream_size - offset
        length = min(self._next_length, rest + _HEADER_BYTES * _frame_count(offset, rest))
        if 0 < length - _HEADER_BYTES - first_frame < _MIN_FRAME:
            length = _HEADER_BYTES + first_frame    # no room left that no frame fits
        self._next_length = min(2 * self._next_length, self._largest)
        # and the end frame; a connection XAPI ends meanwhile stops the
        # stream at once, not when the next frame is ready to go.
        self._put = self._open_put(length + _HEADER_BYTES, on_broken=self._abort)
        self._left = length
        self._sent = _Quiet()

    def _send(self, offset, data):
        put = self._put
        put.send([[_FRAME_HEADER.pack(offset, len(data)), data]], self._sent)
        self._left -= _HEADER_BYTES + len(data)
        if put.broken:
            self._put = None
            put.finish()        # raises, with the task's reason
        if self._left == 0:
            put.send([[_END_OF_FRAMES]], self._sent)
            self._put = None
            self.sent_bytes += self._sent.done_bytes
            self.puts += 1
            self._finishing.append(self._pool.submit(self._finish, put))

    def _finish(self, put):
        try:
            put.finish()
        except BaseException as e:
            self._abort(e)      # the stream stops at once, not at the next frame
            raise

    def _check_finished(self):
        for future in [f for f in self._finishing if f.done()]:
            self._finishing.remove(future)
            future.result()     # raises the PUT's error

    def _wait_all(self):
        futures.wait(self._finishing)
        self._check_finished()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._put is not None:
                put, self._put = self._put, None
                put.abandon()
            futures.wait(self._finishing)
            if exc_type is None:
                self._check_finished()
        finally:
            self._pool.shutdown(wait=True)
        return False


def _send_windows(xapi_session, vdi_ref, ahead, frames, tracker):
    """Each window that ``ahead`` (a :class:`readahead.Ahead`, not yet
    entered) prepares, as one chunked PUT of ``frames(window)``; logs the
    total."""
    with ahead as windows, _Sender(xapi_session, vdi_ref, windows, frames) as sender:
        for window in windows:
            sender.submit(window)
    LOG.info("%s: done, %s; sent %d bytes in %d PUT(s)",
             tracker.label, tracker.summary(), sender.sent_bytes, sender.puts)


class _Sender:
    """Chunked PUTs of windows into one VDI, on worker threads, counted.

    Each PUT runs whole on a worker thread (start, body, handing the window
    back to ``windows``, task check). A failure stops ``windows`` at once
    and is raised by the iteration, the next :meth:`submit` or on leaving;
    leaving waits for every PUT, so none is left running or unchecked
    whatever happened.
    """

    # One PUT finishing, one sending, one starting; there are only two
    # buffers, so no more than two bodies are ever in memory.
    WORKERS = 3

    def __init__(self, xapi_session, vdi_ref, windows, frames):
        self.xapi_session = xapi_session
        self.vdi_ref = vdi_ref
        self._frames = frames  # window -> its body's pieces
        self.sent_bytes = 0
        self.puts = 0
        self._release = windows.release
        self._abort = windows.abort
        self._pool = futures.ThreadPoolExecutor(self.WORKERS, thread_name_prefix="vdi-put")
        self._running = []

    def submit(self, window):
        self._collect(wait=len(self._running) >= self.WORKERS)
        self._running.append(self._pool.submit(self._put, window))

    def _put(self, window):
        try:
            try:
                length = chunked_length(window.runs)
                upload = vdi_import.Import(
                    self.xapi_session, self.vdi_ref, {"format": "raw", "chunked": "true"},
                    length, on_broken=self._abort).start()
                upload.send(self._frames(window), _Quiet())
            finally:
                self._release(window)  # sent (the kernel holds the bytes) or given up
            upload.finish()
        except BaseException as e:
            self._abort(e)  # the stream stops at once, not at the next window
            raise
        return length

    def _collect(self, wait):
        """Count finished PUTs, raising the first failure; with ``wait``,
        first wait until one of the running PUTs has finished."""
        if wait:
            futures.wait(self._running, return_when=futures.FIRST_COMPLETED)
        for future in [f for f in self._running if f.done()]:
            self._running.remove(future)
            self.sent_bytes += future.result()  # raises the PUT's error
            self.puts += 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            futures.wait(self._running)
            if exc_type is None:
                self._collect(wait=False)
        finally:
            self._pool.shutdown(wait=True)
        return False


class _Checked:
    """A progress sink that also calls ``check()`` every ``CHECK_SECONDS``
    (which raises to stop whoever advances it)."""

    def __init__(self, progress, check):
        self._progress = progress
        self._check = check
        self._next = time.monotonic() + CHECK_SECONDS

    def advance(self, count):
        self._progress.advance(count)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + CHECK_SECONDS
            self._check()


class _Quiet:
    """Progress sink of a single PUT: the stream's tracker counts instead."""

    done_bytes = 0

    def advance(self, count):
        self.done_bytes += count



