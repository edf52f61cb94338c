"""Reading image data from the image service (Glance v2), as a stream.

``open_image`` returns a reader over ``GET /v2/images/<id>/file`` whose size
is known up front (``Content-Length``), so the uploader can plan its windows
and report progress. Endpoints from ``[glance] api_servers`` are tried in
turn, ``[glance] num_retries`` times after the first attempt; only failures
another endpoint could cure (no connection, a 5xx answer) move on.

Where the image service's file store is shared with this host (the same
directory mounted here, ``[glance] file_url_mounts``) and Glance shows image
locations (``show_multiple_locations`` or ``show_image_direct_url``), the
image is read from its file instead (:class:`LocalImageFile`): no HTTP, and
the holes of a sparse file (Glance's filesystem store keeps raw images
sparse with ``filesystem_thin_provisioning``) are skipped without being
read. A location that cannot be used (outside the mounts, not a regular
file, a size other than the image's) is logged and the image downloaded.

A download is checked against the MD5 checksum Glance sends with it
(``Content-MD5``) as it is read, unless ``[glance] verify_checksum`` is off:
a mismatch raises when the last byte is read, before the fetch can succeed.

The auth token goes into one request header and nowhere else: not into
errors, not into logs.
"""

import base64
import binascii
import errno
import hashlib
import http.client
import json
import logging
import os
import queue
import re
import ssl
import stat
import threading
import urllib.parse

from agent import readahead
from rpc import exceptions

LOG = logging.getLogger(__name__)

USER_AGENT = "nova-xen-split-agent"
# Seconds a connect or a single socket read may take before the endpoint
# counts as failed.
DEFAULT_TIMEOUT = 60.0


class _TryNextServer(Exception):
    """This endpoint failed in a way another endpoint might not."""


class _Reader:
    """What both readers share: ``read`` over ``readinto``, closing on exit."""

    def read(self, size=-1):
        """Up to ``size`` bytes (all that is left if negative); b"" at the end."""
        remaining = self.size_bytes - self.bytes_read
        if size is None or size < 0 or size > remaining:
            size = remaining
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            filled += self.readinto(view[filled:])
        return bytes(buffer) if filled else b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageReader(_Reader):
    """The body of one image download.

    ``size_bytes`` is the image's size; ``read``/``readinto`` raise
    ImageFetchFailed if the connection breaks or ends before that many bytes,
    or, with ``md5`` (hex digits), if the bytes read do not have that MD5
    checksum (raised by the read that reads the last byte).
    """

    def __init__(self, image_id, connection, response, size_bytes, server, md5=None):
        self.image_id = image_id
        self.size_bytes = size_bytes
        self.server = server
        self.bytes_read = 0
        self._connection = connection
        self._response = response
        self._expected_md5 = md5
        self._md5 = _Md5Thread() if md5 is not None else None
        if self._md5 is not None and size_bytes == 0:
            self._check_md5()      # no read will reach a last byte

    def readinto(self, buffer):
        """Fill ``buffer`` from the stream; returns the byte count, 0 at the end."""
        view = memoryview(buffer).cast("B")
        remaining = self.size_bytes - self.bytes_read
        if remaining <= 0 or not len(view):
            return 0
        if len(view) > remaining:
            view = view[:remaining]
        try:
            got = self._response.readinto(view)
        except (OSError, http.client.HTTPException) as e:
            raise self._broken("%s: %s" % (type(e).__name__, e)) from None
        if not got:
            raise self._broken("connection closed early")
        self.bytes_read += got
        if self._md5 is not None:
            self._md5.update(view[:got])
            if self.bytes_read == self.size_bytes:
                self._check_md5()
        return got

    def _check_md5(self):
        read = self._md5.hexdigest()
        self._md5 = None
        if read != self._expected_md5:
            self.close()
            raise exceptions.ImageFetchFailed(
                image_id=self.image_id,
                reason="the %d bytes downloaded from %s do not match the image's "
                "checksum (MD5 %s expected, %s read)"
                % (self.bytes_read, self.server, self._expected_md5, read))
        LOG.debug("Image %s: MD5 checksum %s verified", self.image_id, read)

    def _broken(self, why):
        self.close()
        return exceptions.ImageFetchFailed(
            image_id=self.image_id,
            reason="download from %s broke after %d of %d bytes (%s)"
            % (self.server, self.bytes_read, self.size_bytes, why))

    def close(self):
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._md5 is not None:
            self._md5.close()
            self._md5 = None


class _Md5Thread:
    """The MD5 of what :meth:`update` is given, summed on a thread of its own.

    MD5 runs at about 600 MB/s on one core, slower than a download arrives,
    so it must not take turns with the reading: ``update`` copies the bytes
    into one of two 1 MiB buffers, and a full buffer is summed by the thread
    (hashlib lets go of the interpreter lock while it sums) while the other
    one fills. Memory stays at the two buffers.
    """

    PIECE_BYTES = 1024 * 1024

    def __init__(self):
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._free = queue.Queue()
        self._full = queue.Queue()
        self._free.put(bytearray(self.PIECE_BYTES))
        self._buffer = bytearray(self.PIECE_BYTES)
        self._length = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="image-md5", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._full.get()
            if item is None:
                return
            buffer, length = item
            self._md5.update(memoryview(buffer)[:length])
            self._free.put(buffer)

    def update(self, data):
        view = memoryview(data).cast("B")
        while len(view) and not self._closed:
            count = min(len(view), self.PIECE_BYTES - self._length)
            self._buffer[self._length:self._length + count] = view[:count]
            self._length += count
            view = view[count:]
            if self._length == self.PIECE_BYTES:
                self._full.put((self._buffer, self._length))
                self._buffer = self._next_free()
                self._length = 0

    def _next_free(self):
        # Closed from another thread (a fetch given up) while this one
        # reads: the summing thread may be gone, so do not wait for it.
        while True:
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                if self._closed:
                    return bytearray(self.PIECE_BYTES)

    def hexdigest(self):
        """The sum of everything given (waits for the thread, which ends)."""
        if self._length:
            self._full.put((self._buffer, self._length))
            self._length = 0
        self._full.put(None)
        self._thread.join()
        return self._md5.hexdigest()

    def close(self):
        """Stop without a sum; the thread ends once it has summed what it
        holds, and later updates are dropped."""
        self._closed = True
        self._full.put(None)


class LocalImageFile(_Reader):
    """An image read from its file in a store shared with this host.

    ``path`` is the file (resolved, inside one of ``[glance] file_url_mounts``),
    ``size_bytes`` its size, which matched the image's. ``readinto`` reads it
    in order, as a download would be read; an uploader that knows files
    (``agent.upload.upload_file``) sends :attr:`file` itself and skips its holes.
    """

    def __init__(self, image_id, path, size_bytes):
        self.image_id = image_id
        self.path = path
        self.size_bytes = size_bytes
        self.server = "file://" + path
        self.bytes_read = 0
        self._file = None

    @classmethod
    def open(cls, image_id, path, size_bytes):
        """Open ``path`` if it is a regular file of ``size_bytes``; else
        raise ValueError saying why not."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise ValueError("%s: %s" % (path, e.strerror)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("%s is not a regular file" % path)
            if info.st_size != size_bytes:
                raise ValueError("%s holds %d bytes, the image has %d"
                                 % (path, info.st_size, size_bytes))
        except BaseException:
            os.close(fd)
            raise
        reader = cls(image_id, path, size_bytes)
        reader._file = os.fdopen(fd, "rb", buffering=0)
        return reader

    @property
    def file(self):
        """The file, as opened and checked by :meth:`open` (binary, unbuffered)."""
        return self._file

    def readinto(self, buffer):
        """Fill ``buffer`` from the file; returns the byte count, 0 at the end."""
        view = memoryview(buffer).cast("B")
        remaining = self.size_bytes - self.bytes_read
        if remaining <= 0 or not len(view):
            return 0
        try:
            got = os.preadv(self._file.fileno(), [view[:remaining]], self.bytes_read)
        except OSError as e:
            raise self._broken(e.strerror) from None
        if not got:
            raise self._broken("the file ended early")
        self.bytes_read += got
        return got

    def skip_hole(self):
        """Move past a hole at the reading position, to the next 64 KiB
        block that may hold data (or the end); returns the new position."""
        position = self.bytes_read
        try:
            data = os.lseek(self._file.fileno(), position, os.SEEK_DATA)
        except OSError as e:
            # ENXIO: only a hole is left; anything else: read on.
            data = self.size_bytes if e.errno == errno.ENXIO else position
        # Whole blocks, as zero blocks are skipped.
        data = min(data - data % readahead.BLOCK_BYTES, self.size_bytes)
        self.bytes_read = max(position, data)
        return self.bytes_read

    def _broken(self, why):
        return exceptions.ImageFetchFailed(
            image_id=self.image_id,
            reason="reading %s broke after %d of %d bytes (%s)"
            % (self.path, self.bytes_read, self.size_bytes, why))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def open_image(conf, image_id, auth_token, timeout=DEFAULT_TIMEOUT):
    """Start reading image ``image_id``: a :class:`LocalImageFile` where a
    usable file location exists (see the module's doc), else an
    :class:`ImageReader` over its download.

    Raises ImageFetchFailed naming the image and the reason (not found, not
    authorised, no size given, every endpoint failed) without the token.
    """
    servers = _servers(conf, image_id)
    mounts = conf.glance.file_url_mounts
    if mounts:
        local = _open_local(conf, servers, mounts, image_id, auth_token, timeout)
        if local is not None:
            return local

    def download(server):
        return _open_from(server, image_id, auth_token, timeout,
                          conf.glance.verify_checksum)

    return _first_server(conf, servers, image_id, auth_token, download)


def _servers(conf, image_id):
    servers = [s.strip() for s in conf.glance.api_servers if s.strip()]
    if not servers:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="[glance] api_servers is empty")
    return servers


def _first_server(conf, servers, image_id, auth_token, attempt_on):
    """``attempt_on(server)`` on the servers in turn, until one answers."""
    attempts = conf.glance.num_retries + 1
    failures = []
    for attempt in range(attempts):
        server = servers[attempt % len(servers)]
        try:
            return attempt_on(server)
        except _TryNextServer as e:
            reason = _scrub(str(e), auth_token)
            failures.append(reason)
            LOG.warning("Image %s: attempt %d of %d failed: %s",
                        image_id, attempt + 1, attempts, reason)
    raise exceptions.ImageFetchFailed(
        image_id=image_id,
        reason="%d attempt(s) failed; last: %s" % (attempts, failures[-1]))


# -- file locations -----------------------------------------------------------

# An image record is a small JSON document; anything larger is not one.
_MAX_RECORD_BYTES = 1 << 20


def _open_local(conf, servers, mounts, image_id, auth_token, timeout):
    """The image's file, if Glance names one this host may read; else None."""
    def get_record(server):
        return _image_record(server, image_id, auth_token, timeout)

    try:
        record = _first_server(conf, servers, image_id, auth_token, get_record)
    except exceptions.ImageFetchFailed as e:
        LOG.warning("Image %s: no record to find a file location in (%s); "
                    "downloading it", image_id, e)
        return None
    size = record.get("size")
    urls = [location.get("url") for location in record.get("locations") or []
            if isinstance(location, dict)]
    urls.append(record.get("direct_url"))
    urls = [u for u in urls if isinstance(u, str) and u.startswith("file://")]
    if not urls:
        LOG.info("Image %s: no file location shown (Glance's show_multiple_locations "
                 "or show_image_direct_url); downloading it", image_id)
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        LOG.warning("Image %s: its record gives no size (%r); downloading it",
                    image_id, size)
        return None
    reasons = []
    for url in dict.fromkeys(urls):
        try:
            reader = LocalImageFile.open(image_id, local_path(url, mounts), size)
        except ValueError as e:
            reasons.append(str(e))
            continue
        LOG.info("Image %s: reading %d bytes from %s", image_id, size, reader.path)
        return reader
    LOG.warning("Image %s: its file location cannot be used here (%s); downloading it",
                image_id, "; ".join(reasons))
    return None


def local_path(url, mounts):
    """Where the file of a ``file://`` location lies on this host.

    ``mounts`` maps directories as the image service sees them to where they
    are mounted here. The result is resolved (symbolic links followed) and
    must stay inside the local directory; raises ValueError otherwise.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError("%s is not a file URL of the image service's host" % url)
    remote = urllib.parse.unquote(parsed.path)
    if not os.path.isabs(remote) or "\0" in remote:
        raise ValueError("%s does not name an absolute path" % url)
    remote = os.path.normpath(remote)
    for remote_dir, local_dir in sorted(mounts.items(), key=lambda m: -len(m[0])):
        remote_dir = os.path.normpath(remote_dir)
        if os.path.commonpath([remote, remote_dir]) != remote_dir or remote == remote_dir:
            continue
        root = os.path.realpath(local_dir)
        path = os.path.realpath(os.path.join(root, os.path.relpath(remote, remote_dir)))
        if os.path.commonpath([path, root]) != root:
            raise ValueError("%s leads out of %s" % (url, local_dir))
        return path
    raise ValueError("%s lies in none of [glance] file_url_mounts (%s)"
                     % (url, ", ".join(sorted(mounts))))


def _image_record(server, image_id, auth_token, timeout):
    """``GET /v2/images/<id>``, as a dict."""
    connection, response = _get(server, "/v2/images/%s" % urllib.parse.quote(
        image_id, safe=""), image_id, auth_token, timeout, "application/json")
    try:
        if response.status != 200:
            _check_response(server, image_id, response)
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() \
                and int(length) > _MAX_RECORD_BYTES:
            raise exceptions.ImageFetchFailed(
                image_id=image_id, reason="%s sent a %s-byte image record"
                % (server, length))
        try:
            body = response.read(_MAX_RECORD_BYTES + 1)
        except (OSError, http.client.HTTPException) as e:
            raise _TryNextServer("%s: %s: %s" % (server, type(e).__name__, e)) from None
    finally:
        connection.close()
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    if not isinstance(record, dict) or len(body) > _MAX_RECORD_BYTES:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="%s sent an image record that is not a JSON "
            "object" % server)
    return record


# -- downloads ----------------------------------------------------------------

def _get(server, path, image_id, auth_token, timeout, accept):
    """Send ``GET path`` to ``server``; returns (connection, response)."""
    if "://" not in server:
        server = "http://" + server
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="image service endpoint %r is not an http(s) URL"
            % server)
    path = url.path.rstrip("/") + path
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(
            url.hostname, url.port, timeout=timeout, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    headers = {"Accept": accept, "User-Agent": USER_AGENT}
    if auth_token:
        headers["X-Auth-Token"] = auth_token
    try:
        connection.request("GET", path, headers=headers)
        return connection, connection.getresponse()
    except ValueError:  # http.client refusing a header value; its message quotes it
        connection.close()
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="a request header (the auth token?) is not a "
            "valid HTTP header value") from None
    except (OSError, http.client.HTTPException) as e:
        connection.close()
        raise _TryNextServer("%s: %s: %s" % (server, type(e).__name__, e)) from None


def _open_from(server, image_id, auth_token, timeout, verify):
    connection, response = _get(
        server, "/v2/images/%s/file" % urllib.parse.quote(image_id, safe=""),
        image_id, auth_token, timeout, "application/octet-stream")
    try:
        size_bytes = _check_response(server, image_id, response)
        md5 = _content_md5(server, image_id, response) if verify else None
    except BaseException:
        connection.close()
        raise
    if verify and md5 is None:
        LOG.warning("Image %s: %s sent no checksum (Content-MD5); downloading it "
                    "unchecked", image_id, server)
    LOG.info("Image %s: downloading %d bytes from %s%s", image_id, size_bytes, server,
             ", MD5 %s to check" % md5 if md5 else "")
    return ImageReader(image_id, connection, response, size_bytes, server, md5)


_HEX_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def _content_md5(server, image_id, response):
    """The ``Content-MD5`` of a download as hex digits, or None if absent.

    Glance sends the image's checksum there as hex digits; RFC 1864's
    base64 form is read too. Anything else raises.
    """
    value = response.getheader("Content-MD5")
    if value is None:
        return None
    value = value.strip()
    if _HEX_MD5.fullmatch(value):
        return value.lower()
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="%s sent a Content-MD5 that is not an MD5 "
            "checksum (%r)" % (server, value[:80]))
    return digest.hex()


def _check_response(server, image_id, response):
    """The size of a 200's body; any other answer raises."""
    status = response.status
    if status == 200:
        length = response.getheader("Content-Length")
        if length is None or not length.strip().isdigit():
            raise exceptions.ImageFetchFailed(
                image_id=image_id,
                reason="%s sent no valid Content-Length (got %r); the size must be "
                "known before the upload starts" % (server, length))
        return int(length)

    def refuse(why):
        return exceptions.ImageFetchFailed(
            image_id=image_id, reason="%s: HTTP %d %s: %s"
            % (server, status, response.reason, why))

    if status == 404:
        raise refuse("image not found")
    if status in (401, 403):
        raise refuse("not authorised to read the image (token expired or wrong project?)")
    if status == 204:
        raise refuse("the image has no data (not uploaded yet?)")
    if status >= 500:
        raise _TryNextServer("%s: HTTP %d %s" % (server, status, response.reason))
    raise refuse("unexpected answer")


def _scrub(text, secret):
    return text.replace(secret, "***") if secret else text
