#!/usr/bin/env python3
"""XAPI plugin: bring a VHD image chain from the image service into a file SR.

``download_vhd`` streams the tarball that the image service serves for an
image (``GET <endpoint>/v2/images/<id>/file`` with ``X-Auth-Token``) into a
private staging directory inside the SR, gives every VHD a new uuid name,
re-links each child to its parent's new name, checks the chain, and moves
it into the SR, base first; the leaf takes the uuid ``leaf_uuid`` when it is
given. The caller then runs ``SR.scan``. Nothing is left
in the SR if any step fails, and the token never appears in an error. A
download killed outright (SIGKILL, dom0 crash) cannot clean up: the next
download into the SR removes staging directories in which nothing has
changed for ``STALE_STAGING_SECONDS``.

The body is checked before anything lands, unless ``verify_checksum`` is
``false``: against ``hash_algo``/``hash_value`` when given (the image
record's multihash, ``os_hash_algo``/``os_hash_value``, which the caller
reads from the image service), else against the MD5 checksum the image
service sends with it (Glance's ``Content-MD5``, hex digits or RFC 1864
base64). The answer's ``checksum`` names the algorithm checked ("" for none).

Python 3.6 compatible; standard library and XenAPIPlugin only.
"""

import base64
import binascii
import gzip
import hashlib
import http.client
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

import XenAPIPlugin

import nxs_vhd
from nxs_pluginlib import (
    InvalidArgument, arg, bool_arg, finally_on_sigterm, to_json, write_all)

HEX_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")
HASH_ALGO_RE = re.compile(r"^[a-z0-9_]{1,32}$")  # hashlib names: sha512, sha3_256, ...
IMAGE_ID_RE = re.compile(r"^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                         r"-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$")
TOKEN_RE = re.compile(r"^[\x21-\x7e]{0,8192}$")  # one header value: no spaces, no CR/LF
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NUMBERED_RE = re.compile(r"^(0|[1-9][0-9]?)\.vhd$")
OLD_STYLE = ("snap.vhd", "image.vhd")
MAX_CHAIN = 32
MAX_URL = 2048
HTTP_TIMEOUT = 60           # seconds without data before giving up
COPY_CHUNK = 1 << 20
MAX_MEMBER_BYTES = nxs_vhd.MAX_VIRTUAL_BYTES + (64 << 20)
STAGING_PREFIX = ".nxs-staging-"
# A live download writes into its staging directory at least every
# HTTP_TIMEOUT seconds (or fails), and checks and re-links in seconds.
STALE_STAGING_SECONDS = 3600


class ImageFetchFailed(Exception):
    """The image could not be fetched, unpacked or checked; nothing was kept."""


# -- arguments -------------------------------------------------------------

def _endpoint_arg(args):
    endpoint = arg(args, "endpoint").rstrip("/")
    if len(endpoint) > MAX_URL:
        raise InvalidArgument("endpoint is longer than %d characters" % MAX_URL)
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("endpoint must be an http:// or https:// URL, got %r"
                              % endpoint[:80])
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("endpoint must not carry credentials")
    if parts.query or parts.fragment or re.search(r"[\s\x00-\x1f\x7f]", endpoint):
        raise InvalidArgument("endpoint must be a plain base URL (no query, fragment "
                              "or control characters)")
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:  # not a number, or out of range
        port_ok = False
    if not port_ok:
        raise InvalidArgument("endpoint has an invalid port")
    return endpoint


def _sr_path_arg(args):
    """A file SR's mount: exactly ``<SR root>/<sr-uuid>``, an existing directory."""
    sr_path = arg(args, "sr_path")
    root = os.path.realpath(os.environ.get("NXS_DOM0_SR_ROOT") or "/var/run/sr-mount")
    if not os.path.isabs(sr_path) or "\x00" in sr_path:
        raise InvalidArgument("sr_path must be an absolute path")
    real = os.path.realpath(sr_path)
    if os.path.dirname(real) != root or not UUID_RE.fullmatch(os.path.basename(real)):
        raise InvalidArgument("sr_path %r is not an SR directory <%s>/<sr-uuid>"
                              % (sr_path[:200], root))
    if not os.path.isdir(real):
        raise InvalidArgument("sr_path %r does not exist" % sr_path[:200])
    return real


# -- fetching --------------------------------------------------------------

class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token to wherever it points: refuse it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ImageFetchFailed("the image service answered HTTP %d (a redirect); "
                               "redirects are not followed" % code)


def _open_image(endpoint, image_id, token):
    url = "%s/v2/images/%s/file" % (endpoint, urllib.parse.quote(image_id, safe=""))
    headers = {"Accept": "application/octet-stream", "User-Agent": "nxs-dom0-vhd"}
    if token:
        headers["X-Auth-Token"] = token
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _RefuseRedirect())
    try:
        return opener.open(urllib.request.Request(url, headers=headers),
                           timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        raise ImageFetchFailed("the image service answered HTTP %d %s for image %s"
                               % (e.code, e.reason, image_id)) from None
    except urllib.error.URLError as e:
        raise ImageFetchFailed("cannot reach the image service at %s: %s"
                               % (endpoint, e.reason)) from None
    except OSError as e:
        raise ImageFetchFailed("cannot reach the image service at %s: %s" % (endpoint, e)) from None


def _content_md5(response):
    """The body's MD5 as hex digits from ``Content-MD5``; None if absent."""
    value = response.getheader("Content-MD5")
    if value is None:
        return None
    value = value.strip()
    if HEX_MD5_RE.fullmatch(value):
        return value.lower()
    try:
        digest = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise ImageFetchFailed("the image service sent a Content-MD5 that is not an "
                               "MD5 checksum (%r)" % value[:80])
    return binascii.hexlify(digest).decode("ascii")


def _hash_args(args):
    """(algorithm, hex digest) from ``hash_algo`` and ``hash_value``, the
    image record's multihash, checked; (None, None) when both are absent."""
    algorithm = arg(args, "hash_algo", required=False, default="")
    value = arg(args, "hash_value", required=False, default="")
    if not algorithm and not value:
        return None, None
    if not HASH_ALGO_RE.fullmatch(algorithm):
        raise InvalidArgument("hash_algo must match %s, got %r"
                              % (HASH_ALGO_RE.pattern, algorithm[:40]))
    try:
        size = hashlib.new(algorithm).digest_size
    except ValueError:
        size = 0
    if not size:
        raise InvalidArgument("hash_algo %r is no hash with a fixed digest size that "
                              "this host can compute" % algorithm)
    if not re.match(r"\A[0-9a-f]{%d}\Z" % (2 * size), value):
        raise InvalidArgument("hash_value must be a %s digest as %d lower-case hex "
                              "digits, got %r" % (algorithm, 2 * size, value[:160]))
    return algorithm, value


class _Body(object):
    """The response body as a file: a body shorter than its Content-Length
    is an error (http.client reports it as a quiet end of data), and the
    first bytes can be looked at before the tar reader takes over. With
    ``algorithm`` and ``hexdigest``, every byte received is hashed and
    :meth:`finish` checks the sum."""

    def __init__(self, response, algorithm=None, hexdigest=None):
        self.response = response
        length = response.getheader("Content-Length")
        self.expected = int(length) if length and length.isdigit() else None
        self.received = 0
        self.pushed_back = b""
        self.algorithm = algorithm if hexdigest is not None else None
        self.expected_digest = hexdigest
        self.hasher = hashlib.new(algorithm) if self.algorithm else None

    def finish(self):
        """Read what the tar reader left (end-of-archive padding) and check
        the checksum of the whole body."""
        if self.hasher is None:
            return
        while self.read(COPY_CHUNK):
            pass
        read = self.hasher.hexdigest()
        if read != self.expected_digest:
            raise ImageFetchFailed("the %d bytes received do not match the image's "
                                   "checksum (%s %s expected, %s read)"
                                   % (self.received, self.algorithm.upper(),
                                      self.expected_digest, read))

    def peek(self, size):
        self.pushed_back += self.read(size)
        return self.pushed_back

    def read(self, size=-1):
        if self.pushed_back:
            data, self.pushed_back = self.pushed_back[:size], self.pushed_back[size:]
            return data
        data = self.response.read(size)
        self.received += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if not data and size != 0 and self.expected is not None and \
                self.received < self.expected:
            raise ImageFetchFailed("the image service sent %d of %d bytes"
                                   % (self.received, self.expected))
        return data


def _tar_source(body):
    """gzip is unwrapped here because tarfile's stream reader skips the
    gzip CRC, and a corrupt image must not land; bz2 and xz check their own."""
    if body.peek(2) == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=body, mode="rb")
    return body


def _member_name(member):
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def _copy_sparse(source, path, size):
    """Copy ``size`` bytes into a new file, leaving holes for zero chunks."""
    name = os.path.basename(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        zero = bytes(COPY_CHUNK)
        copied = 0
        while copied < size:
            chunk = source.read(min(COPY_CHUNK, size - copied))
            if not chunk:
                raise ImageFetchFailed("the tarball ends inside %s" % name)
            try:
                if chunk == zero[:len(chunk)]:
                    os.lseek(fd, len(chunk), os.SEEK_CUR)
                else:
                    write_all(fd, chunk)
            except OSError as e:
                raise ImageFetchFailed("cannot write %s into the SR: %s" % (name, e)) from None
            copied += len(chunk)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as e:
            raise ImageFetchFailed("cannot write %s into the SR: %s" % (name, e)) from None
    finally:
        os.close(fd)


def _unpack(body, staging):
    """Stream the tarball (a :class:`_Body`) into ``staging``; only plain,
    expected VHD members; then check the body's checksum."""
    names = []
    try:
        source = _tar_source(body)
        with tarfile.open(fileobj=source, mode="r|*",
                          bufsize=COPY_CHUNK) as tar:  # 10 KiB reads: 63 % vs 88 % of curl|tar
            for member in tar:
                name = _member_name(member)
                if member.isdir() and name in ("", "."):
                    continue
                if not (NUMBERED_RE.fullmatch(name) or name in OLD_STYLE):
                    raise ImageFetchFailed(
                        "unexpected tarball member %r: only 0.vhd, 1.vhd, ... or "
                        "image.vhd and snap.vhd are accepted" % member.name[:100])
                if not member.isfile():
                    raise ImageFetchFailed("tarball member %r is not a regular file"
                                           % member.name[:100])
                if name in names or len(names) >= MAX_CHAIN:
                    raise ImageFetchFailed("tarball member %r is repeated or the chain "
                                           "is longer than %d" % (name, MAX_CHAIN))
                if member.size > MAX_MEMBER_BYTES:
                    raise ImageFetchFailed("tarball member %r is %d bytes, larger than "
                                           "any VHD" % (name, member.size))
                _copy_sparse(tar.extractfile(member), os.path.join(staging, name),
                             member.size)
                names.append(name)
        if source is not body:
            # The gzip CRC is checked when its stream's end is read; the tar
            # reader stops at the archive's end, before any padding after it.
            while source.read(COPY_CHUNK):
                pass
        body.finish()
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ImageFetchFailed("the image is not a readable tarball: %s" % e) from None
    except (OSError, http.client.HTTPException) as e:  # reset, timed out, bad CRC
        raise ImageFetchFailed("reading the image failed: %s" % e) from None
    return names


def _chain_order(names):
    """Member names leaf first, from one of the accepted layouts."""
    if any(NUMBERED_RE.fullmatch(n) for n in names):
        numbers = sorted(int(n.split(".")[0])
                         for n in names if NUMBERED_RE.fullmatch(n))
        if len(numbers) == len(names) and numbers == list(range(len(names))):
            return ["%d.vhd" % n for n in numbers]
    elif set(names) in ({"image.vhd"}, {"image.vhd", "snap.vhd"}):
        return [n for n in OLD_STYLE if n in names]
    raise ImageFetchFailed("the tarball holds %s: expected 0.vhd, 1.vhd, ... (no gaps) "
                           "or image.vhd with an optional snap.vhd"
                           % (sorted(names) or "no VHD"))


def _check_chain(staging, order):
    infos = []
    for name in order:
        try:
            infos.append(nxs_vhd.inspect(os.path.join(staging, name)))
        except nxs_vhd.InvalidVhd as e:
            raise ImageFetchFailed("invalid VHD in the image: %s" % e) from None
    for child, parent, child_name, parent_name in zip(infos, infos[1:], order, order[1:]):
        if child["type"] != "differencing":
            raise ImageFetchFailed("%s is a %s VHD but %s follows it in the chain"
                                   % (child_name, child["type"], parent_name))
        if child["parent_uuid"] != parent["uuid"]:
            raise ImageFetchFailed("%s's parent is VHD %s, but %s is VHD %s" % (
                child_name, child["parent_uuid"], parent_name, parent["uuid"]))
    if infos[-1]["type"] == "differencing":
        raise ImageFetchFailed("%s is a differencing VHD without its parent in the "
                               "image" % order[-1])
    return infos


def _land_chain(order, staging, sr_path, leaf_uuid=None):
    """Rename, re-link, re-check and move the chain into the SR; leaf uuid
    first (``leaf_uuid`` when the caller chose it, so that it can find the
    leaf even if it never hears back from this call)."""
    uuids = [str(uuid.uuid4()) for _ in order]
    if leaf_uuid is not None:
        uuids[0] = leaf_uuid
    for name, vdi_uuid in zip(order, uuids):
        os.rename(os.path.join(staging, name), os.path.join(staging, vdi_uuid + ".vhd"))
    for child_uuid, parent_uuid in zip(uuids, uuids[1:]):
        parent_file = parent_uuid + ".vhd"
        try:
            nxs_vhd.relink(os.path.join(staging, child_uuid + ".vhd"), parent_file,
                           os.path.join(sr_path, parent_file))
        except nxs_vhd.InvalidVhd as e:
            raise ImageFetchFailed("cannot re-link the chain: %s" % e) from None
    _check_chain(staging, [u + ".vhd" for u in uuids])
    moved = []
    try:
        for vdi_uuid in reversed(uuids):  # base first: a scan never sees an orphan
            target = os.path.join(sr_path, vdi_uuid + ".vhd")
            if os.path.lexists(target):
                raise ImageFetchFailed("%s already exists in the SR" % target)
            os.rename(os.path.join(staging, vdi_uuid + ".vhd"), target)
            moved.append(target)
    except BaseException:
        for target in moved:
            os.unlink(target)
        raise
    return uuids


def _sweep_stale_staging(sr_path, now=None):
    """Remove the staging directories of downloads that died without
    cleaning up: nothing in them has changed for STALE_STAGING_SECONDS.
    Returns their names."""
    now = time.time() if now is None else now
    swept = []
    for name in sorted(os.listdir(sr_path)):
        if not name.startswith(STAGING_PREFIX):
            continue
        path = os.path.join(sr_path, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode):
                continue
            newest = info.st_mtime
            for entry in os.scandir(path):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            continue  # gone meanwhile, or not ours to judge
        if now - newest > STALE_STAGING_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            swept.append(name)
    return swept


# -- verbs -----------------------------------------------------------------

def download_vhd(session, args):
    """Fetch image ``image_id`` as a VHD chain into SR directory ``sr_path``."""
    image_id = arg(args, "image_id")
    if not IMAGE_ID_RE.fullmatch(image_id):
        raise InvalidArgument("image_id must match %s, got %r"
                              % (IMAGE_ID_RE.pattern, image_id[:80]))
    endpoint = _endpoint_arg(args)
    token = arg(args, "auth_token", required=False, default="")
    if not TOKEN_RE.fullmatch(token):
        raise InvalidArgument("auth_token must be printable ASCII without spaces, at "
                              "most 8192 characters")
    sr_path = _sr_path_arg(args)
    verify = bool_arg(args, "verify_checksum", True)
    hash_algo, hash_value = _hash_args(args)
    leaf_uuid = arg(args, "leaf_uuid", required=False, default="") or None
    if leaf_uuid is not None and not UUID_RE.fullmatch(leaf_uuid):
        raise InvalidArgument("leaf_uuid must be a lower-case uuid, got %r" % leaf_uuid[:80])

    swept = _sweep_stale_staging(sr_path)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=sr_path)
    try:
        response = _open_image(endpoint, image_id, token)
        try:
            if not verify:
                body = _Body(response)
            elif hash_value is not None:
                body = _Body(response, hash_algo, hash_value)
            else:
                body = _Body(response, "md5", _content_md5(response))
            order = _chain_order(_unpack(body, staging))
        finally:
            response.close()
        _check_chain(staging, order)
        uuids = _land_chain(order, staging, sr_path, leaf_uuid)
    except Exception as e:
        message = str(e)
        if token and token in message:
            raise ImageFetchFailed(message.replace(token, "<token>")) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return to_json({"root": uuids[0], "chain": uuids,
                    "checksum_verified": body.hasher is not None,
                    "checksum": body.algorithm or "",
                    "stale_staging_removed": swept})


if __name__ == "__main__":
    finally_on_sigterm()
    XenAPIPlugin.dispatch({
        "download_vhd": download_vhd,
    })
