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

A download is checked as it is read, unless ``[glance] verify_checksum`` is
off, against the image's multihash where its record has one
(``os_hash_algo``/``os_hash_value``, which Glance computes since Rocky,
SHA-512 unless configured otherwise), as glanceclient checks it for Nova;
else against the MD5 checksum Glance sends with the download
(``Content-MD5``). A mismatch raises when the last byte is read, before the
fetch can succeed.

The auth token goes into one request header and nowhere else: not into
errors, not into logs.
"""

import base64
import binascii
import collections
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

    def verify(self):
        """Raise ImageFetchFailed unless the image's bytes matched its
        checksum; called once the data is written. A download checks itself
        as its last byte is read, so this is for readers that do not."""

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


class Checksum(collections.namedtuple("Checksum", "algorithm hexdigest source")):
    """What an image's bytes must hash to: ``algorithm`` (a hashlib name),
    ``hexdigest`` (lower-case hex digits) and ``source``, where it was
    found (``os_hash_value`` or ``Content-MD5``)."""

    def __str__(self):
        return "%s %s" % (self.algorithm.upper(), self.hexdigest)


class ImageReader(_Reader):
    """The body of one image download.

    ``size_bytes`` is the image's size; ``read``/``readinto`` raise
    ImageFetchFailed if the connection breaks or ends before that many bytes,
    or, with a ``checksum`` (:class:`Checksum`), if the bytes read do not
    hash to it (raised by the read that reads the last byte).
    """

    def __init__(self, image_id, connection, response, size_bytes, server, checksum=None):
        self.image_id = image_id
        self.size_bytes = size_bytes
        self.server = server
        self.bytes_read = 0
        self._connection = connection
        self._response = response
        self._expected = checksum
        self._hash = _HashThread(checksum.algorithm) if checksum is not None else None
        if self._hash is not None and size_bytes == 0:
            self._check_hash()      # no read will reach a last byte

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
        if self._hash is not None:
            self._hash.update(view[:got])
            if self.bytes_read == self.size_bytes:
                self._check_hash()
        return got

    def hash_elsewhere(self):
        """Hand the checksum to a caller that sums the bytes itself, from
        where it keeps them (:class:`agent.readahead.ReadAhead` hashes its
        windows without copying them). Call it before reading anything.
        Returns ``(hashlib object, verify)``, where ``verify(hexdigest)``
        raises ImageFetchFailed on a mismatch, or None when unchecked."""
        if self._hash is None or self.bytes_read:
            return None
        self._hash.close()
        self._hash = None
        return new_hash(self._expected.algorithm), self._verify

    def _check_hash(self):
        read = self._hash.hexdigest()
        self._hash = None
        self._verify(read)

    def _verify(self, read):
        expected = self._expected
        if read != expected.hexdigest:
            self.close()
            raise exceptions.ImageFetchFailed(
                image_id=self.image_id,
                reason="the %d bytes downloaded from %s do not match the image's "
                "checksum (%s expected, %s read; from %s)"
                % (self.bytes_read, self.server, expected, read, expected.source))
        LOG.debug("Image %s: %s checksum %s verified", self.image_id,
                  expected.algorithm.upper(), read)

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
        if self._hash is not None:
            self._hash.close()
            self._hash = None


def new_hash(algorithm):
    """A hashlib object of ``algorithm``; ValueError if this host has none,
    or if its digest has no fixed size (SHAKE), so it cannot be compared."""
    # MD5 is not a security measure here (collisions are cheap), which FIPS
    # builds want said; the multihash algorithms are.
    hasher = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    if not hasher.digest_size:
        raise ValueError("%s has no fixed digest size" % algorithm)
    return hasher


class _HashThread:
    """The hash of what :meth:`update` is given, summed on a thread of its own.

    MD5 and SHA-512 run at about 600 MB/s on one core, slower than a
    download arrives, so hashing must not take turns with the reading:
    ``update`` copies the bytes into one of two 1 MiB buffers, and a full
    buffer is summed by the thread (hashlib lets go of the interpreter lock
    while it sums) while the other one fills. Memory stays at the two buffers.
    """

    PIECE_BYTES = 1024 * 1024
    THREAD_NAME = "image-checksum"

    def __init__(self, algorithm):
        self._hasher = new_hash(algorithm)
        self._free = queue.Queue()
        self._full = queue.Queue()
        self._free.put(bytearray(self.PIECE_BYTES))
        self._buffer = bytearray(self.PIECE_BYTES)
        self._length = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME,
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._full.get()
            if item is None:
                return
            buffer, length = item
            self._hasher.update(memoryview(buffer)[:length])
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
        return self._hasher.hexdigest()

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
        self._check = None

    def check_against(self, checksum):
        """Start hashing the file against ``checksum`` (a :class:`Checksum`)
        on a thread of its own, beside whatever sends the file;
        :meth:`verify` waits for it."""
        self._check = _FileCheck(self, checksum)

    def verify(self):
        if self._check is not None:
            check, self._check = self._check, None
            check.result()

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
        if self._check is not None:
            self._check.stop()
            self._check = None
        if self._file is not None:
            self._file.close()
            self._file = None


class _FileCheck:
    """The hash of an image file, summed on a thread while the file is sent.

    The file's own descriptor is read with ``pread`` (the sender's position
    is not touched). Holes are hashed as zeros from a buffer, never read:
    a sparse image costs hashing time, not disk reads. hashlib lets go of
    the interpreter lock while it sums, so this runs beside the sender.
    """

    PIECE_BYTES = 4 * 1024 * 1024
    _ZEROS = memoryview(bytes(PIECE_BYTES))

    def __init__(self, image_file, checksum):
        self.image_id = image_file.image_id
        self.path = image_file.path
        self.size_bytes = image_file.size_bytes
        self.checksum = checksum
        self._fd = os.dup(image_file.file.fileno())
        self._stopped = False
        self._error = None
        self._digest = None
        self._thread = threading.Thread(target=self._run, name="image-file-checksum",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        try:
            hasher = new_hash(self.checksum.algorithm)
            buffer = memoryview(bytearray(self.PIECE_BYTES))
            position = 0
            for start, end in _extents(self._fd, self.size_bytes):
                while position < end and not self._stopped:
                    if position < start:   # a hole: zeros, unread
                        count = min(self.PIECE_BYTES, start - position)
                        hasher.update(self._ZEROS[:count])
                    else:
                        count = os.preadv(self._fd, [buffer[:min(self.PIECE_BYTES,
                                                                   end - position)]],
                                          position)
                        if not count:
                            raise OSError(errno.EIO, "the file ended at %d" % position)
                        hasher.update(buffer[:count])
                    position += count
            self._digest = hasher.hexdigest()
        except (OSError, ValueError) as e:
            self._error = e
        finally:
            os.close(self._fd)

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise exceptions.ImageFetchFailed(
                image_id=self.image_id, reason="hashing %s failed: %s" % (self.path,
                                                                         self._error))
        if self._digest != self.checksum.hexdigest:
            raise exceptions.ImageFetchFailed(
                image_id=self.image_id,
                reason="the %d bytes of %s do not match the image's checksum (%s "
                "expected, %s read; from %s)" % (self.size_bytes, self.path,
                                                  self.checksum, self._digest,
                                                  self.checksum.source))
        LOG.debug("Image %s: %s checksum %s of %s verified", self.image_id,
                  self.checksum.algorithm.upper(), self._digest, self.path)

    def stop(self):
        self._stopped = True


def _extents(fd, size_bytes):
    """(start, end) of the data of a file, ending with (size, size) so the
    last hole is reached; where SEEK_DATA is not known, all of it is data."""
    offset = 0
    while offset < size_bytes:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, size_bytes
                return
            raise
        if start >= size_bytes:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size_bytes)
        yield start, end
        offset = end
    yield size_bytes, size_bytes


def open_image(conf, image_id, auth_token, timeout=DEFAULT_TIMEOUT):
    """Start reading image ``image_id``: a :class:`LocalImageFile` where a
    usable file location exists (see the module's doc), else an
    :class:`ImageReader` over its download.

    Raises ImageFetchFailed naming the image and the reason (not found, not
    authorised, no size given, every endpoint failed) without the token.
    """
    servers = _servers(conf, image_id)
    mounts = conf.glance.file_url_mounts
    record = None
    if mounts:
        local, record = _open_local(conf, servers, mounts, image_id, auth_token, timeout)
        if local is not None:
            if conf.glance.verify_checksum:
                _check_local(local, record, image_id)
            return local

    def download(server):
        return _open_from(server, image_id, auth_token, timeout,
                          conf.glance.verify_checksum, record)

    return _first_server(conf, servers, image_id, auth_token, download)


def expected_checksum(conf, image_id, auth_token, timeout=DEFAULT_TIMEOUT):
    """The multihash that image ``image_id``'s bytes must hash to, from its
    record, for a download that another process makes (the dom0 image
    plugin); None when the record has none or cannot be read (logged: the
    download's own ``Content-MD5`` is checked then), or when ``[glance]
    verify_checksum`` is off. Raises ImageFetchFailed for a record whose
    multihash is malformed."""
    if not conf.glance.verify_checksum:
        return None
    try:
        record = _first_record(conf, _servers(conf, image_id), image_id, auth_token,
                               timeout)
    except exceptions.ImageFetchFailed as e:
        LOG.warning("Image %s: its record could not be read (%s); only the MD5 "
                    "checksum sent with the download can be checked", image_id, e)
        return None
    return _record_checksum(record, image_id)


def image_record(conf, image_id, auth_token, timeout=DEFAULT_TIMEOUT):
    """The image's record (a dict: its fields and custom properties, as
    Glance v2 shows them) from the first endpoint that answers. Asked with
    the caller's token, it also proves the caller may read the image.
    Raises ImageFetchFailed."""
    return _first_record(conf, _servers(conf, image_id), image_id, auth_token, timeout)


def record_checksum(record, image_id):
    """What an image record says its bytes hash to: its multihash, else its
    MD5 ``checksum``, as a :class:`Checksum`; None when it has neither.
    Raises ImageFetchFailed for a malformed multihash."""
    checksum = _record_checksum(record, image_id)
    md5 = record.get("checksum")
    if checksum is None and isinstance(md5, str) and _HEX_MD5.fullmatch(md5.strip()):
        checksum = Checksum("md5", md5.strip().lower(), "checksum")
    return checksum


# The hashlib names Glance's ``hashing_algorithm`` takes (sha512, sha3_256,
# blake2b, ...).
_ALGORITHM_NAME = re.compile(r"[a-z0-9_]{1,32}")


def _record_checksum(record, image_id):
    """The multihash of ``record`` (a :class:`_Record`) as a
    :class:`Checksum`, or None when it has none (images uploaded before
    Glance computed one) or names an algorithm this host cannot compute
    (logged: MD5 is checked instead). A multihash that is not a digest of
    its algorithm raises ImageFetchFailed: the record is broken, and so may
    be the image."""
    algorithm, value = record.get("os_hash_algo"), record.get("os_hash_value")
    if algorithm in (None, "") and value in (None, ""):
        return None

    def broken(why):
        return exceptions.ImageFetchFailed(
            image_id=image_id, reason="the image record from %s has %s"
            % (record.server, why))

    if not isinstance(algorithm, str) or not isinstance(value, str) \
            or not algorithm or not value:
        raise broken("os_hash_algo %r and os_hash_value %r: both must be text"
                     % (str(algorithm)[:40], str(value)[:40]))
    algorithm = algorithm.strip().lower()
    try:
        if not _ALGORITHM_NAME.fullmatch(algorithm):
            raise ValueError(algorithm)
        digest_size = new_hash(algorithm).digest_size
    except ValueError:
        LOG.warning("Image %s: its record's os_hash_algo %r is no hash this host can "
                    "compute; only its MD5 checksum can be checked", image_id,
                    algorithm[:40])
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{%d}" % (2 * digest_size), value):
        raise broken("an os_hash_value that is not a %s digest (%r)"
                     % (algorithm, value[:160]))
    return Checksum(algorithm, value, "os_hash_value")


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

def _check_local(local, record, image_id):
    """Have ``local`` hashed against the record's multihash, else against
    its MD5 ``checksum``; a record with neither leaves it unchecked (logged)."""
    try:
        checksum = _record_checksum(record, image_id)
        if checksum is None:
            md5 = record.get("checksum")
            if isinstance(md5, str) and _HEX_MD5.fullmatch(md5.strip()):
                checksum = Checksum("md5", md5.strip().lower(), "checksum")
    except BaseException:
        local.close()
        raise
    if checksum is None:
        LOG.warning("Image %s: its record has no checksum; reading %s unchecked",
                    image_id, local.path)
        return
    local.check_against(checksum)


# An image record is a small JSON document; anything larger is not one.
_MAX_RECORD_BYTES = 1 << 20


def _open_local(conf, servers, mounts, image_id, auth_token, timeout):
    """(the image's file if Glance names one this host may read, else None;
    the image's record, empty if it could not be read)."""
    try:
        record = _first_record(conf, servers, image_id, auth_token, timeout)
    except exceptions.ImageFetchFailed as e:
        LOG.warning("Image %s: no record to find a file location in (%s); "
                    "downloading it", image_id, e)
        return None, _Record("none")
    return _open_located(record, mounts, image_id), record


class _Record(dict):
    """An image record, and ``server``, the endpoint it came from."""

    def __init__(self, server, fields=()):
        super().__init__(fields)
        self.server = server


def _first_record(conf, servers, image_id, auth_token, timeout):
    """The image's record from the first server that answers (a :class:`_Record`)."""
    def get_record(server):
        return _image_record(server, image_id, auth_token, timeout)

    return _first_server(conf, servers, image_id, auth_token, get_record)


def _open_located(record, mounts, image_id):
    """A :class:`LocalImageFile` of the record's first usable file location,
    or None (logged)."""
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
    """``GET /v2/images/<id>``, as a :class:`_Record`."""
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
    return _Record(server, record)


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


def _open_from(server, image_id, auth_token, timeout, verify, record=None):
    """Start the download from ``server``; with ``verify``, what it must hash
    to comes from ``record`` (the image's record, asked for from ``server``
    once the download has answered when None), else from its Content-MD5."""
    connection, response = _get(
        server, "/v2/images/%s/file" % urllib.parse.quote(image_id, safe=""),
        image_id, auth_token, timeout, "application/octet-stream")
    try:
        size_bytes = _check_response(server, image_id, response)
        checksum = _download_checksum(server, image_id, auth_token, timeout, response,
                                      record) if verify else None
    except BaseException:
        connection.close()
        raise
    if verify and checksum is None:
        LOG.warning("Image %s: %s gave no checksum (no os_hash_value in its record, "
                    "no Content-MD5); downloading it unchecked", image_id, server)
    LOG.info("Image %s: downloading %d bytes from %s%s", image_id, size_bytes, server,
             ", %s to check" % (checksum,) if checksum else "")
    return ImageReader(image_id, connection, response, size_bytes, server, checksum)


def _download_checksum(server, image_id, auth_token, timeout, response, record):
    """The multihash of the image's record if it has one, else the
    download's Content-MD5, else None. Asked once the download has
    answered, as glanceclient does: an image that cannot be read costs no
    second request. A record that cannot be read is logged and leaves MD5."""
    if record is None:
        try:
            record = _image_record(server, image_id, auth_token, timeout)
        except (exceptions.ImageFetchFailed, _TryNextServer) as e:
            LOG.warning("Image %s: its record could not be read (%s); checking the "
                        "download's MD5 checksum only", image_id,
                        _scrub(str(e), auth_token))
            record = _Record(server)
    checksum = _record_checksum(record, image_id)
    if checksum is None:
        md5 = _content_md5(server, image_id, response)
        checksum = Checksum("md5", md5, "Content-MD5") if md5 else None
    return checksum


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
