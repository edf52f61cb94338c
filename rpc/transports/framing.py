"""Length-prefixed msgpack frames for the local socket.

A frame is a 4-byte big-endian length followed by that many bytes of
msgpack. Frames above :data:`MAX_FRAME_BYTES` are refused before anything
is read into memory, so a confused or hostile peer cannot make the agent
allocate more than that. msgpack carries ``bytes`` natively
(``use_bin_type``), so user data crosses this wire untouched.

Request: ``{"id": int, "method": str, "version": str, "args": dict}``.
Reply: ``{"id": int, "result": dict}`` or ``{"id": int, "error": dict}``;
id 0 is a connection-level error (e.g. access refused) before closing.
"""

import select
import selectors
import struct

import msgpack

from rpc import methods

MAX_FRAME_BYTES = methods.MAX_REQUEST_BYTES
_HEADER = struct.Struct("!I")


class FrameError(Exception):
    """The peer sent something that is not a valid frame; drop the connection."""


class ConnectionClosed(FrameError):
    """The peer closed the connection (cleanly, between frames or not)."""


def readable_now(sock):
    """Whether ``sock`` has something to read (data, or the peer's EOF) now.

    ``select.poll`` when it is there: the pooled client asks this before
    every call, and it is several times faster than a selector (no epoll
    descriptor made and closed each time). Eventlet's monkey-patching
    (nova-compute may run under it) removes ``select.poll``; then the
    ``selectors`` module, which eventlet greens, answers.
    """
    poll = getattr(select, "poll", None)
    if poll is not None:
        poller = poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def pack(message):
    """One message → one frame (header included)."""
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError("frame of %d bytes exceeds the %d byte limit"
                         % (len(body), MAX_FRAME_BYTES))
    return _HEADER.pack(len(body)) + body


def _recv_exactly(sock, size):
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionClosed("peer closed the connection after %d of %d bytes"
                                   % (got, size))
        got += n
    return buf


def read_frame(sock):
    """Read one frame from ``sock`` and decode it.

    Raises ``ConnectionClosed`` on EOF, ``FrameError`` on an oversized or
    undecodable frame; socket errors and timeouts propagate.
    """
    header = sock.recv(_HEADER.size, 0)
    if len(header) < _HEADER.size:
        if not header:
            raise ConnectionClosed("peer closed the connection")
        header += bytes(_recv_exactly(sock, _HEADER.size - len(header)))
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise FrameError("frame of %d bytes exceeds the %d byte limit" % (size, MAX_FRAME_BYTES))
    body = _recv_exactly(sock, size)
    try:
        return msgpack.unpackb(body, raw=False, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise FrameError("undecodable frame: %s" % type(e).__name__) from None
