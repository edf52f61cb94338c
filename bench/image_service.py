"""The benchmarks' inputs: raw images on disk and a loopback image service.

``start_image_service`` serves files as Glance v2 serves image data
(``GET /v2/images/<id>/file``, with Content-Length, and Content-MD5 where
asked) and image records
(``GET /v2/images/<id>``, with the file as location and the multihash where
asked) from a child process;
``make_dense`` and ``make_sparse`` write the images; ``drop_page_cache_of``
makes the next read of a file come from the disk.
"""

import http.server
import os
import socketserver

from nova_xen_split.cmd.demo_env import file_digest, file_md5
from tests.imagerecord import send_image_record

MiB = 1 << 20


# -- the image service ----------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.split("/")
        path = self.server.images.get(parts[3])
        if len(parts) == 4:
            send_image_record(self, parts[3], path, parts[3] in self.server.located,
                              self.server.multihashes.get(parts[3]))
            return
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        if parts[3] in self.server.checksums:
            self.send_header("Content-MD5", self.server.checksums[parts[3]])
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            # Holes go out from a zero buffer, data with sendfile: the bytes
            # on the wire are the image's, without the kernel materialising
            # zero pages for every hole (an image service would not either).
            offset = 0
            while offset < size:
                data = _next_data(f.fileno(), offset, size)
                while offset < data:
                    count = min(len(_ZEROS), data - offset)
                    self.connection.sendall(_ZEROS[:count])
                    offset += count
                if offset >= size:
                    break
                hole = os.lseek(f.fileno(), offset, os.SEEK_HOLE)
                self.connection.sendfile(f, offset, hole - offset)
                offset = hole

    def log_message(self, *args):
        pass


_ZEROS = memoryview(bytes(4 * MiB))


def _next_data(fd, offset, size):
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError:  # ENXIO: only a hole is left
        return size


class ImageService(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, images, located=(), checksummed=(), multihash=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = images
        self.located = frozenset(located)
        self.checksums = {image_id: file_md5(images[image_id]) for image_id in checksummed}
        self.multihashes = {} if multihash is None else {
            image_id: (multihash, file_digest(images[image_id], multihash))
            for image_id in checksummed}


def start_image_service(images, located=(), checksummed=(), multihash=None):
    """Serve ``images`` ({id: path}) from a child process; returns (pid, base
    URL). The records of the ids in ``located`` show their file's location;
    the downloads of those in ``checksummed`` carry their MD5 (Content-MD5)
    and, with ``multihash`` (a hashlib name), their records that hash as
    ``os_hash_algo``/``os_hash_value``; the agent then checks the multihash,
    else the MD5 (others go unchecked).

    A process of its own, so that its sends do not take turns for this
    process's interpreter lock with the measurements (the floor's reads).
    Call before any thread is started: it forks.
    """
    service = ImageService(images, located, checksummed, multihash)
    pid = os.fork()
    if pid == 0:
        try:
            service.serve_forever()
        finally:
            os._exit(0)
    url = "http://127.0.0.1:%d" % service.server_address[1]
    service.server_close()  # the child has its own copy of the socket
    return pid, url


# -- inputs ------------------------------------------------------------------------

def make_dense(path, size_bytes):
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for _ in range(size_bytes // len(block)):
            f.write(block)


def make_sparse(path, size_bytes, data_fraction):
    """``data_fraction`` of the image in 1 MiB runs spread evenly."""
    runs = int(size_bytes * data_fraction) // MiB
    stride = size_bytes // runs
    with open(path, "wb") as f:
        f.truncate(size_bytes)
        for index in range(runs):
            f.seek(index * stride)
            f.write(os.urandom(MiB))
    return runs * MiB


def drop_page_cache_of(path):
    """Start the next measurement cold and without the previous one's dirty
    pages still being written back (which would be charged to it)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
