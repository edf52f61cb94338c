"""Reading image data from the image service (Glance v2), as a stream.

``open_image`` returns a reader over ``GET /v2/images/<id>/file`` whose size
is known up front (``Content-Length``), so the uploader can plan its windows
and report progress. Endpoints from ``[glance] api_servers`` are tried in
turn, ``[glance] num_retries`` times after the first attempt; only failures
another endpoint could cure (no connection, a 5xx answer) move on.

The auth token goes into one request header and nowhere else: not into
errors, not into logs.
"""

import http.client
import logging
import ssl
import urllib.parse

from rpc import exceptions

LOG = logging.getLogger(__name__)

USER_AGENT = "nova-xen-split-agent"
# Seconds a connect or a single socket read may take before the endpoint
# counts as failed.
DEFAULT_TIMEOUT = 60.0


class _TryNextServer(Exception):
    """This endpoint failed in a way another endpoint might not."""


class ImageReader:
    """The body of one image download.

    ``size_bytes`` is the image's size; ``read``/``readinto`` raise
    ImageFetchFailed if the connection breaks or ends before that many bytes.
    """

    def __init__(self, image_id, connection, response, size_bytes, server):
        self.image_id = image_id
        self.size_bytes = size_bytes
        self.server = server
        self.bytes_read = 0
        self._connection = connection
        self._response = response

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
        return got

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_image(conf, image_id, auth_token, timeout=DEFAULT_TIMEOUT):
    """Start downloading image ``image_id``; returns an :class:`ImageReader`.

    Raises ImageFetchFailed naming the image and the reason (not found, not
    authorised, no size given, every endpoint failed) without the token.
    """
    servers = [s.strip() for s in conf.glance.api_servers if s.strip()]
    if not servers:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="[glance] api_servers is empty")
    attempts = conf.glance.num_retries + 1
    failures = []
    for attempt in range(attempts):
        server = servers[attempt % len(servers)]
        try:
            return _open_from(server, image_id, auth_token, timeout)
        except _TryNextServer as e:
            reason = _scrub(str(e), auth_token)
            failures.append(reason)
            LOG.warning("Image %s: attempt %d of %d failed: %s",
                        image_id, attempt + 1, attempts, reason)
    raise exceptions.ImageFetchFailed(
        image_id=image_id,
        reason="%d attempt(s) failed; last: %s" % (attempts, failures[-1]))


def _open_from(server, image_id, auth_token, timeout):
    if "://" not in server:
        server = "http://" + server
    url = urllib.parse.urlsplit(server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="image service endpoint %r is not an http(s) URL"
            % server)
    path = "%s/v2/images/%s/file" % (url.path.rstrip("/"),
                                     urllib.parse.quote(image_id, safe=""))
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(
            url.hostname, url.port, timeout=timeout, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    headers = {"Accept": "application/octet-stream", "User-Agent": USER_AGENT}
    if auth_token:
        headers["X-Auth-Token"] = auth_token
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as e:
        connection.close()
        raise _TryNextServer("%s: %s: %s" % (server, type(e).__name__, e)) from None
    try:
        size_bytes = _check_response(server, image_id, response)
    except BaseException:
        connection.close()
        raise
    LOG.info("Image %s: downloading %d bytes from %s", image_id, size_bytes, server)
    return ImageReader(image_id, connection, response, size_bytes, server)


def _check_response(server, image_id, response):
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
