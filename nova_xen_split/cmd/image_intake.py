"""Glance v2's image intake for the loopback stand-in (:mod:`image_service`).

What a snapshot needs from an image service: create a queued image
(``POST /v2/images``), change its name and formats (``PATCH``), upload its
data (``PUT .../file``) and delete it (``DELETE``), with the faults a test
asks for (``upload_errors``, ``upload_cut_after``, ``delete_errors``). Mixed into
:class:`image_service.ImageService` and its request handler.
"""

import collections
import json
import os
import re
import uuid

MiB = 1 << 20

_PATH_RE = re.compile(r"/v2/images/([A-Za-z0-9._-]+)(/file)?")
_UNSET = object()


class Request(collections.namedtuple("Request", "path headers")):
    """One request as received: its raw path and its headers (a dict)."""

    __slots__ = ()

    @property
    def token(self):
        return self.headers.get("X-Auth-Token")

    def image(self):
        """(image id, True for a download / False for a record), or None."""
        m = _PATH_RE.fullmatch(self.path)
        return (m.group(1), bool(m.group(2))) if m else None



class ServiceIntake:
    """The service's side: queued images, created and deleted."""

    def create(self, record):
        """A new queued image from a (checked) record; returns its id."""
        image_id = record.get("id") or str(uuid.uuid4())
        if not _PATH_RE.fullmatch("/v2/images/%s" % image_id):
            raise ValueError("bad image id")
        if image_id in self.images or image_id in self.queued:
            raise KeyError(image_id)
        self.queued[image_id] = record.get("name")
        self.formats[image_id] = (record.get("disk_format"), record.get("container_format"))
        return image_id

    def delete(self, image_id):
        """Forget an image (its uploaded file too); False if there was none."""
        found = self.queued.pop(image_id, _UNSET) is not _UNSET
        source = self.images.pop(image_id, None)
        if isinstance(source, str) and self.upload_dir and \
                os.path.dirname(source) == os.path.abspath(self.upload_dir):
            os.unlink(source)
        for table in (self.formats, self.content_md5, self.multihash, self.names):
            table.pop(image_id, None)
        return found or source is not None

    def status(self, image_id):
        """``active``, ``queued``, or None for an unknown id."""
        if image_id in self.images:
            return "active"
        return "queued" if image_id in self.queued else None

    def queued_record(self, image_id):
        disk_format, container_format = self.formats.get(image_id, (None, None))
        return {"id": image_id, "status": "queued", "size": None,
                "name": self.queued[image_id], "disk_format": disk_format,
                "container_format": container_format}



class HandlerIntake:
    """The request handler's side: POST, PATCH, PUT and DELETE."""

    # -- taking images in (Glance v2's create, update, upload, delete) ----------

    def _start(self):
        """Log the request and answer the service-wide refusals; returns the
        path's (image id, is the data path) or None when answered."""
        service = self.server.service
        service.requests.append(Request(self.path, dict(self.headers)))
        if service.fail_status is not None:
            self.send_error(service.fail_status)
            return None
        if service.token is not None and self.headers.get("X-Auth-Token") != service.token:
            self.send_error(401)
            return None
        if self.path == "/v2/images":
            return None, False
        m = _PATH_RE.fullmatch(self.path)
        if m is None:
            self.send_error(404)
            return None
        return m.group(1), bool(m.group(2))

    def _json_body(self, limit=1 << 20):
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > limit:
            return None
        try:
            return json.loads(self.rfile.read(int(length)))
        except ValueError:
            return None

    def _send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        found = self._start()
        if found is None:
            return
        if found[0] is not None:
            self.send_error(405)
            return
        service = self.server.service
        record = self._json_body()
        if not isinstance(record, dict) or not all(
                isinstance(record.get(k), (str, type(None)))
                for k in ("id", "name", "disk_format", "container_format")):
            self.send_error(400, "an image record is a JSON object of text fields")
            return
        try:
            image_id = service.create(record)
        except ValueError:
            self.send_error(400, "bad image id")
            return
        except KeyError:
            self.send_error(409, "image id in use")
            return
        self._send_json(201, service.queued_record(image_id))

    def do_PATCH(self):  # noqa: N802
        found = self._start()
        if found is None:
            return
        image_id, is_data = found
        service = self.server.service
        if image_id is None or is_data:
            self.send_error(405)
            return
        if image_id not in service.queued:
            self.send_error(404 if service.status(image_id) is None else 403)
            return
        patch = self._json_body()
        fields = ("/name", "/disk_format", "/container_format")
        if not isinstance(patch, list) or not all(
                isinstance(op, dict) and op.get("op") in ("replace", "add")
                and op.get("path") in fields and isinstance(op.get("value"), str)
                for op in patch):
            self.send_error(400, "only name, disk_format and container_format change")
            return
        disk_format, container_format = service.formats.get(image_id, (None, None))
        for op in patch:
            if op["path"] == "/name":
                service.queued[image_id] = op["value"]
            elif op["path"] == "/disk_format":
                disk_format = op["value"]
            else:
                container_format = op["value"]
        service.formats[image_id] = (disk_format, container_format)
        self._send_json(200, service.queued_record(image_id))

    def do_PUT(self):  # noqa: N802
        found = self._start()
        if found is None:
            return
        image_id, is_data = found
        service = self.server.service
        if image_id is None or not is_data:
            self.send_error(405)
            return
        if image_id not in service.queued:
            self.send_error(404 if service.status(image_id) is None else 409)
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.send_error(411)
            return
        received = self._receive(service, image_id, int(length))
        if received is None:
            return
        error = service.upload_errors.get(image_id)
        if error is not None:
            if isinstance(received, str):
                os.unlink(received)
            self.send_error(*error)
            return
        name = service.queued.pop(image_id)
        disk_format, container_format = service.formats[image_id]
        service.add(received, image_id, disk_format=disk_format or "raw",
                    container_format=container_format or "bare",
                    multihash="sha512" if service.hash_uploads else None,
                    content_md5=True if service.hash_uploads else None)
        service.names[image_id] = name
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _receive(self, service, image_id, length):
        """The body, into a file of ``upload_dir`` (its path) or memory (bytes);
        None when the upload was cut (the connection is closed)."""
        cut = service.upload_cut_after.get(image_id)
        target = None
        keep = service.keep_uploads
        if service.upload_dir:
            path = os.path.join(os.path.abspath(service.upload_dir), image_id)
            target = open(path, "wb", buffering=0)
        chunks = []
        buffer = memoryview(bytearray(MiB))

        def take(data):
            if target is None:
                chunks.append(bytes(data))
            elif keep:
                target.write(data)
            # else dropped: only their count is kept, as a hole

        left = length if cut is None else min(length, cut)
        # What the header parsing read ahead first, then the socket itself.
        held = self.rfile.peek(1)[:left] if left else b""
        try:
            if held:
                got = self.rfile.readinto(buffer[:len(held)])
                left -= got
                take(buffer[:got])
            while left > 0:
                got = self.connection.recv_into(buffer[:min(left, MiB)])
                if not got:
                    break
                left -= got
                take(buffer[:got])
            if target is not None and not keep:
                target.truncate(length - left)   # dropped: a hole of their length
        finally:
            if target is not None:
                target.close()
        if cut is not None or left:
            self.close_connection = True
            if target is not None:
                os.unlink(target.name)
            return None
        return target.name if target is not None else b"".join(chunks)

    def do_DELETE(self):  # noqa: N802
        found = self._start()
        if found is None:
            return
        image_id, is_data = found
        if image_id is None or is_data:
            self.send_error(405)
            return
        errors = self.server.service.delete_errors.get(image_id)
        if errors:
            self.send_error(*errors.pop(0))
            return
        if not self.server.service.delete(image_id):
            self.send_error(404)
            return
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

