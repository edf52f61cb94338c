"""A loopback stand-in for Glance v2's image API, for the demo, the tests and
the benchmarks.

:class:`ImageService` answers, on 127.0.0.1, the two requests the agent and
the dom0 image plugin make:

* ``GET /v2/images/<id>``: the image's record as JSON: ``id``, ``status``
  (active), ``size``, ``disk_format``, ``container_format``; ``checksum``
  (MD5) when the image has one; ``os_hash_algo``/``os_hash_value`` (the
  multihash Glance computes since Rocky) when asked; and the image's file as a
  ``file://`` location (``locations``, and ``direct_url`` with
  ``show_direct_url``) when asked, as Glance's filesystem store shows it;
* ``GET /v2/images/<id>/file``: the image's bytes with ``Content-Length`` and,
  when the image has one, its MD5 as ``Content-MD5``. A file's holes go out
  from a buffer of zeros and its data with ``sendfile``: a sparse image's
  holes are never read and its data never passes through Python.

It also takes images in, as Glance v2 does for a snapshot:

* ``POST /v2/images``: a new ``queued`` image from a JSON record (``id``,
  ``name``, ``disk_format``, ``container_format``; a new uuid if no id);
* ``PATCH /v2/images/<id>``: a JSON patch (``replace``/``add`` of ``name``,
  ``disk_format``, ``container_format``) of a queued image;
* ``PUT /v2/images/<id>/file``: the image's data (Content-Length), kept in
  ``upload_dir`` (or in memory) with its MD5 and SHA-512 (none with
  ``hash_uploads=False``: an image service that keeps bytes and nothing
  else, for measuring what sends them; with ``keep_uploads=False`` too, the
  bytes are received and dropped, the image's data a hole of their length
  in ``upload_dir``); ``active`` after;
* ``DELETE /v2/images/<id>``.

Ids that were not added are answered 404, as is anything but the paths
above (an id is letters, digits, ``.``, ``_`` and ``-``).

An image is a file (its path) or bytes held in memory. Its behaviour is in
dicts keyed by image id, read at each request, so a test may change them at
any time; the same settings can be given to :meth:`ImageService.add`:

``content_md5``
    the ``Content-MD5`` to send (and the record's ``checksum``): True for the
    data's true MD5, a string sent as it is (a corrupt checksum), None for
    none. Images not in it: the true MD5 if the service's ``send_md5``.
``multihash``
    the record's multihash: an algorithm (``"sha512"``) for the data's true
    digest, an (``os_hash_algo``, ``os_hash_value``) pair sent as it is, or
    None for none. Images not in it: the service's ``hash_algo``.
``located``
    ids whose record shows the file as its location (all with
    ``show_locations``).
``records``
    a record to answer instead of the made one: a dict (sent as JSON, read at
    each request) or bytes (sent as they are); None answers 404.
``cut_after``
    a number of bytes after which the download stops and the connection
    closes, short of its Content-Length.
``unsized``
    ids whose download is answered as HTTP/1.0 with no Content-Length.
``errors``
    an (HTTP status, reason) answered instead of the image.
``formats``
    the record's (``disk_format``, ``container_format``); raw and bare if
    not given.
``properties``
    custom properties shown in the record, as Glance v2 shows them (top-level
    fields, string values), e.g. ``{"cache_in_nova": "true"}``.
``upload_errors``
    an (HTTP status, reason) answered to an upload of that id once its body
    is read; the image stays ``queued`` (a refused upload).
``upload_cut_after``
    a number of bytes after which an upload of that id is dropped: the
    connection closes with no answer (a service that fails mid-upload).
``delete_errors``
    a list of (HTTP status, reason) answered, one each, to the next DELETEs
    of that id, which change nothing (Glance's "database is locked" while
    its worker still winds up a cut upload).

For the whole service: ``token`` (a download, or any request but for a
record, that does not carry it as ``X-Auth-Token`` is answered 401; records
are shown to anyone),
``fail_status`` (every request answered with that status: a failing
service) and ``delay`` (seconds slept per MiB sent: a slow service).

Every request is logged in ``requests`` as a :class:`Request` (its raw path
and headers); ``downloads`` and ``record_requests`` list those of known
images.

:meth:`ImageService.start` serves from a thread of this process (the demo,
the tests); :meth:`ImageService.start_process` from a forked child, so that
its sends do not take turns for this process's interpreter lock with what a
benchmark measures (the child's ``requests`` are not seen here).
"""

import hashlib
import http.server
import json
import os
import signal
import sys
import threading
import time
import uuid

from nova_xen_split.cmd import image_intake
from nova_xen_split.cmd.image_intake import _PATH_RE, MiB, Request

_ZEROS = memoryview(bytes(4 * MiB))
_UNSET = object()  # a setting not given: the service's default


def file_digest(path, algorithm):
    """The hex digest of a file's bytes with hashlib's ``algorithm``."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(MiB), b""):
            digest.update(piece)
    return digest.hexdigest()


def file_md5(path):
    """The MD5 of a file as hex digits: the checksum Glance keeps for an
    image and sends with its download as ``Content-MD5``."""
    return file_digest(path, "md5")


class ImageService(image_intake.ServiceIntake):
    """Glance v2's image record and image data for the images added; see the
    module's doc for the settings."""

    def __init__(self, token=None, send_md5=True, hash_algo=None, show_locations=False,
                 show_direct_url=False, delay=0.0, fail_status=None, upload_dir=None,
                 hash_uploads=True, keep_uploads=True):
        self.token = token
        self.send_md5 = send_md5
        self.hash_algo = hash_algo
        self.show_locations = show_locations
        self.show_direct_url = show_direct_url
        self.delay = delay
        self.fail_status = fail_status
        self.images = {}        # image id → path or bytes
        self.formats = {}       # image id → (disk_format, container_format)
        self.properties = {}    # image id → {name: value}
        self.content_md5 = {}
        self.multihash = {}
        self.located = set()
        self.records = {}
        self.cut_after = {}
        self.unsized = set()
        self.errors = {}
        self.queued = {}        # image id → name of an image created, no data yet
        self.names = {}
        self.upload_errors = {}
        self.upload_cut_after = {}
        self.delete_errors = {}
        self.upload_dir = upload_dir
        self.hash_uploads = hash_uploads
        if not keep_uploads and not upload_dir:
            raise ValueError("keep_uploads=False needs an upload_dir for the holes")
        self.keep_uploads = keep_uploads
        self.requests = []
        self._digests = {}      # (path, algorithm) → ((size, mtime), hex digest)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.service = self
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self._thread = None
        self._pid = None

    # -- images -----------------------------------------------------------------

    def add(self, source, image_id=None, *, content_md5=_UNSET, multihash=_UNSET,
            location=False, record=_UNSET, cut_after=None, unsized=False, error=None,
            disk_format="raw", container_format="bare", properties=None):
        """Serve ``source`` (a path or bytes) as ``image_id`` (a new uuid if
        None); returns the id. The keywords given set the image's entry in the
        dict of the same name (``location``: ``located``). The checksums the
        image needs are computed here, not in its first download."""
        image_id = image_id or str(uuid.uuid4())
        if not _PATH_RE.fullmatch("/v2/images/%s" % image_id):
            raise ValueError("image id %r: letters, digits, '.', '_' and '-' only"
                             % image_id)
        self.images[image_id] = source if isinstance(source, bytes) else os.fspath(source)
        self.formats[image_id] = (disk_format, container_format)
        settings = ((self.content_md5, content_md5), (self.multihash, multihash),
                    (self.records, record))
        for table, value in settings:
            if value is not _UNSET:
                table[image_id] = value
        if cut_after is not None:
            self.cut_after[image_id] = cut_after
        if error is not None:
            self.errors[image_id] = error
        if properties:
            self.properties[image_id] = dict(properties)
        if location:
            self.located.add(image_id)
        if unsized:
            self.unsized.add(image_id)
        self._checksums(image_id)
        return image_id

    @property
    def downloads(self):
        """(image id, X-Auth-Token) of each download asked for a known image."""
        return self._asked(download=True)

    @property
    def record_requests(self):
        """The image id of each record asked for a known image."""
        return [image_id for image_id, _token in self._asked(download=False)]

    def _asked(self, download):
        asked = []
        for request in list(self.requests):
            found = request.image()
            if found and found[1] == download and found[0] in self.images:
                asked.append((found[0], request.token))
        return asked

    def digest(self, image_id, algorithm):
        """The hex digest of the image's bytes, kept while a file is unchanged."""
        source = self.images[image_id]
        if isinstance(source, bytes):
            return hashlib.new(algorithm, source, usedforsecurity=algorithm != "md5") \
                .hexdigest()
        st = os.stat(source)
        stamp = (st.st_size, st.st_mtime_ns)
        kept = self._digests.get((source, algorithm))
        if kept is None or kept[0] != stamp:
            kept = (stamp, file_digest(source, algorithm))
            self._digests[(source, algorithm)] = kept
        return kept[1]

    def md5_of(self, image_id):
        """The Content-MD5 the image's download carries (None: none)."""
        value = self.content_md5.get(image_id, True if self.send_md5 else None)
        return self.digest(image_id, "md5") if value is True else value

    def multihash_of(self, image_id):
        """The (os_hash_algo, os_hash_value) of the image's record, or None."""
        value = self.multihash.get(image_id, self.hash_algo)
        if isinstance(value, str):
            return (value, self.digest(image_id, value))
        return value

    def record(self, image_id):
        """The image's record as this service makes it."""
        source = self.images[image_id]
        disk_format, container_format = self.formats.get(image_id, ("raw", "bare"))
        record = dict(self.properties.get(image_id, {}))
        record.update({"id": image_id, "status": "active", "size": _size(source),
                       "disk_format": disk_format, "container_format": container_format})
        if image_id in self.names:
            record["name"] = self.names[image_id]
        md5 = self.md5_of(image_id)
        if md5 is not None:
            record["checksum"] = md5
        multihash = self.multihash_of(image_id)
        if multihash is not None:
            record["os_hash_algo"], record["os_hash_value"] = multihash
        if not isinstance(source, bytes) and (self.show_locations
                                              or image_id in self.located):
            url = "file://" + os.path.abspath(source)
            record["locations"] = [{"url": url, "metadata": {}}]
            if self.show_direct_url:
                record["direct_url"] = url
        return record

    def _checksums(self, image_id=None):
        for one in [image_id] if image_id is not None else list(self.images):
            self.md5_of(one)
            self.multihash_of(one)

    # -- running ----------------------------------------------------------------

    def start(self):
        """Serve from a thread of this process."""
        self._checksums()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="image-service", daemon=True)
        self._thread.start()
        return self

    def start_process(self):
        """Serve from a forked child process. Call it before this process
        starts any thread: it forks."""
        self._checksums()   # in the parent: the child's first download does not hash
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                self._server.serve_forever()
            finally:
                os._exit(0)
        self._pid = pid
        self._server.server_close()  # the child has its own copy of the socket
        return self

    def stop(self):
        if self._pid is not None:
            os.kill(self._pid, signal.SIGTERM)
            os.waitpid(self._pid, 0)
            self._pid = None
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up early (a refused answer, a closed reader)
        # is part of the tests; anything else is reported as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(image_intake.HandlerIntake, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 -- BaseHTTPRequestHandler's naming
        service = self.server.service
        service.requests.append(Request(self.path, dict(self.headers)))
        if service.fail_status is not None:
            self.send_error(service.fail_status)
            return
        m = _PATH_RE.fullmatch(self.path)
        is_record = m is not None and not m.group(2)
        if (service.token is not None and not is_record
                and self.headers.get("X-Auth-Token") != service.token):
            self.send_error(401)
            return
        image_id = m.group(1) if m else None
        if is_record and image_id in service.queued:
            self._send_json(200, service.queued_record(image_id))
            return
        if image_id not in service.images:
            self.send_error(404)
            return
        if image_id in service.errors:
            self.send_error(*service.errors[image_id])
            return
        if is_record:
            self._send_record(service, image_id)
        else:
            self._send_data(service, image_id)

    def _send_record(self, service, image_id):
        record = service.records.get(image_id, _UNSET)
        if record is None:
            self.send_error(404)
            return
        if record is _UNSET:
            record = service.record(image_id)
        body = record if isinstance(record, bytes) else json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_data(self, service, image_id):
        source = service.images[image_id]
        size = _size(source)
        count = min(size, service.cut_after.get(image_id, size))
        unsized = image_id in service.unsized
        if unsized:
            self.protocol_version = "HTTP/1.0"  # the body ends where the connection does
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if not unsized:
            self.send_header("Content-Length", str(size))
        md5 = service.md5_of(image_id)
        if md5 is not None:
            self.send_header("Content-MD5", md5)   # the image's checksum, as Glance sends it
        self.end_headers()
        if unsized or count < size:
            self.close_connection = True  # a cut is a close, not a stall
        try:
            if not _send(self.connection, source, count, service.delay):
                self.close_connection = True      # the file shrank under us
        except ConnectionError:
            self.close_connection = True

    def log_message(self, *args):
        pass


def _size(source):
    return len(source) if isinstance(source, bytes) else os.path.getsize(source)


def _send(sock, source, count, delay):
    """Send the first ``count`` bytes of ``source``; with ``delay``, in pieces
    of 1 MiB, sleeping ``delay`` seconds per MiB. False if the file ran short."""
    piece = MiB if delay else None

    def pace(sent):
        if delay:
            time.sleep(delay * sent / MiB)

    if isinstance(source, bytes):
        data = memoryview(source)
        for offset in range(0, count, piece or 4 * MiB):
            end = min(count, offset + (piece or 4 * MiB))
            sock.sendall(data[offset:end])
            pace(end - offset)
        return True
    with open(source, "rb") as f:
        fd = f.fileno()
        offset = 0
        while offset < count:
            # Holes go out from a zero buffer, data with sendfile: the bytes
            # on the wire are the image's, without the kernel materialising
            # zero pages for every hole (an image service would not either).
            data = _next_data(fd, offset, count)
            while offset < data:
                n = min(len(_ZEROS), piece or len(_ZEROS), data - offset)
                sock.sendall(_ZEROS[:n])
                offset += n
                pace(n)
            if offset >= count:
                break
            hole = min(os.lseek(fd, offset, os.SEEK_HOLE), count)
            while offset < hole:
                sent = sock.sendfile(f, offset, min(hole - offset, piece or hole - offset))
                if not sent:
                    return False
                offset += sent
                pace(sent)
    return True


def _next_data(fd, offset, size):
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError:  # ENXIO: only a hole is left
        return size
