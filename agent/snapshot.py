"""Snapshots into the image service: a VHD tarball streamed into Glance v2.

A snapshot goes up as Nova's XenAPI driver uploaded them, and as our VHD
fetch path boots them: a tar archive holding one member, ``0.vhd``, in an
image whose ``disk_format`` is ``vhd`` and ``container_format`` ``ovf``.
The VHD comes from a :class:`VhdSource`: XAPI's ``GET /export_raw_vdi?
format=vhd`` (:class:`VdiExport`, the independent backend) or the agent's
own encoder over a plugged device (the in_guest backend). Either way it is
streamed: the tar header (the VHD's length must be known first: XAPI sends
its export's Content-Length), the VHD's pieces as they come, the tar's end;
no local copy is made, and memory stays at a few buffers.

The image record must exist (Nova makes it before calling the driver) and
be ``queued``. Its formats are set before any data is sent; a failure after
that deletes the image (and waits until Glance says it is gone), so no
image is left ``saving``, ``queued`` without data or ``active`` with data
nobody vouches for, and raises ImageUploadFailed (a failure of XAPI's
export raises XapiFailure).

The auth token goes into one request header and nowhere else.
"""

import fcntl
import http.client
import json
import logging
import os
import queue
import select
import socket
import ssl
import tarfile
import threading
import time
import urllib.parse

from rpc import exceptions

LOG = logging.getLogger(__name__)

MEMBER = "0.vhd"
DISK_FORMAT = "vhd"
CONTAINER_FORMAT = "ovf"
TAR_BLOCK = 512
PIECE_BYTES = 4 * 1024 * 1024
TIMEOUT = 60.0
_MAX_RECORD_BYTES = 1 << 20
_PIPE_BYTES = 1 << 20   # what an unprivileged process may ask (pipe-max-size)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2) | \
    getattr(os, "SPLICE_F_MORE", 4)
DISCARD_SECONDS = 30.0


# -- the tar archive ----------------------------------------------------------

def tar_header(member_bytes, mtime=None):
    """The 512-byte header of ``0.vhd`` of ``member_bytes`` (GNU format, so a
    member past 8 GiB has a size field readers understand)."""
    info = tarfile.TarInfo(MEMBER)
    info.size = member_bytes
    info.mode = 0o644
    info.mtime = int(time.time() if mtime is None else mtime)
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.GNU_FORMAT)


def tar_tail(member_bytes):
    """Zeros padding the member to a whole block, then the two zero blocks
    that end an archive."""
    return bytes(-member_bytes % TAR_BLOCK + 2 * TAR_BLOCK)


def tar_length(member_bytes):
    return TAR_BLOCK + member_bytes + len(tar_tail(member_bytes))


# -- where the VHD comes from ---------------------------------------------------

class VhdSource:
    """A VHD being read: ``length`` (bytes, or None when not known in
    advance) and :meth:`pieces`; :meth:`finish` confirms the source ended
    well, :meth:`close` lets it go."""

    length = None

    def pieces(self):
        raise NotImplementedError

    def finish(self):
        pass

    def close(self):
        pass


class EncodedVhd(VhdSource):
    """The agent's own VHD encoding (:class:`agent.vhd.VhdStream`) of a device."""

    def __init__(self, stream):
        self.stream = stream
        self.length = stream.length

    def pieces(self):
        return iter(self.stream)


class VdiExport(VhdSource):
    """``GET /export_raw_vdi?format=vhd`` of one VDI, with a task of its own
    whose status :meth:`finish` checks."""

    def __init__(self, xapi_session, vdi_ref, timeout=TIMEOUT):
        self.session = xapi_session
        self.vdi_ref = vdi_ref
        self.timeout = timeout
        self._task_ref = None
        self._connection = None
        self._response = None
        self._where = None
        self._plain = False
        self._body = None

    def open(self):
        session = self.session
        self._task_ref = session.call("task.create", "nova-xen-split export",
                                      "VHD export of %s" % self.vdi_ref)
        url = urllib.parse.urlsplit(session.http_url(
            "/export_raw_vdi", vdi=self.vdi_ref, format="vhd", task_id=self._task_ref))
        self._where = "%s://%s%s" % (url.scheme, url.netloc, url.path)  # no session id
        self._plain = url.scheme == "http"
        self._connection = _connection(url, self.timeout)
        try:
            self._connection.request("GET", "%s?%s" % (url.path, url.query),
                                     headers={"Accept": "application/octet-stream"})
            self._response = self._connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise exceptions.XapiFailure(details=[
                "CONNECTION_FAILED", self._where, str(e) or type(e).__name__]) from None
        if self._response.status != 200:
            status, reason = self._response.status, self._response.reason
            self.close()
            raise exceptions.XapiFailure(details=[
                "EXPORT_REFUSED", self._where, "HTTP %d %s" % (status, reason)])
        length = self._response.getheader("Content-Length")
        self.length = int(length) if length and length.strip().isdigit() else None
        return self

    def pieces(self):
        """The body: one :class:`_SplicedBody` (moved socket to socket in the
        kernel by whoever sends it), or, where the connection is TLS or the
        platform has no ``splice``, pieces read on a thread of their own so
        that reading from XAPI and sending on overlap."""
        if self._plain and hasattr(os, "splice") and self.length is not None:
            self._body = _SplicedBody(self._response, self.length, self._broken,
                                      self.timeout)
            return iter([self._body])
        return _read_ahead(self._response, self.length, self._broken)

    def _broken(self, why):
        return exceptions.XapiFailure(details=["VDI_IO_ERROR", "export from %s broke: %s"
                                               % (self._where, why)])

    def finish(self):
        """Wait for the export's task; XapiFailure if it failed."""
        self._close_connection()
        task_ref, self._task_ref = self._task_ref, None
        self.session.wait_for_task(task_ref, timeout=600.0)

    def close(self):
        self._close_connection()
        if self._task_ref is not None:
            task_ref, self._task_ref = self._task_ref, None
            try:
                self.session.call("task.destroy", task_ref)
            except exceptions.XapiFailure:
                LOG.debug("could not destroy export task", exc_info=True)

    def _close_connection(self):
        # A spliced body leaves the response unread, holding the socket
        # (XAPI's Connection: close made http.client let go of it): close
        # it. A buffered body's reader thread closes its response itself
        # by reading it to the end, and may still be reading now.
        if self._body is not None and self._body.spliced and self._response is not None:
            self._response.close()
            self._response = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _read_ahead(response, length, broken, depth=3):
    """Pieces of ``response``'s body read by a thread while the consumer
    sends the previous ones. ``depth + 1`` buffers circulate: a piece's
    buffer is refilled only once the consumer has asked for the next
    piece, i.e. has sent it."""
    ready = queue.Queue()
    free = queue.Queue()
    for _ in range(depth + 1):
        free.put(memoryview(bytearray(PIECE_BYTES)))
    stop = threading.Event()

    def read():
        try:
            left = length
            while not stop.is_set():
                want = PIECE_BYTES if left is None else min(PIECE_BYTES, left)
                if want == 0:
                    break
                buffer = free.get()
                if buffer is None:
                    return
                got = _fill(response, buffer[:want])
                if got < want and left is not None:
                    raise broken("ended %d bytes short" % (left - got))
                if left is not None:
                    left -= got
                if got:
                    ready.put(buffer[:got])
                if got < want:
                    break
        except (OSError, http.client.HTTPException) as e:
            ready.put(broken("%s: %s" % (type(e).__name__, e)))
        except exceptions.NovaXenSplitError as e:
            ready.put(e)
        ready.put(None)

    reader = threading.Thread(target=read, name="vhd-export-reader", daemon=True)
    reader.start()
    sent = None
    try:
        while True:
            if sent is not None:
                free.put(memoryview(sent.obj))   # sent: its buffer may be refilled
            item = ready.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            sent = item
            yield item
    finally:
        stop.set()
        free.put(None)
        reader.join(30)


def _can_splice(sock):
    return hasattr(os, "splice") and sock is not None and \
        not isinstance(sock, ssl.SSLSocket)


class _SplicedBody:
    """``length`` bytes of an HTTP response's body, to be moved into another
    socket with ``splice(2)`` through a pipe: the data never enters this
    process (no copy into it, no buffer, no thread). What the response had already
    buffered with its headers goes first, as bytes. Into a socket that
    cannot take a splice (TLS), the body goes through buffers instead.

    An error of the source (short, reset, silent past ``timeout``) raises
    ``broken(why)``; an error of the destination raises OSError, as a
    ``sendall`` would. ``sent`` counts the bytes moved so far; ``spliced``
    says whether the response was read past http.client (it is then left
    unread, for its owner to close)."""

    def __init__(self, response, length, broken, timeout):
        self.response = response
        self.length = length
        self.broken = broken
        self.timeout = timeout
        self.sent = 0
        self.spliced = False

    def __len__(self):
        return self.length

    def send_to(self, sock):
        if not _can_splice(sock):
            for piece in _read_ahead(self.response, self.length, self.broken):
                sock.sendall(piece)
                self.sent += len(piece)
            return self.sent
        self.spliced = True
        held = self.response.fp.peek(1)[:self.length] if self.length else b""
        if held:
            held = self.response.fp.read(len(held))
            sock.sendall(held)
            self.sent += len(held)
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            try:
                fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:
                pass  # the default pipe (64 KiB) works, with more calls
            self._move(read_end, write_end, sock.fileno())
        finally:
            os.close(read_end)
            os.close(write_end)
        return self.sent

    def _move(self, read_end, write_end, target):
        # The response's socket: http.client may have let go of the
        # connection's reference to it (an answer with Connection: close),
        # the response's file keeps it open.
        source = self.response.fp.fileno()
        left = self.length - self.sent   # still to come from the source
        piped = 0                        # in the pipe, not yet sent
        timeout_ms = None if self.timeout is None else int(self.timeout * 1000)
        while left or piped:
            moved = False
            if left:
                try:
                    got = os.splice(source, write_end, min(left, _PIPE_BYTES),
                                    flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    got = None    # the source has nothing yet, or the pipe is full
                except OSError as e:
                    raise self.broken("%s: %s" % (type(e).__name__, e)) from None
                if got == 0:
                    raise self.broken("ended %d bytes short" % left)
                if got:
                    left -= got
                    piped += got
                    moved = True
            if piped:
                try:
                    out = os.splice(read_end, target, piped, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    out = 0
                piped -= out
                self.sent += out
                moved = moved or out > 0
            if moved:
                continue
            # Nothing moved: with data in the pipe, wait for the target to
            # take some (the pipe may be full); else for the source to send.
            poller = select.poll()
            poller.register(target if piped else source,
                            select.POLLOUT if piped else select.POLLIN)
            if not poller.poll(timeout_ms):
                if piped:
                    raise socket.timeout("the image service took nothing for %.0fs"
                                         % self.timeout)
                raise self.broken("nothing came for %.0fs" % self.timeout)


def _fill(response, view):
    """Read into ``view`` until it is full or the body ends; the byte count."""
    done = 0
    while done < len(view):
        got = response.readinto(view[done:])
        if not got:
            break
        done += got
    return done


# -- the image service ---------------------------------------------------------

class GlanceImage:
    """One image of Glance's v2 API, as a snapshot is uploaded into it.

    The first of ``[glance] api_servers`` that answers the image's record
    is used for the whole upload.
    """

    def __init__(self, conf, image_id, auth_token, timeout=TIMEOUT):
        self.image_id = image_id
        self.auth_token = auth_token
        self.timeout = timeout
        self.servers = [s.strip() for s in conf.glance.api_servers if s.strip()]
        self.server = None
        if not self.servers:
            raise self._failed("[glance] api_servers is empty")

    def _redacted(self, text):
        return text.replace(self.auth_token, "***") if self.auth_token else text

    def _failed(self, reason):
        return exceptions.ImageUploadFailed(image_id=self.image_id,
                                            reason=self._redacted(reason))

    def _url(self, server, suffix=""):
        if "://" not in server:
            server = "http://" + server
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise self._failed("image service endpoint %r is not an http(s) URL" % server)
        path = "%s/v2/images/%s%s" % (url.path.rstrip("/"),
                                      urllib.parse.quote(self.image_id, safe=""), suffix)
        return url, path

    def _headers(self, extra=None):
        headers = {"User-Agent": "nova-xen-split-agent"}
        if self.auth_token:
            headers["X-Auth-Token"] = self.auth_token
        headers.update(extra or {})
        return headers

    def _request(self, method, suffix="", body=None, headers=None, server=None):
        """(status, reason, body bytes) of one small request."""
        url, path = self._url(server or self.server, suffix)
        connection = _connection(url, self.timeout)
        try:
            connection.request(method, path, body=body, headers=self._headers(headers))
            response = connection.getresponse()
            data = response.read(_MAX_RECORD_BYTES)
            return response.status, response.reason, data
        finally:
            connection.close()

    def record(self):
        """The image's record; the first server that answers is kept."""
        failures = []
        for server in ([self.server] if self.server else self.servers):
            try:
                status, reason, data = self._request("GET", server=server,
                                                     headers={"Accept": "application/json"})
            except (OSError, http.client.HTTPException) as e:
                failures.append("%s: %s: %s" % (server, type(e).__name__, e))
                continue
            self.server = server
            if status == 404:
                raise self._failed("%s: the image does not exist" % server)
            if status != 200:
                raise self._failed("%s: HTTP %d %s reading the image" % (server, status,
                                                                          reason))
            try:
                record = json.loads(data)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise self._failed("%s sent an image record that is not a JSON object"
                                   % server)
            return record
        raise self._failed("no image service answered (%s)" % "; ".join(failures))

    def prepare(self):
        """Check the image is waiting for data and make it a VHD tarball
        image (``disk_format`` vhd, ``container_format`` ovf)."""
        record = self.record()
        if record.get("status") != "queued":
            raise self._failed("the image is %s, not queued: it has data or is being "
                               "given some" % record.get("status"))
        patch = [{"op": "replace", "path": "/%s" % field, "value": value}
                 for field, value in (("disk_format", DISK_FORMAT),
                                      ("container_format", CONTAINER_FORMAT))
                 if record.get(field) != value]
        if patch:
            status, reason, data = self._request(
                "PATCH", body=json.dumps(patch).encode(),
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
            if status != 200:
                raise self._failed("setting disk_format %s and container_format %s: "
                                   "HTTP %d %s: %s" % (DISK_FORMAT, CONTAINER_FORMAT,
                                                       status, reason, _text(data)))

    def put(self, pieces, length):
        """``PUT /v2/images/<id>/file`` of ``pieces`` (``length`` bytes in
        all, sent as Content-Length). Raises ImageUploadFailed unless Glance
        answers 204; an error of ``pieces`` passes through."""
        url, path = self._url(self.server, "/file")
        connection = _connection(url, self.timeout)
        sent = 0
        try:
            connection.putrequest("PUT", path, skip_accept_encoding=True)
            headers = self._headers({"Content-Type": "application/octet-stream",
                                     "Content-Length": str(length)})
            for key, value in headers.items():
                connection.putheader(key, value)
            connection.endheaders()
            sock = connection.sock
            piece = None
            try:
                for piece in pieces:
                    sent += send_piece(sock, piece)
                    piece = None
            except OSError as e:
                sent += getattr(piece, "sent", 0)
                # Glance may have answered and hung up early: its answer says why.
                raise self._failed("sending to %s broke after %d bytes (%s)%s" % (
                    self.server, sent, e, _early_answer(connection))) from None
            if sent != length:
                raise self._failed("the VHD gave %d bytes of the %d announced"
                                   % (sent, length))
            try:
                response = connection.getresponse()
                data = response.read(_MAX_RECORD_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise self._failed("%s did not answer the upload (%s: %s)"
                                   % (self.server, type(e).__name__, e)) from None
            if response.status != 204:
                raise self._failed("%s: HTTP %d %s: %s" % (
                    self.server, response.status, response.reason, _text(data)))
        finally:
            connection.close()
        return sent

    def discard(self, settle_seconds=DISCARD_SECONDS):
        """Delete the image after a failed upload and make sure it is gone.

        The image was queued when the upload began, so whatever it holds now
        is this upload's: it goes, even if Glance made it active (the source
        failed after sending, or the image has the wrong size). Glance may
        still be winding up the cut PUT when this starts: its worker notices
        the closed connection, then puts the image back to ``queued``. A
        DELETE racing that can fail (HTTP 500 "database is locked" on
        sqlite, 409 on a state change); so this waits while the image is
        ``saving`` (half of ``settle_seconds`` at most), DELETEs, and reads
        the record until Glance answers 404, deleting again, within
        ``settle_seconds``. Returns whether the image is gone; never raises
        (the upload's own error is what counts): logs what it could not do.
        """
        deadline = time.monotonic() + settle_seconds
        saving_until = time.monotonic() + settle_seconds / 2
        delay = 0.05
        why = "no attempt"
        while True:
            try:
                status, reason, data = self._request(
                    "GET", headers={"Accept": "application/json"})
                if status == 404:
                    return True
                state = _status_of(data) if status == 200 else None
                if state in ("deleted", "pending_delete"):
                    return True   # what a context that sees deleted images is shown
                if state == "saving" and time.monotonic() < saving_until:
                    why = "Glance is still saving it"
                else:
                    status, reason, data = self._request("DELETE")
                    why = "DELETE answered HTTP %d %s: %s" % (status, reason, _text(data))
                    if status in (204, 404):
                        why = "it is still there after a DELETE answered %d" % status
            except Exception as e:  # noqa: BLE001 -- retried, then logged below
                why = "%s: %s" % (type(e).__name__, e)
            if time.monotonic() + delay > deadline:
                LOG.warning("Image %s: could not delete it after the failed upload "
                            "within %.0fs: %s", self.image_id, settle_seconds,
                            self._redacted(why))
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _status_of(data):
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record.get("status") if isinstance(record, dict) else None


def send_piece(sock, piece):
    """Send one piece of a body: bytes, or a :class:`_SplicedBody` moved
    into ``sock`` itself; the byte count."""
    if hasattr(piece, "send_to"):
        return piece.send_to(sock)
    sock.sendall(piece)
    return len(piece)


def _connection(url, timeout):
    if url.scheme == "https":
        return http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout,
                                           context=ssl.create_default_context())
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def _early_answer(connection):
    try:
        response = http.client.HTTPResponse(connection.sock, method="PUT")
        response.begin()
        return ": HTTP %d %s: %s" % (response.status, response.reason,
                                     _text(response.read(4096)))
    except Exception:  # noqa: BLE001 -- nothing to read: no answer to add
        return ""


def _text(data):
    return data[:300].decode("utf-8", "replace").strip()


# -- the whole upload ------------------------------------------------------------

def upload(conf, image_id, auth_token, open_source):
    """Upload the VHD that ``open_source()`` opens (a :class:`VhdSource`)
    into image ``image_id`` as a tarball; returns ``{"image_id",
    "size_bytes"}`` (the tarball's bytes)."""
    image = GlanceImage(conf, image_id, auth_token)
    image.prepare()
    started = time.monotonic()
    source = None
    try:
        source = open_source()
        member_bytes = source.length
        if member_bytes is None:
            raise image._failed("the VHD's length is not known before it is read "
                                "(the export sent no Content-Length)")
        length = tar_length(member_bytes)

        def body():
            yield tar_header(member_bytes)
            yield from source.pieces()
            yield tar_tail(member_bytes)

        sent = image.put(body(), length)
        source.finish()
        record = image.record()
        if record.get("status") != "active" or record.get("size") != length:
            raise image._failed("after the upload the image is %s with %s bytes, "
                                "not active with %d" % (record.get("status"),
                                                        record.get("size"), length))
    except BaseException:
        if source is not None:
            source.close()
        image.discard()
        raise
    elapsed = time.monotonic() - started
    LOG.info("Image %s: uploaded %d bytes (VHD %d) to %s in %.1fs (%.0f MB/s)", image_id,
             sent, member_bytes, image.server, elapsed, sent / max(elapsed, 1e-6) / 1e6)
    return {"image_id": image_id, "size_bytes": sent}
